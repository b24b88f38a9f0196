package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A valid pair: every rule of the k8s check is satisfied.
const goodDeployment = `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: example/web:1
          envFrom:
            - configMapRef: {name: web-config}
          env:
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            - name: ADVERTISE
              value: http://$(POD_IP):8080
          args: ["--mode=$(MODE)"]
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe: {httpGet: {path: /readyz, port: http}}
          livenessProbe: {grpc: {port: 8080}}
          resources:
            requests: {cpu: 10m, memory: 16Mi}
            limits: {memory: 32Mi}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`

const goodConfig = `
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {MODE: fast}
`

func problemsOf(t *testing.T, yaml string, complete bool) []string {
	t.Helper()
	docs, err := splitDocuments("test", strings.NewReader(yaml))
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	return check(docs, complete).problems
}

func TestValidManifestsPass(t *testing.T) {
	if p := problemsOf(t, goodDeployment+goodConfig, true); len(p) != 0 {
		t.Fatalf("expected no problems, got %q", p)
	}
	// Without -complete a reference outside the render is fine.
	if p := problemsOf(t, goodDeployment, false); len(p) != 0 {
		t.Fatalf("expected no problems, got %q", p)
	}
}

func TestEachRuleFails(t *testing.T) {
	cases := []struct {
		name, from, to, want string
	}{
		{"unknown field", "image: example/web:1", "image: example/web:1\n          imagePolicy: Always", `unknown field "spec.template.spec.containers[0].imagePolicy"`},
		{"duplicate field", "replicas: 2", "replicas: 2\n  replicas: 3", `key "replicas" already set`},
		{"wrong type", "replicas: 2", "replicas: two", "cannot unmarshal string"},
		{"unregistered kind", "kind: Deployment", "kind: Deploymnet", `no kind "Deploymnet" is registered`},
		{"selector", "matchLabels: {app: web}", "matchLabels: {app: webb}", "does not match the pod template labels"},
		{"service target port", "targetPort: http}", "targetPort: https}", "targetPort https is not a container port"},
		{"service selects nothing", "selector: {app: web}\n  ports", "selector: {app: api}\n  ports", "matches no pod template"},
		{"probe port", "port: http}}", "port: metrics}}", `port "metrics" is not a declared container port`},
		{"no readiness probe", "readinessProbe: {httpGet: {path: /readyz, port: http}}", "", "no readinessProbe"},
		{"no memory limit", "limits: {memory: 32Mi}", "limits: {}", "no memory limit"},
		{"env reference", "http://$(POD_IP):8080", "http://$(POD_ADDR):8080", "refers to $(POD_ADDR)"},
		{"args reference", "--mode=$(MODE)", "--mode=$(MOOD)", "refer to $(MOOD)"},
		{"env order", "- name: POD_IP\n              valueFrom: {fieldRef: {fieldPath: status.podIP}}\n            - name: ADVERTISE\n              value: http://$(POD_IP):8080",
			"- name: ADVERTISE\n              value: http://$(POD_IP):8080\n            - name: POD_IP\n              valueFrom: {fieldRef: {fieldPath: status.podIP}}", "refers to $(POD_IP)"},
		{"downward API field", "fieldPath: status.podIP", "fieldPath: status.podAddress", "not a downward API field"},
		{"missing config map", "name: web-config}\n          env", "name: web-cfg}\n          env", `ConfigMap "web-cfg" is not in the render`},
		{"label value", "name: web\n  labels: {app: web}", "name: web\n  labels: {app: web/x}", `label "app" value "web/x"`},
		{"service name", "metadata: {name: web}\nspec:\n  selector", "metadata: {name: 9web}\nspec:\n  selector", `name "9web"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			yaml := goodDeployment + goodConfig
			if !strings.Contains(yaml, c.from) {
				t.Fatalf("test bug: %q is not in the manifest", c.from)
			}
			yaml = strings.Replace(yaml, c.from, c.to, 1)
			problems := problemsOf(t, yaml, true)
			for _, p := range problems {
				if strings.Contains(p, c.want) {
					return
				}
			}
			t.Fatalf("expected a problem containing %q, got %q", c.want, problems)
		})
	}
}

func TestStatefulSetNeedsHeadlessService(t *testing.T) {
	sts := `
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: example/db:1
          ports: [{name: db, containerPort: 5432}]
          readinessProbe: {tcpSocket: {port: db}}
          livenessProbe: {exec: {command: ["true"]}}
          resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 32Mi}}
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: db, port: 5432, targetPort: db}]
`
	if p := problemsOf(t, sts, true); len(p) != 0 {
		t.Fatalf("expected no problems, got %q", p)
	}
	p := problemsOf(t, strings.Replace(sts, "  clusterIP: None\n", "", 1), true)
	if len(p) != 1 || !strings.Contains(p[0], "not headless") {
		t.Fatalf("expected one 'not headless' problem, got %q", p)
	}
	p = problemsOf(t, strings.Replace(sts, "mountPath: /data", "mountPath: data", 1), true)
	if len(p) != 1 || !strings.Contains(p[0], "not absolute") {
		t.Fatalf("expected one 'not absolute' problem, got %q", p)
	}
}

func TestDockerfile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("app/main.js", "console.log(1)\n")
	write("app/secret.txt", "x\n")
	good := "FROM node:20-bookworm-slim AS runtime\nWORKDIR /app\nCOPY app/main.js ./\nCMD [\"node\", \"main.js\"]\n"
	write("Dockerfile", good)
	write("Dockerfile.dockerignore", "app/secret.txt\n")
	if p := checkDockerfile(filepath.Join(dir, "Dockerfile"), dir, "runtime"); len(p) != 0 {
		t.Fatalf("expected no problems, got %q", p)
	}
	cases := []struct{ name, dockerfile, target, want string }{
		{"missing source", strings.Replace(good, "app/main.js", "app/missing.js", 1), "runtime", "no such file in the build context"},
		{"ignored source", strings.Replace(good, "app/main.js", "app/secret.txt", 1), "runtime", "excluded by the dockerignore file"},
		{"outside the context", strings.Replace(good, "app/main.js", "../etc/passwd", 1), "runtime", "outside the build context"},
		{"no such target", good, "dev", `no stage named "dev"`},
		{"lint: shell-form CMD", strings.Replace(good, `CMD ["node", "main.js"]`, "CMD node main.js", 1), "runtime", "JSONArgsRecommended"},
		{"lint: casing", strings.Replace(good, "AS runtime", "as runtime", 1), "runtime", "FromAsCasing"},
		{"syntax", strings.Replace(good, "WORKDIR /app", "WORKDIR", 1), "runtime", "WORKDIR requires exactly one argument"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			write("Dockerfile", c.dockerfile)
			problems := checkDockerfile(filepath.Join(dir, "Dockerfile"), dir, c.target)
			for _, p := range problems {
				if strings.Contains(p, c.want) {
					return
				}
			}
			t.Fatalf("expected a problem containing %q, got %q", c.want, problems)
		})
	}
}
