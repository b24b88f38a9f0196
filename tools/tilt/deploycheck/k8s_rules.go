package main

import (
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// podTemplate is a workload's pod template with where it came from.
type podTemplate struct {
	owner     string // e.g. Deployment/router
	namespace string
	labels    map[string]string
	spec      *corev1.PodSpec
	// claims are the StatefulSet's volumeClaimTemplates (mountable by name).
	claims map[string]bool
	// job: run-to-completion pods need no probes.
	job bool
}

// index holds what objects can refer to.
type index struct {
	configMaps      map[string]map[string]bool // ns/name → keys
	secrets         map[string]map[string]bool
	services        map[string]*corev1.Service
	pvcs            map[string]bool
	serviceAccounts map[string]bool
}

func key(ns, name string) string { return ns + "/" + name }

func validate(objs []runtime.Object, complete bool) []string {
	var problems []string
	report := func(who, format string, args ...any) {
		problems = append(problems, who+": "+fmt.Sprintf(format, args...))
	}
	idx := index{
		configMaps:      map[string]map[string]bool{},
		secrets:         map[string]map[string]bool{},
		services:        map[string]*corev1.Service{},
		pvcs:            map[string]bool{},
		serviceAccounts: map[string]bool{},
	}
	seen := map[string]bool{}
	var templates []podTemplate
	var services []*corev1.Service
	var statefulSets []*appsv1.StatefulSet

	for _, obj := range objs {
		m, err := meta.Accessor(obj)
		if err != nil {
			report("object", "no metadata: %v", err)
			continue
		}
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		who := kind + "/" + m.GetName()
		id := obj.GetObjectKind().GroupVersionKind().GroupKind().String() + " " + key(m.GetNamespace(), m.GetName())
		if seen[id] {
			report(who, "appears twice")
		}
		seen[id] = true
		checkMeta(who, kind, m, report)

		ns := m.GetNamespace()
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			keys := map[string]bool{}
			for k := range o.Data {
				keys[k] = true
				for _, msg := range validation.IsConfigMapKey(k) {
					report(who, "data key %q: %s", k, msg)
				}
			}
			for k := range o.BinaryData {
				keys[k] = true
			}
			idx.configMaps[key(ns, o.Name)] = keys
		case *corev1.Secret:
			keys := map[string]bool{}
			for k := range o.Data {
				keys[k] = true
			}
			for k := range o.StringData {
				keys[k] = true
			}
			idx.secrets[key(ns, o.Name)] = keys
		case *corev1.Service:
			idx.services[key(ns, o.Name)] = o
			services = append(services, o)
		case *corev1.PersistentVolumeClaim:
			idx.pvcs[key(ns, o.Name)] = true
		case *corev1.ServiceAccount:
			idx.serviceAccounts[key(ns, o.Name)] = true
		case *appsv1.Deployment:
			checkSelector(who, o.Spec.Selector, o.Spec.Template.Labels, report)
			templates = append(templates, podTemplate{owner: who, namespace: ns, labels: o.Spec.Template.Labels, spec: &o.Spec.Template.Spec})
		case *appsv1.StatefulSet:
			checkSelector(who, o.Spec.Selector, o.Spec.Template.Labels, report)
			claims := map[string]bool{}
			for _, c := range o.Spec.VolumeClaimTemplates {
				claims[c.Name] = true
				if len(c.Spec.AccessModes) == 0 {
					report(who, "volumeClaimTemplate %q: no accessModes", c.Name)
				}
				if _, ok := c.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
					report(who, "volumeClaimTemplate %q: no storage request", c.Name)
				}
			}
			statefulSets = append(statefulSets, o)
			templates = append(templates, podTemplate{owner: who, namespace: ns, labels: o.Spec.Template.Labels, spec: &o.Spec.Template.Spec, claims: claims})
		case *appsv1.DaemonSet:
			checkSelector(who, o.Spec.Selector, o.Spec.Template.Labels, report)
			templates = append(templates, podTemplate{owner: who, namespace: ns, labels: o.Spec.Template.Labels, spec: &o.Spec.Template.Spec})
		case *batchv1.Job:
			templates = append(templates, podTemplate{owner: who, namespace: ns, labels: o.Spec.Template.Labels, spec: &o.Spec.Template.Spec, job: true})
		}
	}

	for _, t := range templates {
		checkPod(t, idx, complete, report)
	}
	for _, s := range statefulSets {
		who := "StatefulSet/" + s.Name
		if s.Spec.ServiceName == "" {
			report(who, "spec.serviceName is empty (the pods get no stable DNS names)")
			continue
		}
		svc := idx.services[key(s.Namespace, s.Spec.ServiceName)]
		switch {
		case svc == nil:
			report(who, "serviceName %q: no such Service in the render", s.Spec.ServiceName)
		case svc.Spec.ClusterIP != corev1.ClusterIPNone:
			report(who, "serviceName %q: the Service is not headless (clusterIP: None)", s.Spec.ServiceName)
		}
	}
	for _, s := range services {
		checkService(s, templates, report)
	}
	return problems
}

func checkMeta(who, kind string, m metav1.Object, report func(string, string, ...any)) {
	if m.GetName() == "" {
		report(who, "metadata.name is empty")
	}
	nameCheck := validation.IsDNS1123Subdomain
	if kind == "Service" {
		nameCheck = validation.IsDNS1035Label
	}
	for _, msg := range nameCheck(m.GetName()) {
		report(who, "name %q: %s", m.GetName(), msg)
	}
	if ns := m.GetNamespace(); ns != "" {
		for _, msg := range validation.IsDNS1123Label(ns) {
			report(who, "namespace %q: %s", ns, msg)
		}
	}
	checkLabels(who, "label", m.GetLabels(), report)
	for k := range m.GetAnnotations() {
		for _, msg := range content.IsLabelKey(k) {
			report(who, "annotation key %q: %s", k, msg)
		}
	}
}

func checkLabels(who, what string, l map[string]string, report func(string, string, ...any)) {
	for k, v := range l {
		for _, msg := range content.IsLabelKey(k) {
			report(who, "%s key %q: %s", what, k, msg)
		}
		for _, msg := range content.IsLabelValue(v) {
			report(who, "%s %q value %q: %s", what, k, v, msg)
		}
	}
}

func checkSelector(who string, sel *metav1.LabelSelector, podLabels map[string]string, report func(string, string, ...any)) {
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		report(who, "spec.selector is empty")
		return
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		report(who, "spec.selector: %v", err)
		return
	}
	if !s.Matches(labels.Set(podLabels)) {
		report(who, "spec.selector %s does not match the pod template labels %v", s, podLabels)
	}
}

// fieldRefs a container's env may read (the downward API).
var fieldRefs = map[string]bool{
	"metadata.name": true, "metadata.namespace": true, "metadata.uid": true,
	"spec.nodeName": true, "spec.serviceAccountName": true,
	"status.hostIP": true, "status.hostIPs": true, "status.podIP": true, "status.podIPs": true,
}

var varRef = regexp.MustCompile(`\$\$|\$\(([^)]*)\)`)

func checkPod(t podTemplate, idx index, complete bool, report func(string, string, ...any)) {
	who := t.owner
	spec := t.spec
	checkLabels(who, "pod template label", t.labels, report)
	if len(spec.Containers) == 0 {
		report(who, "the pod has no containers")
	}
	volumes := map[string]bool{}
	for name := range t.claims {
		volumes[name] = true
	}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
		switch {
		case v.ConfigMap != nil:
			requireObject(who, complete, idx.configMaps, t.namespace, v.ConfigMap.Name, "ConfigMap", v.ConfigMap.Optional, report)
		case v.Secret != nil:
			requireObject(who, complete, idx.secrets, t.namespace, v.Secret.SecretName, "Secret", v.Secret.Optional, report)
		case v.PersistentVolumeClaim != nil:
			if complete && !idx.pvcs[key(t.namespace, v.PersistentVolumeClaim.ClaimName)] {
				report(who, "volume %q: PersistentVolumeClaim %q is not in the render", v.Name, v.PersistentVolumeClaim.ClaimName)
			}
		}
	}
	if sa := spec.ServiceAccountName; sa != "" && sa != "default" && complete && !idx.serviceAccounts[key(t.namespace, sa)] {
		report(who, "serviceAccountName %q: no such ServiceAccount in the render", sa)
	}
	names := map[string]bool{}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	for i, c := range all {
		init := i < len(spec.InitContainers)
		cwho := fmt.Sprintf("%s container %q", who, c.Name)
		if c.Name == "" {
			report(who, "a container has no name")
		}
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			report(cwho, "name: %s", msg)
		}
		if names[c.Name] {
			report(cwho, "the name is used twice")
		}
		names[c.Name] = true
		if strings.TrimSpace(c.Image) == "" {
			report(cwho, "no image")
		}
		ports := map[string]bool{}
		numbers := map[int32]bool{}
		for _, p := range c.Ports {
			for _, msg := range validation.IsValidPortNum(int(p.ContainerPort)) {
				report(cwho, "containerPort %d: %s", p.ContainerPort, msg)
			}
			if p.Name != "" {
				for _, msg := range validation.IsValidPortName(p.Name) {
					report(cwho, "port name %q: %s", p.Name, msg)
				}
				if ports[p.Name] {
					report(cwho, "port name %q is used twice", p.Name)
				}
				ports[p.Name] = true
			}
			numbers[p.ContainerPort] = true
		}
		if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
			report(cwho, "no cpu request")
		}
		if _, ok := c.Resources.Requests[corev1.ResourceMemory]; !ok {
			report(cwho, "no memory request")
		}
		if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
			report(cwho, "no memory limit")
		}
		if !init && !t.job {
			if c.ReadinessProbe == nil {
				report(cwho, "no readinessProbe")
			}
			if c.LivenessProbe == nil {
				report(cwho, "no livenessProbe")
			}
		}
		for what, p := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe} {
			if p != nil {
				checkProbe(cwho+" "+what, p, ports, numbers, report)
			}
		}
		// Environment: envFrom first, then env in order (what $(VAR) may refer to).
		defined := map[string]bool{}
		// opaque: an envFrom source is not in the render, so its variables are unknown.
		opaque := false
		for _, from := range c.EnvFrom {
			var keys map[string]bool
			switch {
			case from.ConfigMapRef != nil:
				keys = requireObject(cwho, complete, idx.configMaps, t.namespace, from.ConfigMapRef.Name, "ConfigMap", from.ConfigMapRef.Optional, report)
			case from.SecretRef != nil:
				keys = requireObject(cwho, complete, idx.secrets, t.namespace, from.SecretRef.Name, "Secret", from.SecretRef.Optional, report)
			}
			if keys == nil {
				opaque = true
			}
			for k := range keys {
				defined[from.Prefix+k] = true
			}
		}
		envNames := map[string]bool{}
		for _, e := range c.Env {
			for _, msg := range validation.IsEnvVarName(e.Name) {
				report(cwho, "env %q: %s", e.Name, msg)
			}
			if envNames[e.Name] {
				report(cwho, "env %q is set twice", e.Name)
			}
			envNames[e.Name] = true
			for _, m := range varRef.FindAllStringSubmatch(e.Value, -1) {
				if m[0] == "$$" {
					continue
				}
				if !defined[m[1]] && !opaque {
					report(cwho, "env %q refers to $(%s), which is not defined before it (Kubernetes would keep the text as it is)", e.Name, m[1])
				}
			}
			if vf := e.ValueFrom; vf != nil {
				switch {
				case vf.ConfigMapKeyRef != nil:
					keys := requireObject(cwho, complete, idx.configMaps, t.namespace, vf.ConfigMapKeyRef.Name, "ConfigMap", vf.ConfigMapKeyRef.Optional, report)
					if keys != nil && !keys[vf.ConfigMapKeyRef.Key] {
						report(cwho, "env %q: ConfigMap %q has no key %q", e.Name, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key)
					}
				case vf.SecretKeyRef != nil:
					keys := requireObject(cwho, complete, idx.secrets, t.namespace, vf.SecretKeyRef.Name, "Secret", vf.SecretKeyRef.Optional, report)
					if keys != nil && !keys[vf.SecretKeyRef.Key] {
						report(cwho, "env %q: Secret %q has no key %q", e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
					}
				case vf.FieldRef != nil:
					if !fieldRefs[vf.FieldRef.FieldPath] && !strings.HasPrefix(vf.FieldRef.FieldPath, "metadata.labels[") && !strings.HasPrefix(vf.FieldRef.FieldPath, "metadata.annotations[") {
						report(cwho, "env %q: fieldRef %q is not a downward API field", e.Name, vf.FieldRef.FieldPath)
					}
				}
			}
			defined[e.Name] = true
		}
		// command and args may use any of the container's variables.
		for _, arg := range append(append([]string{}, c.Command...), c.Args...) {
			for _, m := range varRef.FindAllStringSubmatch(arg, -1) {
				if m[0] != "$$" && !defined[m[1]] && !opaque {
					report(cwho, "command/args refer to $(%s), which the container does not define", m[1])
				}
			}
		}
		for _, vm := range c.VolumeMounts {
			if !volumes[vm.Name] {
				report(cwho, "volumeMount %q: no such volume", vm.Name)
			}
			if !strings.HasPrefix(vm.MountPath, "/") {
				report(cwho, "volumeMount %q: mountPath %q is not absolute", vm.Name, vm.MountPath)
			}
		}
	}
}

// requireObject returns the keys of ConfigMap/Secret ns/name, or nil when it is not in
// the render (a problem only with -complete and when the reference is not optional).
func requireObject(who string, complete bool, objs map[string]map[string]bool, ns, name, kind string, optional *bool, report func(string, string, ...any)) map[string]bool {
	keys, ok := objs[key(ns, name)]
	if !ok && complete && (optional == nil || !*optional) {
		report(who, "%s %q is not in the render", kind, name)
	}
	return keys
}

func checkProbe(who string, p *corev1.Probe, names map[string]bool, numbers map[int32]bool, report func(string, string, ...any)) {
	handlers := 0
	var port *intstr.IntOrString
	if p.HTTPGet != nil {
		handlers++
		port = &p.HTTPGet.Port
		if !strings.HasPrefix(p.HTTPGet.Path, "/") {
			report(who, "httpGet path %q does not start with /", p.HTTPGet.Path)
		}
	}
	if p.TCPSocket != nil {
		handlers++
		port = &p.TCPSocket.Port
	}
	if p.GRPC != nil {
		handlers++
		v := intstr.FromInt32(p.GRPC.Port)
		port = &v
	}
	if p.Exec != nil {
		handlers++
		if len(p.Exec.Command) == 0 {
			report(who, "exec with an empty command")
		}
	}
	if handlers != 1 {
		report(who, "must have exactly one handler (httpGet, tcpSocket, grpc or exec), has %d", handlers)
	}
	if port != nil {
		if port.Type == intstr.String && !names[port.StrVal] {
			report(who, "port %q is not a declared container port", port.StrVal)
		}
		if port.Type == intstr.Int && !numbers[port.IntVal] {
			report(who, "port %d is not a declared container port", port.IntVal)
		}
	}
	if p.TimeoutSeconds < 0 || p.PeriodSeconds < 0 || p.FailureThreshold < 0 {
		report(who, "negative timing")
	}
}

func checkService(s *corev1.Service, templates []podTemplate, report func(string, string, ...any)) {
	who := "Service/" + s.Name
	if len(s.Spec.Ports) == 0 {
		report(who, "no ports")
	}
	if len(s.Spec.Ports) > 1 {
		for _, p := range s.Spec.Ports {
			if p.Name == "" {
				report(who, "port %d has no name (required when a Service has several)", p.Port)
			}
		}
	}
	if len(s.Spec.Selector) == 0 {
		if s.Spec.Type != corev1.ServiceTypeExternalName {
			report(who, "no selector (its endpoints would have to be managed by hand)")
		}
		return
	}
	sel := labels.SelectorFromSet(s.Spec.Selector)
	var selected []podTemplate
	for _, t := range templates {
		if t.namespace == s.Namespace && sel.Matches(labels.Set(t.labels)) {
			selected = append(selected, t)
		}
	}
	if len(selected) == 0 {
		report(who, "selector %s matches no pod template in the render", sel)
		return
	}
	for _, p := range s.Spec.Ports {
		for _, msg := range validation.IsValidPortNum(int(p.Port)) {
			report(who, "port %d: %s", p.Port, msg)
		}
		target := p.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(p.Port) // the default
		}
		for _, t := range selected {
			if !declaresPort(t.spec, target) {
				report(who, "targetPort %s is not a container port of %s", target.String(), t.owner)
			}
		}
	}
}

func declaresPort(spec *corev1.PodSpec, port intstr.IntOrString) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
				return true
			}
		}
	}
	return false
}
