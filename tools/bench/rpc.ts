/**
 * Benchmark: CPU per internal unary call (client and server in this one process), for
 * connect-node's general gRPC path against the lean path of lib/grpc-unary.ts, one call
 * at a time and 100 in flight. Both run here, in the same process, on the same message.
 *
 *   node --import tsx tools/bench/rpc.ts [--calls 20000]
 */
import { parseArgs } from "node:util";
import type { Interceptor } from "@connectrpc/connect";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { createLogger } from "../../lib/logger.js";
import { createClient, dialGrpc, startGrpcServer } from "../../lib/rpc.js";

const { values } = parseArgs({ options: { calls: { type: "string", default: "20000" } } });
const CALLS = Number(values.calls);
const logger = createLogger("bench-rpc", "silent");
/** Any interceptor sends calls through connect's general path on that side. */
const passThrough: Interceptor = (next) => (req) => next(req);

async function measure(name: string, interceptors: Interceptor[]) {
  const server = await startGrpcServer({
    port: 0,
    services: [GroupsService],
    logger,
    interceptors,
    routes: (r) => r.service(GroupsService, { listPushCandidates: (req) => ({ candidates: req.userIds.map((userId) => ({ userId })) }) }),
  });
  const transport = dialGrpc(server.url, interceptors);
  const client = createClient(GroupsService, transport);
  const req = { userIds: ["0190a8f0-0000-7000-8000-000000000001"], conversationId: "0190a8f0-0000-7000-8000-000000000002", seq: 42n };
  const run = async (inFlight: number) => {
    for (let i = 0; i < 500; i++) await client.listPushCandidates(req); // warm up
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let done = 0; done < CALLS; done += inFlight) await Promise.all(Array.from({ length: inFlight }, () => client.listPushCandidates(req)));
    const cpu = process.cpuUsage(cpu0);
    return { cpuMsPerCall: (cpu.user + cpu.system) / 1000 / CALLS, callsPerSecond: Math.round(CALLS / ((performance.now() - t0) / 1000)) };
  };
  const result = { name, oneAtATime: await run(1), hundredInFlight: await run(100) };
  transport.close();
  await server.close();
  return result;
}

const general = await measure("connect-node general path (baseline)", [passThrough]);
const lean = await measure("lib/grpc-unary.ts lean path", []);
console.log(JSON.stringify({ calls: CALLS, results: [general, lean] }, null, 2));
console.log(
  `lean / general CPU per call: one at a time ${(lean.oneAtATime.cpuMsPerCall / general.oneAtATime.cpuMsPerCall).toFixed(2)}x, ` +
    `100 in flight ${(lean.hundredInFlight.cpuMsPerCall / general.hundredInFlight.cpuMsPerCall).toFixed(2)}x`,
);
