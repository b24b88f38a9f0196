import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as net from "node:net";
import { performance } from "node:perf_hooks";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { status as grpcStatus } from "@grpc/grpc-js";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { leanGrpcTransport, parseGrpcTimeout } from "../grpc-unary.js";
import { createLogger } from "../logger.js";
import { createClient, dialGrpc, startGrpcServer, type GrpcServer, type Routes } from "../rpc.js";
import { grpcJsUnary } from "../testing/grpc-js.js";

const logger = createLogger("grpc-unary-test", "silent");

/** What the last listPushCandidates call saw of its context. */
interface Seen {
  aborted?: Promise<unknown>;
  timeoutMs?: number;
  traceHeader?: string | null;
}

/**
 * A GroupsService whose behaviour the request's `conversation_id` selects: "fail:<code>:<msg>"
 * throws a ConnectError, "throw" throws a plain Error, "hang" never answers (until the
 * call is cancelled), anything else answers one candidate per user id, with `seq`.
 */
function routes(seen: Seen): Routes {
  return (router) =>
    router.service(GroupsService, {
      async listPushCandidates(req, ctx) {
        seen.timeoutMs = ctx.timeoutMs();
        seen.traceHeader = ctx.requestHeader.get("x-trace");
        const [verb, code, ...msg] = req.conversationId.split(":");
        if (verb === "fail") throw new ConnectError(msg.join(":"), Number(code) as Code);
        if (verb === "throw") throw new Error("boom");
        if (verb === "hang") {
          seen.aborted = new Promise((resolve) => ctx.signal.addEventListener("abort", () => resolve(ctx.signal.reason)));
          await seen.aborted;
          throw new ConnectError("gave up", Code.Canceled);
        }
        return { candidates: req.userIds.map((userId) => ({ userId, deliveredSeq: req.seq })) };
      },
    });
}

function codeOf(err: unknown): Code {
  return ConnectError.from(err).code;
}

describe("lean unary gRPC (lib/grpc-unary.ts)", { timeout: 30_000 }, () => {
  const seen: Seen = {};
  let server: GrpcServer;
  let transport: ReturnType<typeof dialGrpc>;
  before(async () => {
    server = await startGrpcServer({ port: 0, routes: routes(seen), services: [GroupsService], logger });
    transport = dialGrpc(server.url);
  });
  after(async () => {
    transport.close();
    await server.close();
  });

  it("round-trips a call, with headers and the caller's deadline visible to the handler", async () => {
    const client = createClient(GroupsService, transport);
    const res = await client.listPushCandidates({ userIds: ["a", "b", "c"], seq: 1n << 60n }, { headers: { "x-trace": "t1" }, timeoutMs: 5000 });
    assert.equal(res.candidates.length, 3);
    assert.equal(res.candidates[0]?.deliveredSeq, 1n << 60n, "64-bit fields survive the lean path");
    assert.equal(seen.traceHeader, "t1");
    assert.ok(seen.timeoutMs! > 4000 && seen.timeoutMs! <= 5000, `timeoutMs ${seen.timeoutMs}`);
    // Many concurrent calls on the one connection.
    const all = await Promise.all(Array.from({ length: 500 }, (_, i) => client.listPushCandidates({ userIds: Array(i % 7).fill("u") })));
    assert.deepEqual(all.map((r) => r.candidates.length), Array.from({ length: 500 }, (_, i) => i % 7));
  });

  it("carries error codes and messages (non-ASCII too) both to its own client and to grpc-js", async () => {
    const client = createClient(GroupsService, transport);
    for (const [code, msg] of [
      [Code.NotFound, "no such user"],
      [Code.FailedPrecondition, "ünïcode: 100% ✓\nnext line"],
      [Code.ResourceExhausted, ""],
    ] as const) {
      await assert.rejects(client.listPushCandidates({ conversationId: `fail:${code}:${msg}` }), (err) => {
        const ce = ConnectError.from(err);
        assert.equal(ce.code, code);
        assert.equal(ce.rawMessage, msg);
        return true;
      });
      await assert.rejects(grpcJsUnary(server.url, GroupsService, "listPushCandidates", { conversationId: `fail:${code}:${msg}` }), (err: { code?: number; details?: string }) => {
        assert.equal(err.code, code);
        assert.equal(err.details, msg);
        return true;
      });
    }
    // A plain exception is Unknown (connect's mapping), and the server stays up.
    await assert.rejects(client.listPushCandidates({ conversationId: "throw" }), (err) => codeOf(err) === Code.Unknown);
    assert.equal((await client.listPushCandidates({ userIds: ["x"] })).candidates.length, 1);
  });

  it("turns the caller's deadline into DeadlineExceeded and aborts the handler's signal", async () => {
    const client = createClient(GroupsService, transport);
    await assert.rejects(client.listPushCandidates({ conversationId: "hang" }, { timeoutMs: 100 }), (err) => codeOf(err) === Code.DeadlineExceeded);
    assert.ok(seen.aborted, "the handler ran");
    await seen.aborted;
    // grpc-js sends its own grpc-timeout; the server enforces it as well.
    await assert.rejects(grpcJsUnary(server.url, GroupsService, "listPushCandidates", { conversationId: "hang" }, { timeoutMs: 100 }), (err: { code?: number }) => err.code === grpcStatus.DEADLINE_EXCEEDED);
  });

  it("cancels on the caller's abort signal: Canceled for the caller, an aborted signal for the handler", async () => {
    const client = createClient(GroupsService, transport);
    seen.aborted = undefined;
    const abort = new AbortController();
    const call = client.listPushCandidates({ conversationId: "hang" }, { signal: abort.signal });
    while (!seen.aborted) await new Promise((r) => setImmediate(r));
    abort.abort();
    await assert.rejects(call, (err) => codeOf(err) === Code.Canceled);
    assert.equal(codeOf(await seen.aborted), Code.Canceled);
    // A signal aborted before the call: nothing is sent.
    await assert.rejects(client.listPushCandidates({ userIds: ["a"] }, { signal: abort.signal }), (err) => codeOf(err) === Code.Canceled);
  });

  it("leaves compressed requests to connect's general path (grpc-js with gzip still works)", async () => {
    const res = await grpcJsUnary(server.url, GroupsService, "listPushCandidates", { userIds: ["a", "b"], conversationId: "x".repeat(4096) }, {
      channelOptions: { "grpc.default_compression_algorithm": 2 },
    });
    assert.equal(res.candidates.length, 2);
  });

  it("rejects a malformed body with a typed error and keeps serving", async () => {
    const session = http2.connect(server.url);
    try {
      const call = (body: Buffer) =>
        new Promise<{ status?: string; message?: string }>((resolve, reject) => {
          const req = session.request({ ":method": "POST", ":path": "/parley.groups.v1.GroupsService/ListPushCandidates", "content-type": "application/grpc", te: "trailers" });
          req.on("trailers", (t) => resolve({ status: t["grpc-status"] as string, message: t["grpc-message"] as string }));
          req.on("error", reject);
          req.resume();
          req.end(body);
        });
      // A frame whose length does not match the body.
      assert.equal((await call(Buffer.from([0, 0, 0, 0, 9, 1, 2]))).status, String(Code.Internal));
      // Not protobuf: field 1 declared as a 100-byte string with 1 byte present.
      assert.equal((await call(Buffer.from([0, 0, 0, 0, 3, 0x0a, 100, 1]))).status, String(Code.InvalidArgument));
      // A frame that claims to be over the size limit.
      const huge = Buffer.from([0, 0x7f, 0xff, 0xff, 0xff]);
      assert.equal((await call(huge)).status, String(Code.ResourceExhausted));
    } finally {
      session.close();
    }
    assert.equal((await createClient(GroupsService, transport).listPushCandidates({ userIds: ["a"] })).candidates.length, 1);
  });

  it("parses grpc-timeout in every unit", () => {
    assert.equal(parseGrpcTimeout("2H"), 7_200_000);
    assert.equal(parseGrpcTimeout("3M"), 180_000);
    assert.equal(parseGrpcTimeout("5S"), 5000);
    assert.equal(parseGrpcTimeout("250m"), 250);
    assert.equal(parseGrpcTimeout("1500u"), 1.5);
    assert.equal(parseGrpcTimeout("123456789m"), undefined, "at most 8 digits");
    assert.equal(parseGrpcTimeout("5s"), undefined);
    assert.equal(parseGrpcTimeout(undefined), undefined);
  });
});

describe("lean unary gRPC when the server is gone", { timeout: 30_000 }, () => {
  it("fails with Unavailable when the connection drops mid-call, and when nothing listens", async () => {
    // A server that takes the call and then loses its connection, as a killed process would.
    const server = http2.createServer();
    const sockets = new Set<import("node:net").Socket>();
    server.on("connection", (socket: import("node:net").Socket) => sockets.add(socket));
    server.on("stream", (stream) => {
      stream.resume();
      stream.once("end", () => sockets.forEach((socket) => socket.destroy()));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const transport = dialGrpc(url);
    try {
      const client = createClient(GroupsService, transport);
      await assert.rejects(client.listPushCandidates({ userIds: ["a"] }), (err) => codeOf(err) === Code.Unavailable);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await assert.rejects(client.listPushCandidates({ userIds: ["a"] }), (err) => codeOf(err) === Code.Unavailable);
    } finally {
      transport.close();
    }
  });

  it("fails with Unavailable when the server's host resets the connection mid-call (a process killed with kill -9)", async () => {
    const server = http2.createServer();
    server.on("stream", (stream) => {
      stream.resume();
      // The kernel of a killed process answers with a TCP reset.
      stream.once("end", () => stream.session?.socket.resetAndDestroy());
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const transport = dialGrpc(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    try {
      const client = createClient(GroupsService, transport);
      await assert.rejects(client.listPushCandidates({ userIds: ["a"] }), (err) => {
        assert.equal(codeOf(err), Code.Unavailable, String(err));
        return true;
      });
    } finally {
      transport.close();
      server.close();
    }
  });

  it("reports a call cut by the server's shutdown deadline as Unavailable, and later calls too", async () => {
    const seen: Seen = {};
    const server = await startGrpcServer({ port: 0, routes: routes(seen), services: [GroupsService], logger, drainMs: 0 });
    const transport = dialGrpc(server.url);
    try {
      const client = createClient(GroupsService, transport);
      const call = client.listPushCandidates({ conversationId: "hang" });
      const failed = assert.rejects(call, (err) => codeOf(err) === Code.Unavailable);
      while (!seen.aborted) await new Promise((r) => setImmediate(r));
      await server.close(); // drainMs 0: cuts the hanging call
      await failed;
      await assert.rejects(client.listPushCandidates({ userIds: ["a"] }), (err) => codeOf(err) === Code.Unavailable);
    } finally {
      transport.close();
    }
  });
});

describe("lean unary gRPC deadlines cover getting a connection", { timeout: 30_000 }, () => {
  it("a call whose connection must be verified (PING) by a peer that went silent fails at the caller's deadline, not the ping timeout", async () => {
    const seen: Seen = {};
    const server = await startGrpcServer({ port: 0, routes: routes(seen), services: [GroupsService], logger });
    // A TCP relay in front of the server that can go silent: a peer that froze, or a host that dropped off.
    let silent = false;
    const relayed = new Set<net.Socket>();
    const relay = net.createServer((down) => {
      const up = net.connect(Number(new URL(server.url).port), "127.0.0.1");
      relayed.add(down).add(up);
      down.on("data", (d) => void (silent || up.write(d)));
      up.on("data", (d) => void (silent || down.write(d)));
      down.on("error", () => up.destroy()).on("close", () => up.destroy());
      up.on("error", () => down.destroy()).on("close", () => down.destroy());
    });
    await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
    // Verify before every use after 1 ms idle; a silent peer is given up on after 20 s.
    const manager = new Http2SessionManager(`http://127.0.0.1:${(relay.address() as net.AddressInfo).port}`, {
      pingIntervalMs: 1,
      pingTimeoutMs: 20_000,
    });
    const transport = leanGrpcTransport(manager, createGrpcTransport({ baseUrl: server.url, sessionManager: manager }));
    try {
      const client = createClient(GroupsService, transport);
      assert.equal((await client.listPushCandidates({ userIds: ["a"] })).candidates.length, 1);
      silent = true;
      // Idle longer than pingIntervalMs, so the next call verifies the connection first
      // (time passing is the condition here, not a stand-in for an event).
      await new Promise((resolve) => setTimeout(resolve, 10));
      const started = performance.now();
      await assert.rejects(client.listPushCandidates({ userIds: ["a"] }, { timeoutMs: 300 }), (err) => codeOf(err) === Code.DeadlineExceeded);
      const took = performance.now() - started;
      assert.ok(took < 10_000, `failed after ${Math.round(took)} ms: the deadline (300 ms) must bound the wait for the PING answer (20 s)`);
    } finally {
      manager.abort();
      for (const s of relayed) s.destroy();
      relay.close();
      await server.close();
    }
  });
});

describe("lean unary gRPC with interceptors", { timeout: 30_000 }, () => {
  it("sends every call through connect's general path, so interceptors run on both sides", async () => {
    const serverSaw: string[] = [];
    const clientSaw: string[] = [];
    const serverInterceptor: Interceptor = (next) => async (req) => {
      serverSaw.push(req.method.name);
      return next(req);
    };
    const clientInterceptor: Interceptor = (next) => async (req) => {
      clientSaw.push(req.method.name);
      return next(req);
    };
    const server = await startGrpcServer({ port: 0, routes: routes({}), services: [GroupsService], logger, interceptors: [serverInterceptor] });
    const transport = dialGrpc(server.url, [clientInterceptor]);
    try {
      assert.equal((await createClient(GroupsService, transport).listPushCandidates({ userIds: ["a", "b"] })).candidates.length, 2);
      assert.deepEqual(serverSaw, ["ListPushCandidates"]);
      assert.deepEqual(clientSaw, ["ListPushCandidates"]);
    } finally {
      transport.close();
      await server.close();
    }
  });
});
