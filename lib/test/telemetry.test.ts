/**
 * Tracing and metrics (lib/telemetry): W3C trace context through the RPC layer (the lean
 * unary path, connect's general path, in-process transports), an item's trace context
 * through a batch, logs with trace ids, the Prometheus text, and the OTLP collector's
 * decoding of what the real OTLP exporter sends. Spans go to an in-memory exporter.
 */
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { after, before, beforeEach, describe, it } from "node:test";
import { context, SpanKind, trace } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import type { Interceptor } from "@connectrpc/connect";
import { pino } from "pino";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { MessageStoreService } from "../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { randomUuid } from "../ids.js";
import { createLogger } from "../logger.js";
import { createClient, dialGrpc, inProcess, startGrpcServer, type GrpcServer, type OwnedTransport, type Routes } from "../rpc.js";
import { backendCall, statementOperation } from "../telemetry/backend.js";
import { telemetryConfig } from "../telemetry/config.js";
import { observeGateway } from "../telemetry/metrics.js";
import { startOtlpCollector } from "../telemetry/otlp-collector.js";
import { metricsRoute, metricsText, startTelemetry, type Telemetry } from "../telemetry/telemetry.js";
import {
  contextWith,
  formatTraceparent,
  parseTraceparent,
  SpanKind as Kind,
  startSpan,
  traceFields,
  tracedBatch,
  traceLogFields,
  tracing,
} from "../telemetry/tracing.js";
import { loadConfig as messageStoreConfig } from "../../services/messagestore/src/config.js";
import { MessageStoreContext } from "../../services/messagestore/src/context.js";
import { messageStoreRoutes } from "../../services/messagestore/src/routes.js";
import { MemoryMessageRepository } from "../../services/messagestore/test/memory-message-repository.js";

const logger = createLogger("telemetry-test", "silent");
const exporter = new InMemorySpanExporter();
let telemetry: Telemetry;

before(() => {
  telemetry = startTelemetry(telemetryConfig({ PARLEY_METRICS: "on" }, "test"), { spanExporter: exporter, exportEachSpan: true });
});
after(async () => {
  await telemetry.shutdown();
});
beforeEach(() => exporter.reset());

const spans = () => exporter.getFinishedSpans();
const named = (name: string) => spans().filter((s) => s.name === name);
function one(name: string): ReadableSpan {
  const found = named(name);
  assert.equal(found.length, 1, `one span named ${name}; got ${spans().map((s) => s.name).join(", ")}`);
  return found[0]!;
}
const idOf = (s: ReadableSpan) => s.spanContext().spanId;
const traceOf = (s: ReadableSpan) => s.spanContext().traceId;
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;

/** A GroupsService whose ListPushCandidates records the ambient span and makes a backend call under it. */
function recordingRoutes(seen: { spanId?: string }): Routes {
  return (router) =>
    router.service(GroupsService, {
      async listPushCandidates(req) {
        seen.spanId = trace.getActiveSpan()?.spanContext().spanId;
        await backendCall("redis", "test lookup", async () => 1);
        return { candidates: req.userIds.map((userId) => ({ userId })) };
      },
    });
}

/** Under a parent span: one call → client span (child of it) → server span (child of that) → backend span (child of that). */
async function assertRoundTrip(transport: OwnedTransport, seen: { spanId?: string }): Promise<void> {
  const t = tracing()!;
  const parent = t.startSpan("caller");
  const client = createClient(GroupsService, transport);
  await context.with(contextWith(parent), () => client.listPushCandidates({ conversationId: randomUuid(), userIds: [randomUuid()] }));
  parent.end();
  const rpc = "parley.groups.v1.GroupsService/ListPushCandidates";
  const clientSpan = named(rpc).find((s) => s.kind === SpanKind.CLIENT);
  const serverSpan = named(rpc).find((s) => s.kind === SpanKind.SERVER);
  assert.ok(clientSpan, "a client span");
  assert.ok(serverSpan, "a server span");
  const caller = one("caller");
  const backend = one("test lookup");
  assert.equal(parentOf(clientSpan), idOf(caller), "client span under the caller");
  assert.equal(parentOf(serverSpan), idOf(clientSpan), "server span continues the client span (metadata)");
  assert.equal(parentOf(backend), idOf(serverSpan), "the handler's backend call under the server span");
  assert.equal(seen.spanId, idOf(serverSpan), "the handler runs with the server span ambient");
  for (const s of [clientSpan, serverSpan, backend]) assert.equal(traceOf(s), traceOf(caller), `${s.name} in the caller's trace`);
  assert.equal(serverSpan.attributes["rpc.method"], rpc);
  assert.equal(backend.attributes["db.system.name"], "redis");
}

describe("W3C traceparent", () => {
  it("formats and parses a span context, and rejects malformed or invalid values", () => {
    const sc = parseTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "vendor=x");
    assert.ok(sc, "a valid traceparent parses");
    assert.equal(sc.traceId, "0af7651916cd43dd8448eb211c80319c");
    assert.equal(sc.spanId, "b7ad6b7169203331");
    assert.equal(sc.traceFlags, 1);
    assert.equal(sc.isRemote, true);
    assert.equal(sc.traceState?.get("vendor"), "x");
    assert.equal(formatTraceparent(sc), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert.equal(formatTraceparent({ ...sc, traceFlags: 0 }).endsWith("-00"), true);
    for (const bad of [
      "",
      "00-00000000000000000000000000000000-b7ad6b7169203331-01",
      "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
      "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
      "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
      "not a traceparent",
    ]) {
      assert.equal(parseTraceparent(bad), undefined, `rejects "${bad}"`);
    }
  });
});

describe("RPC tracing", () => {
  let lean: GrpcServer;
  let general: GrpcServer;
  const seen: { spanId?: string } = {};
  // Any interceptor moves both sides to connect's general path.
  const passThrough: Interceptor = (next) => (req) => next(req);

  before(async () => {
    lean = await startGrpcServer({ port: 0, routes: recordingRoutes(seen), services: [GroupsService], logger });
    general = await startGrpcServer({ port: 0, routes: recordingRoutes(seen), services: [GroupsService], logger, interceptors: [passThrough] });
  });
  after(async () => {
    await lean.close();
    await general.close();
  });

  it("lean unary path: the client span's context travels in the metadata; the handler runs under the server span", async () => {
    const transport = dialGrpc(lean.url);
    try {
      await assertRoundTrip(transport, seen);
    } finally {
      transport.close();
    }
  });

  it("connect's general path (interceptors) does the same", async () => {
    const transport = dialGrpc(general.url, [passThrough]);
    try {
      await assertRoundTrip(transport, seen);
    } finally {
      transport.close();
    }
  });

  it("in-process transports (the one-process platform) do the same", async () => {
    const transport = inProcess(recordingRoutes(seen));
    await assertRoundTrip(transport, seen);
  });

  it("a call made under no recording span is not traced on either side (traces start at the gateway's sends)", async () => {
    const transport = dialGrpc(lean.url);
    try {
      await createClient(GroupsService, transport).listPushCandidates({ conversationId: randomUuid(), userIds: [] });
      assert.deepEqual(
        spans().map((s) => s.name),
        [],
        "no span",
      );
      assert.equal(seen.spanId, undefined, "no ambient span in the handler");
    } finally {
      transport.close();
    }
  });

  it("a caller's unsampled trace context is followed: no span on the server", async () => {
    const transport = dialGrpc(general.url, [passThrough]);
    const unsampled: Interceptor = (next) => (req) => {
      req.header.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
      return next(req);
    };
    const direct = dialGrpc(lean.url, [unsampled]);
    try {
      await createClient(GroupsService, direct).listPushCandidates({ conversationId: randomUuid(), userIds: [] });
      assert.deepEqual(
        spans().map((s) => s.name),
        [],
        "no span for an unsampled trace",
      );
    } finally {
      transport.close();
      direct.close();
    }
  });

  it("health checks are not traced", async () => {
    const transport = dialGrpc(lean.url);
    try {
      const t = tracing()!;
      const parent = t.startSpan("probe");
      await context.with(contextWith(parent), () => createClient(Health, transport).check({ service: "" }));
      parent.end();
      assert.deepEqual(
        spans().map((s) => s.name),
        ["probe"],
        "no span for grpc.health.v1.Health",
      );
    } finally {
      transport.close();
    }
  });
});

describe("an item's trace context survives a batch", () => {
  let store: MessageStoreContext;
  let server: GrpcServer;

  before(async () => {
    store = await MessageStoreContext.fromConfig(messageStoreConfig({}), { repository: new MemoryMessageRepository(), logger });
    server = await startGrpcServer({ port: 0, routes: messageStoreRoutes(store), services: [MessageStoreService], logger });
  });
  after(async () => {
    await server.close();
    await store.close();
  });

  it("two messages of two traces in one AppendBatch: each append continues its own trace; the batch spans link them", async () => {
    const t = tracing()!;
    const transport = dialGrpc(server.url);
    try {
      // Two messages, each the root of its own trace, as the router's `store` spans.
      const a = startSpan(t, "store", Kind.PRODUCER, undefined, { which: "a" });
      const b = startSpan(t, "store", Kind.PRODUCER, undefined, { which: "b" });
      assert.notEqual(a.spanContext().traceId, b.spanContext().traceId, "two traces");
      const conversationId = randomUuid();
      const appends = [a, b].map((span) => ({
        conversationId,
        senderId: randomUuid(),
        senderDeviceId: randomUuid(),
        clientMsgId: randomUuid(),
        body: "hi",
        ...traceFields(span),
      }));
      // A third message whose trace was not sampled (flags 00): no span for it anywhere.
      appends.push({ ...appends[0]!, senderId: randomUuid(), clientMsgId: randomUuid(), traceparent: "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", tracestate: "" });
      const client = createClient(MessageStoreService, transport);
      // Called from no span at all, like the router's batcher.
      const res = await tracedBatch("store batch", appends, () => client.appendBatch({ appends }));
      a.end();
      b.end();
      assert.equal(res.results.length, 3);
      assert.ok(res.results.every((r) => r.result.case === "ok"), "all three stored");

      assert.ok(spans().every((s) => s.spanContext().traceId !== "1af7651916cd43dd8448eb211c80319c"), "nothing of the unsampled message");
      const appendSpans = named("append");
      assert.equal(appendSpans.length, 2, "one append span per message");
      for (const span of [a, b]) {
        const mine = appendSpans.find((s) => parentOf(s) === span.spanContext().spanId);
        assert.ok(mine, `the append of message ${String(span.spanContext().spanId)} is a child of its store span`);
        assert.equal(traceOf(mine), span.spanContext().traceId, "in that message's trace");
        assert.equal(mine.kind, SpanKind.CONSUMER);
        assert.equal(typeof mine.attributes["parley.seq"], "number");
      }
      // The RPC batch: a child of the first message's span, linked to the second.
      const batch = one("store batch");
      assert.equal(parentOf(batch), a.spanContext().spanId);
      assert.deepEqual(
        batch.links.map((l) => l.context.spanId),
        [b.spanContext().spanId],
      );
      const rpc = "parley.messagestore.v1.MessageStoreService/AppendBatch";
      const clientSpan = named(rpc).find((s) => s.kind === SpanKind.CLIENT)!;
      const serverSpan = named(rpc).find((s) => s.kind === SpanKind.SERVER)!;
      assert.equal(parentOf(clientSpan), idOf(batch), "the call under the batch span");
      assert.equal(parentOf(serverSpan), idOf(clientSpan), "served in the same trace");
      // The store's group commit: one write for both, under the first append, linked to the second.
      const write = one("write batch");
      const [firstAppend, secondAppend] = [a, b].map((span) => appendSpans.find((s) => parentOf(s) === span.spanContext().spanId)!);
      assert.equal(parentOf(write), idOf(firstAppend!));
      assert.deepEqual(
        write.links.map((l) => l.context.spanId),
        [idOf(secondAppend!)],
      );
    } finally {
      transport.close();
    }
  });
});

describe("batch loops", () => {
  it("a batch of untraced items runs detached: no backend span lands under the span that happened to start the loop", async () => {
    const t = tracing()!;
    const other = t.startSpan("another message's span, still recording");
    await context.with(contextWith(other), async () => {
      // Like a sequencer's drain started inside one message's RPC, now writing other messages.
      await tracedBatch("write batch", [{ traceparent: "", tracestate: "" }], () => backendCall("cassandra", "BATCH messages", async () => 1));
      // And a traced one, for contrast: its calls are under its own batch span.
      const mine = t.startSpan("mine");
      await tracedBatch("write batch", [traceFields(mine)], () => backendCall("cassandra", "BATCH messages", async () => 1));
      mine.end();
    });
    other.end();
    const backend = named("BATCH messages");
    assert.equal(backend.length, 1, "only the traced batch's call has a span");
    assert.equal(parentOf(backend[0]!), idOf(one("write batch")));
    assert.equal(parentOf(one("write batch")), idOf(one("mine")));
  });
});

describe("logs", () => {
  it("a line logged under a span carries its trace_id and span_id; other lines do not", () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const log = pino({ mixin: traceLogFields }, sink);
    const span = tracing()!.startSpan("work");
    context.with(contextWith(span), () => log.info("inside"));
    span.end();
    log.info("outside");
    assert.equal(lines.length, 2);
    assert.equal(lines[0]!.trace_id, span.spanContext().traceId);
    assert.equal(lines[0]!.span_id, span.spanContext().spanId);
    assert.equal(lines[1]!.trace_id, undefined, "no trace id outside a span");
    // createLogger installs the same mixin.
    assert.equal(typeof createLogger("x", "silent").info, "function");
  });
});

describe("metrics", () => {
  it("the Prometheus text has the gateway gauges and counters, backend latency and errors", async () => {
    const stop = observeGateway({
      gatewayId: "gw-test",
      stats: () => ({ connections: 3, framesIn: 10, framesOut: 12, sendsIn: 7, framesDelivered: 5 }),
    });
    try {
      await backendCall("cassandra", statementOperation("SELECT seq FROM ks.messages WHERE x = ?"), async () => 1);
      await backendCall("postgresql", statementOperation("INSERT INTO accounts (a) VALUES ($1)"), async () => {
        throw new Error("down");
      }).catch(() => {});
      const text = (await metricsText()) ?? "";
      assert.match(text, /parley_gateway_connections\{parley_gateway_id="gw-test"\} 3/);
      assert.match(text, /parley_gateway_messages_received_total\{parley_gateway_id="gw-test"\} 7/);
      assert.match(text, /parley_gateway_messages_delivered_total\{parley_gateway_id="gw-test"\} 5/);
      assert.match(text, /parley_backend_duration_ms_count\{db_system_name="cassandra",db_operation_name="SELECT messages"\} 1/);
      assert.match(text, /parley_errors_total\{parley_error_source="backend",parley_error_code="postgresql"\} 1/);
      const route = await metricsRoute();
      assert.equal(route.status, 200);
      assert.match(route.contentType, /^text\/plain; version=0\.0\.4/);
    } finally {
      stop();
    }
  });
});

describe("batch sizes", () => {
  it("every batched call records its size under its name (parley_batch_size)", async () => {
    await tracedBatch("metric test batch", [{}, {}, {}], async () => 1);
    await tracedBatch("metric test batch", [{}], async () => 1);
    const text = (await metricsText()) ?? "";
    assert.match(text, /parley_batch_size_count\{parley_batch="metric test batch"\} 2/);
    assert.match(text, /parley_batch_size_sum\{parley_batch="metric test batch"\} 4/);
    assert.match(text, /parley_batch_size_bucket\{parley_batch="metric test batch",le="1"\} 1/);
    assert.match(text, /parley_batch_size_bucket\{parley_batch="metric test batch",le="4"\} 2/);
  });
});

describe("OTLP collector", () => {
  it("decodes what the OTLP/HTTP protobuf exporter sends: ids, parents, names, kinds, attributes, links, status", async () => {
    const collector = await startOtlpCollector();
    const otlp = new OTLPTraceExporter({ url: collector.tracesUrl });
    try {
      const t = tracing()!;
      const root = startSpan(t, "send", Kind.SERVER, undefined, { "parley.conversation_id": "c1", n: 3, ok: true });
      const child = startSpan(t, "route", Kind.CONSUMER, contextWith(root));
      const linked = t.startSpan("batch", { links: [{ context: child.spanContext() }] }, contextWith(root));
      child.end();
      linked.end();
      root.setStatus({ code: 2, message: "boom" });
      root.end();
      const sent = spans();
      await new Promise<void>((resolve, reject) =>
        otlp.export(sent, (r) => (r.code === 0 ? resolve() : reject(r.error ?? new Error("export failed")))),
      );
      assert.equal(collector.spans.length, 3);
      for (const s of sent) {
        const got = collector.spans.find((c) => c.spanId === s.spanContext().spanId);
        assert.ok(got, `span ${s.name} received`);
        assert.equal(got.traceId, s.spanContext().traceId);
        assert.equal(got.parentSpanId, s.parentSpanContext?.spanId ?? "");
        assert.equal(got.name, s.name);
        assert.equal(got.service, "parley-test");
      }
      const send = collector.spans.find((c) => c.name === "send")!;
      assert.equal(send.kind, 2, "SERVER");
      assert.deepEqual(send.attributes, { "parley.conversation_id": "c1", n: 3, ok: true });
      assert.equal(send.statusCode, 2);
      assert.equal(send.statusMessage, "boom");
      assert.ok(send.endNs >= send.startNs, "times decoded");
      const batch = collector.spans.find((c) => c.name === "batch")!;
      assert.deepEqual(batch.links, [{ traceId: child.spanContext().traceId, spanId: child.spanContext().spanId }]);
    } finally {
      await otlp.shutdown();
      await collector.close();
    }
  });
});
