/**
 * `npm run cluster`: the distributed topology on this machine, on the real backends
 * (started by tools/infra/infra.sh if they are not running): 2 gateways (public ports
 * 7000 and 7001), 2 routers, 2 message stores and one of each other service, each its
 * own process, finding each other through etcd. Ctrl-C stops the processes; the
 * backends keep running (`npm run infra -- down` stops them).
 */
import { onShutdownSignal } from "../../lib/shutdown.js";
import { ensureInfra, startCluster } from "./cluster.js";

const cluster = await startCluster({
  backends: ensureInfra(),
  namespace: process.env.PARLEY_CLUSTER_NAMESPACE ?? "parley",
  gatewayBasePort: Number(process.env.PARLEY_GATEWAY_PORT ?? 7000),
  logLevel: process.env.PARLEY_LOG_LEVEL ?? "info",
  onLine: (proc, line) => process.stdout.write(`${proc.padEnd(14)} ${line}\n`),
});
console.log(`
Parley cluster is running (namespace "${cluster.namespace}"):
${cluster.processes.map((p) => `  ${p.name.padEnd(14)} pid ${p.child.pid}`).join("\n")}
Gateways: ${cluster.gatewayUrls().sort().join("  ")}
Clients ask AuthService.AssignGateway on any gateway which one to connect to.
Press Ctrl-C to stop the processes.
`);
onShutdownSignal(
  () => cluster.stop(),
  (err) => console.error(err),
);
