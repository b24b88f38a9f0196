/**
 * Checks what the Tiltfile declares, from `tilt alpha tiltfile-result` (the Tiltfile
 * evaluated, nothing run) in both modes; tools/tilt/check.sh calls it:
 *
 *   node --import tsx tools/tilt/tiltfile-check.ts LOCAL.json K8S.json
 *
 * Local mode: one resource per backend and per process of the distributed topology
 * (tools/cluster/cluster.ts), the right labels, readiness probes that really ask the
 * process (gRPC health for services, /healthz for gateways), resource_deps in start
 * order, no two processes on one port, and the end-to-end test last.
 * Kubernetes mode: the same workloads from the kustomize overlay, all built from the
 * one image with live_update, port forwards for both gateways, the same order.
 * (Tilt calls that JSON unstable; the fields read here are few and fail loudly.)
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

interface Manifest {
  Name: string;
  Labels?: Record<string, string> | null;
  ResourceDependencies?: string[] | null;
  TriggerMode?: number;
  ImageTargets?: { selector?: string; LiveUpdateSpec?: { syncs?: { localPath: string; containerPath: string }[]; stopPaths?: string[] } }[] | null;
  DeployTarget?: {
    UpdateCmdSpec?: { args?: string[] } | null;
    ServeCmd?: { Argv?: string[] | null; Env?: string[] | null } | null;
    ReadinessProbe?: { exec?: { command: string[] }; httpGet?: { path: string; port: number } } | null;
    yaml?: string;
    portForwardTemplateSpec?: { forwards?: { localPort: number; containerPort: number }[] } | null;
  } | null;
}

function load(path: string): Map<string, Manifest> {
  const result = JSON.parse(readFileSync(path, "utf8")) as { Manifests?: Manifest[]; Error?: unknown };
  assert.ok(!result.Error, `${path}: the Tiltfile failed: ${JSON.stringify(result.Error)}`);
  assert.ok(Array.isArray(result.Manifests), `${path}: no Manifests (has tiltfile-result's format changed?)`);
  return new Map(result.Manifests.map((m) => [m.Name, m]));
}

const [localPath, k8sPath] = process.argv.slice(2);
if (!localPath || !k8sPath) {
  console.error("usage: tiltfile-check.ts LOCAL.json K8S.json");
  process.exit(2);
}

const BACKENDS = ["postgres", "redis", "etcd", "cassandra"];
/** Local mode: each process and the backends it cannot start without. */
const LOCAL_SERVICES: Record<string, string[]> = {
  session: ["postgres", "etcd"],
  groups: ["postgres", "etcd"],
  "messagestore-1": ["cassandra", "etcd"],
  "messagestore-2": ["cassandra", "etcd", "messagestore-1"],
  "router-1": ["redis", "etcd"],
  "router-2": ["redis", "etcd"],
  presence: ["redis", "etcd"],
  notify: ["postgres", "etcd"],
};
const GATEWAYS = ["gateway-1", "gateway-2"];

function labelsOf(m: Manifest): string[] {
  return Object.keys(m.Labels ?? {});
}

function deps(m: Manifest): string[] {
  return m.ResourceDependencies ?? [];
}

function need(all: Map<string, Manifest>, name: string): Manifest {
  const m = all.get(name);
  assert.ok(m, `no resource "${name}" (have: ${[...all.keys()].join(", ")})`);
  return m;
}

function checkLocal(all: Map<string, Manifest>): void {
  const expected = ["npm-deps", ...BACKENDS, ...Object.keys(LOCAL_SERVICES), ...GATEWAYS, "cluster-smoke"];
  assert.deepEqual([...all.keys()].sort(), [...expected].sort(), "local mode: the resources");

  for (const name of ["npm-deps", ...BACKENDS]) {
    const m = need(all, name);
    assert.deepEqual(labelsOf(m), ["infra"], `${name}: label infra`);
    if (name !== "npm-deps") {
      const cmd = m.DeployTarget?.UpdateCmdSpec?.args?.join(" ") ?? "";
      assert.match(cmd, new RegExp(`tools/infra/infra\\.sh up .*\\b${name}$`), `${name}: started through tools/infra/infra.sh (got "${cmd}")`);
    }
  }

  const ports = new Map<string, string>();
  const takePorts = (name: string, env: string[]) => {
    for (const e of env) {
      const m = /^(PARLEY_\w*PORT)=(\d+)$/.exec(e);
      if (!m) continue;
      assert.ok(!ports.has(m[2]!), `${name}: port ${m[2]} is also ${ports.get(m[2]!)}'s`);
      assert.notEqual(m[2], "0", `${name}: ${m[1]} must be fixed (the probe needs it)`);
      ports.set(m[2]!, `${name} ${m[1]}`);
    }
  };

  const envOf = (m: Manifest) => new Map((m.DeployTarget?.ServeCmd?.Env ?? []).map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)]));
  for (const [name, needs] of Object.entries(LOCAL_SERVICES)) {
    const m = need(all, name);
    assert.deepEqual(labelsOf(m), ["services"], `${name}: label services`);
    const argv = m.DeployTarget?.ServeCmd?.Argv ?? [];
    const kind = name.replace(/-\d+$/, "");
    assert.ok(argv.includes(`services/${kind}/src/main.ts`), `${name}: serves services/${kind}/src/main.ts (got ${argv.join(" ")})`);
    const env = envOf(m);
    assert.equal(env.get("PARLEY_INSTANCE_ID"), name.includes("-") ? name : `${name}-1`, `${name}: instance id as tools/cluster names it`);
    const port = env.get(`PARLEY_${kind.toUpperCase()}_PORT`);
    assert.ok(port, `${name}: PARLEY_${kind.toUpperCase()}_PORT`);
    const probe = m.DeployTarget?.ReadinessProbe?.exec?.command ?? [];
    assert.ok(probe[0]?.endsWith("tools/tilt/grpc-health.sh") && probe[1] === `127.0.0.1:${port}`, `${name}: readiness asks gRPC health on its port (got ${probe.join(" ")})`);
    for (const d of needs) assert.ok(deps(m).includes(d), `${name}: waits for ${d} (has ${deps(m).join(", ")})`);
    takePorts(name, [...env].map(([k, v]) => `${k}=${v}`));
  }
  const namespaces = new Set<string>();
  for (const name of GATEWAYS) {
    const m = need(all, name);
    assert.deepEqual(labelsOf(m), ["edge"], `${name}: label edge`);
    assert.ok((m.DeployTarget?.ServeCmd?.Argv ?? []).includes("gateway/src/main.ts"), `${name}: serves gateway/src/main.ts`);
    const env = envOf(m);
    assert.equal(env.get("PARLEY_GATEWAY_ID"), name);
    const probe = m.DeployTarget?.ReadinessProbe?.httpGet;
    assert.ok(probe && probe.path === "/healthz" && String(probe.port) === env.get("PARLEY_GATEWAY_PORT"), `${name}: readiness is GET /healthz on its public port`);
    for (const s of Object.keys(LOCAL_SERVICES)) assert.ok(deps(m).includes(s), `${name}: starts after ${s}`);
    takePorts(name, [...env].map(([k, v]) => `${k}=${v}`));
    namespaces.add(`${env.get("PARLEY_ETCD_PREFIX")} ${env.get("PARLEY_REDIS_PREFIX")}`);
  }
  for (const name of Object.keys(LOCAL_SERVICES)) {
    const env = envOf(need(all, name));
    namespaces.add(`${env.get("PARLEY_ETCD_PREFIX")} ${env.get("PARLEY_REDIS_PREFIX")}`);
  }
  assert.equal(namespaces.size, 1, `one etcd/Redis namespace for every process (got ${[...namespaces].join(" | ")})`);
  assert.ok(![...namespaces][0]!.startsWith("/parley "), "its own namespace, not the default /parley");

  const smoke = need(all, "cluster-smoke");
  assert.deepEqual(labelsOf(smoke), ["tests"], "cluster-smoke: label tests");
  const args = smoke.DeployTarget?.UpdateCmdSpec?.args ?? [];
  assert.ok(args.includes("tools/e2e/cluster-smoke.ts"), "cluster-smoke runs tools/e2e/cluster-smoke.ts");
  const urls = args.at(-1)!.split(",");
  assert.deepEqual(
    urls,
    GATEWAYS.map((g) => `http://127.0.0.1:${envOf(need(all, g)).get("PARLEY_GATEWAY_PORT")}`),
    "cluster-smoke: against both gateways' public ports",
  );
  for (const d of [...GATEWAYS, ...Object.keys(LOCAL_SERVICES)]) assert.ok(deps(smoke).includes(d), `cluster-smoke: after ${d}`);
  console.log(`ok   Tiltfile (local): ${all.size} resources, ${ports.size} distinct fixed ports, namespace ${[...namespaces][0]}`);
}

function checkK8s(all: Map<string, Manifest>): void {
  const services = ["session", "groups", "messagestore", "router", "presence", "notify"];
  const expected = [...BACKENDS, ...services, ...GATEWAYS, "config", "cluster-smoke"];
  assert.deepEqual([...all.keys()].sort(), [...expected].sort(), "k8s mode: the resources");
  for (const name of [...services, ...GATEWAYS]) {
    const m = need(all, name);
    const yaml = m.DeployTarget?.yaml ?? "";
    assert.match(yaml, /kind: Deployment/, `${name}: a Deployment`);
    const image = (m.ImageTargets ?? []).find((t) => t.selector === "parley");
    assert.ok(image, `${name}: built from the parley image (docker_build)`);
    const syncs = image.LiveUpdateSpec?.syncs ?? [];
    for (const dir of ["lib", "gen", "services", "gateway/src"]) {
      assert.ok(syncs.some((s) => s.localPath === dir), `${name}: live_update syncs ${dir}`);
    }
    assert.ok((image.LiveUpdateSpec?.stopPaths ?? []).includes("package-lock.json"), `${name}: a dependency change rebuilds the image`);
    assert.deepEqual(labelsOf(m), [GATEWAYS.includes(name) ? "edge" : "services"], `${name}: label`);
    for (const d of ["etcd"]) assert.ok(deps(m).includes(d), `${name}: waits for ${d}`);
  }
  for (const name of GATEWAYS) {
    const m = need(all, name);
    const forwards = m.DeployTarget?.portForwardTemplateSpec?.forwards ?? [];
    assert.ok(forwards.some((f) => f.containerPort === 7000), `${name}: its public port is forwarded`);
    const local = forwards.find((f) => f.containerPort === 7000)!.localPort;
    assert.match(m.DeployTarget?.yaml ?? "", new RegExp(`value: http://127\\.0\\.0\\.1:${local}\\b`), `${name}: advertises the forwarded address http://127.0.0.1:${local}`);
    for (const s of services) assert.ok(deps(m).includes(s), `${name}: starts after ${s}`);
  }
  for (const name of BACKENDS) {
    const m = need(all, name);
    assert.match(m.DeployTarget?.yaml ?? "", /kind: StatefulSet/, `${name}: a StatefulSet`);
    assert.deepEqual(labelsOf(m), ["infra"], `${name}: label infra`);
  }
  for (const [name, m] of all) {
    if (name !== "config" && name !== "cluster-smoke") assert.ok(deps(m).includes("config"), `${name}: waits for config (the Namespace)`);
  }
  const smoke = need(all, "cluster-smoke");
  const forwarded = GATEWAYS.map((g) => `http://127.0.0.1:${need(all, g).DeployTarget!.portForwardTemplateSpec!.forwards!.find((f) => f.containerPort === 7000)!.localPort}`);
  assert.equal(smoke.DeployTarget?.UpdateCmdSpec?.args?.at(-1), forwarded.join(","), "cluster-smoke: against the forwarded gateways");
  const config = need(all, "config").DeployTarget?.yaml ?? "";
  for (const kind of ["Namespace", "ConfigMap", "Secret"]) assert.match(config, new RegExp(`kind: ${kind}`), `config: holds the ${kind}`);
  console.log(`ok   Tiltfile (k8s): ${all.size} resources, ${services.length + GATEWAYS.length} workloads from one image with live_update, gateways forwarded`);
}

checkLocal(load(localPath));
checkK8s(load(k8sPath));
