/**
 * One message is one trace, across processes and batches (docs/observability.md): on the
 * cluster (real backends, 2 gateways, 2 routers, 2 message stores), every process exports
 * its spans over OTLP/HTTP to a collector this test runs. A message sent on gateway 1 to a
 * device on gateway 2 yields ONE trace: gateway `send` → router `route` → `store` →
 * message store `append` (its Cassandra calls under it) → router `fan-out` → gateway 2
 * `deliver`. A group message gets one `deliver` span per gateway envelope, not one per
 * recipient. Deadlines, no sleeps.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { realClusterBackends } from "../../../lib/testing/backends.js";
import { startOtlpCollector, type CollectedSpan, type OtlpCollector } from "../../../lib/telemetry/otlp-collector.js";
import { startCluster, type Cluster } from "../../cluster/cluster.js";
import { api, FrameClient, ROOT } from "../harness.js";
import { CHEAP_PASSWORD_HASHING, createGroup, signUpMany, type Account } from "../population.js";

const backends = realClusterBackends();
const wsUrl = (publicUrl: string) => `${publicUrl.replace(/^http/, "ws")}/ws`;

/** OTLP span kinds. */
const SERVER = 2;
const CONSUMER = 5;
const PRODUCER = 4;

/** Resolves when `check` holds over the collected spans (re-checked after every export), or fails at the deadline. */
function untilSpans<T>(collector: OtlpCollector, what: string, check: (spans: CollectedSpan[]) => T | undefined, timeoutMs = 20_000): Promise<T> {
  const first = check(collector.spans);
  if (first !== undefined) return Promise.resolve(first);
  return new Promise<T>((resolve, reject) => {
    const stop = collector.onExport(() => {
      const v = check(collector.spans);
      if (v === undefined) return;
      stop();
      clearTimeout(timer);
      resolve(v);
    });
    const timer = setTimeout(() => {
      stop();
      const names = [...new Set(collector.spans.map((s) => `${s.service}:${s.name}`))].join(", ");
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; spans seen: ${names}`));
    }, timeoutMs);
  });
}

/** Whether `span` descends from `ancestor` within `trace`. */
function descends(trace: CollectedSpan[], span: CollectedSpan, ancestor: CollectedSpan): boolean {
  const byId = new Map(trace.map((s) => [s.spanId, s]));
  for (let s: CollectedSpan | undefined = span; s; s = byId.get(s.parentSpanId)) if (s.parentSpanId === ancestor.spanId) return true;
  return false;
}

/** The trace as an indented tree (`PARLEY_TRACE_PRINT=1` prints the 1:1 message's trace). */
function tree(trace: CollectedSpan[]): string {
  const children = new Map<string, CollectedSpan[]>();
  const ids = new Set(trace.map((s) => s.spanId));
  for (const s of trace) {
    const p = ids.has(s.parentSpanId) ? s.parentSpanId : "";
    children.set(p, [...(children.get(p) ?? []), s]);
  }
  const lines: string[] = [];
  const walk = (parent: string, depth: number) => {
    for (const s of (children.get(parent) ?? []).sort((a, b) => (a.startNs < b.startNs ? -1 : 1))) {
      const ms = Number(s.endNs - s.startNs) / 1e6;
      const links = s.links.length > 0 ? ` links=${s.links.length}` : "";
      lines.push(`${"  ".repeat(depth)}${s.name} [${s.instance || s.service}] ${ms.toFixed(2)} ms${links}`);
      walk(s.spanId, depth + 1);
    }
  };
  walk("", 0);
  return lines.join("\n");
}

function the(trace: CollectedSpan[], what: string, match: (s: CollectedSpan) => boolean): CollectedSpan {
  const found = trace.filter(match);
  assert.equal(found.length, 1, `exactly one ${what} in the trace; got ${found.length} (${trace.map((s) => `${s.instance}:${s.name}`).join(", ")})`);
  return found[0]!;
}

if (backends) {
  describe("tracing on the cluster (real backends, 2 gateways, OTLP to the test's collector)", () => {
    let collector: OtlpCollector;
    let cluster: Cluster;
    let g1: string;
    let g2: string;

    before(async () => {
      collector = await startOtlpCollector();
      cluster = await startCluster({
        backends,
        extraEnv: {
          ...CHEAP_PASSWORD_HASHING,
          PARLEY_TRACING: "otlp",
          OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint,
          // Export ended spans every 100 ms, so the test waits little.
          OTEL_BSP_SCHEDULE_DELAY: "100",
        },
        // Telemetry starts before each entry point (lib/telemetry/register.ts).
        nodeArgs: ["--import", "tsx", "--import", `${ROOT}lib/telemetry/register.ts`],
      });
      const gateways = cluster.discovery.list("gateway");
      g1 = gateways.find((g) => g.id === "gateway-1")!.publicUrl!;
      g2 = gateways.find((g) => g.id === "gateway-2")!.publicUrl!;
    });
    after(async () => {
      await cluster?.stop();
      await collector?.close();
    });

    it("a 1:1 message from gateway 1 to gateway 2 is one trace: send → route → store → append (Cassandra under it) → fan-out → deliver", async () => {
      const [alice, bob] = await signUpMany(g1, 2, "trace");
      const { conversation } = await api(g1, alice!.token).chat.openDirectConversation({ peer: { case: "peerUserId", value: bob!.userId } });
      const conversationId = conversation!.conversationId;
      const sender = await FrameClient.connect(wsUrl(g1), alice!.token);
      const receiver = await FrameClient.connect(wsUrl(g2), bob!.token);
      try {
        // The client traces too: its send frame carries its span's context, which the message's trace continues.
        const traceId = randomBytes(16).toString("hex");
        const clientSpanId = randomBytes(8).toString("hex");
        sender.send({
          ref: 1,
          kind: {
            case: "send",
            value: { clientMsgId: randomUUID(), conversationId, body: "traced hello", traceparent: `00-${traceId}-${clientSpanId}-01` },
          },
        });
        const ack = await sender.waitFor("ack", (f) => f.ref === 1 && (f.kind.case === "ack" || f.kind.case === "error"));
        assert.equal(ack.kind.case, "ack", "the send is acknowledged");
        await receiver.waitFor("the message on gateway 2", (f) => f.kind.case === "message" && f.kind.value.body === "traced hello");

        const trace = await untilSpans(collector, "the message's deliver span on gateway 2", (spans) => {
          const mine = spans.filter((s) => s.traceId === traceId);
          // Complete once the last spans to end on each side are in: the send (acked), the
          // deliver on gateway 2 and the router's Deliver batch (ended after the call).
          const done = ["send", "deliver batch"].every((n) => mine.some((s) => s.name === n)) && mine.some((s) => s.name === "deliver" && s.instance === "gateway-2");
          return done ? mine : undefined;
        });

        if (process.env.PARLEY_TRACE_PRINT === "1") console.error(tree(trace));
        const send = the(trace, "send span", (s) => s.name === "send");
        assert.equal(send.service, "parley-gateway");
        assert.equal(send.instance, "gateway-1");
        assert.equal(send.kind, SERVER);
        assert.equal(send.parentSpanId, clientSpanId, "send continues the client's span");
        assert.equal(send.attributes["parley.conversation_id"], conversationId);

        const route = the(trace, "route span", (s) => s.name === "route");
        assert.equal(route.service, "parley-router");
        assert.equal(route.kind, CONSUMER);
        assert.equal(route.parentSpanId, send.spanId, "route continues send (SendBatch item)");

        const store = the(trace, "store span", (s) => s.name === "store");
        assert.equal(store.service, "parley-router");
        assert.equal(store.parentSpanId, route.spanId);

        const append = the(trace, "append span", (s) => s.name === "append");
        assert.equal(append.service, "parley-messagestore");
        assert.equal(append.parentSpanId, store.spanId, "append continues store (AppendBatch item)");
        assert.equal(append.attributes["parley.seq"], 1);

        const cassandra = trace.filter((s) => s.attributes["db.system.name"] === "cassandra");
        assert.ok(cassandra.length >= 2, `Cassandra spans in the trace (got ${cassandra.length})`);
        for (const c of cassandra) {
          assert.equal(c.service, "parley-messagestore");
          assert.ok(descends(trace, c, append), `Cassandra span ${c.name} is under the append span`);
        }
        const operations = cassandra.map((c) => c.name);
        assert.ok(
          operations.some((o) => /conversation_heads/.test(o)),
          `the seq reservation on conversation_heads is traced (${operations.join(", ")})`,
        );
        assert.ok(
          operations.includes("BATCH messages"),
          `the message rows' batch is traced (${operations.join(", ")})`,
        );

        const fanOut = the(trace, "fan-out span", (s) => s.name === "fan-out");
        assert.equal(fanOut.service, "parley-router");
        assert.equal(fanOut.kind, PRODUCER);
        assert.equal(fanOut.parentSpanId, route.spanId);
        assert.equal(fanOut.instance, route.instance, "fanned out by the router that routed it");
        const lookup = trace.find((s) => s.attributes["db.system.name"] === "redis" && s.name === "registry lookup");
        assert.ok(lookup, "the registry lookup (Redis) is in the trace");
        assert.ok(descends(trace, lookup, fanOut), "the registry lookup is under the fan-out span");

        const deliver = the(trace, "deliver span", (s) => s.name === "deliver");
        assert.equal(deliver.service, "parley-gateway");
        assert.equal(deliver.instance, "gateway-2");
        assert.equal(deliver.kind, CONSUMER);
        assert.equal(deliver.parentSpanId, fanOut.spanId, "deliver continues fan-out (Deliver envelope)");

        // The batch RPCs are in the trace too (the message was alone in its batches): the
        // Deliver call under the router's deliver batch, served on gateway 2.
        const deliverBatch = the(trace, "deliver batch span", (s) => s.name === "deliver batch");
        assert.equal(deliverBatch.parentSpanId, fanOut.spanId, "the Deliver batch under its first message's fan-out");
        const deliverRpc = trace.filter((s) => s.name === "parley.gateway.v1.DeliveryService/Deliver");
        const deliverServed = deliverRpc.find((s) => s.instance === "gateway-2" && s.kind === SERVER);
        assert.ok(deliverServed, "Deliver served on gateway 2 in the trace");
        assert.ok(descends(trace, deliverServed, deliverBatch), "the served Deliver continues the router's call (metadata)");
        const appendRpc = trace.filter((s) => s.name === "parley.messagestore.v1.MessageStoreService/AppendBatch");
        assert.ok(appendRpc.some((s) => s.service === "parley-messagestore" && s.kind === SERVER), "AppendBatch served in the trace");

        // Everything of the message is in this one trace: no span of it elsewhere.
        const elsewhere = collector.spans.filter(
          (s) => s.traceId !== traceId && ["send", "route", "store", "append", "fan-out", "deliver"].includes(s.name) && s.attributes["parley.conversation_id"] === conversationId,
        );
        assert.deepEqual(
          elsewhere.map((s) => `${s.instance}:${s.name}`),
          [],
          "no span of the message in another trace",
        );
      } finally {
        await sender.close();
        await receiver.close();
      }
    });

    it("a group message: a new trace per message, one deliver span per gateway envelope (not per recipient)", async () => {
      const [owner, m1, m2, m3] = await signUpMany(g1, 4, "tgroup");
      const conversationId = await createGroup(g1, owner!, [m1!, m2!, m3!] as Account[], "traced group");
      // The sender and one member on gateway 1, two members on gateway 2.
      const sender = await FrameClient.connect(wsUrl(g1), owner!.token);
      const receivers = [
        await FrameClient.connect(wsUrl(g1), m1!.token),
        await FrameClient.connect(wsUrl(g2), m2!.token),
        await FrameClient.connect(wsUrl(g2), m3!.token),
      ];
      try {
        sender.send({ ref: 7, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: "to the group" } } });
        const ack = await sender.waitFor("ack", (f) => f.ref === 7 && (f.kind.case === "ack" || f.kind.case === "error"));
        assert.equal(ack.kind.case, "ack", "the send is acknowledged");
        const seq = ack.kind.case === "ack" ? Number(ack.kind.value.seq) : 0;
        await Promise.all(receivers.map((r) => r.waitFor("the group message", (f) => f.kind.case === "message" && f.kind.value.body === "to the group")));

        const send = await untilSpans(collector, "the group message's send span", (spans) =>
          spans.find((s) => s.name === "send" && s.attributes["parley.conversation_id"] === conversationId && s.attributes["parley.seq"] === seq),
        );
        assert.equal(send.parentSpanId, "", "without a client trace context, the message starts a new trace");
        const delivers = await untilSpans(collector, "a deliver span on both gateways", (spans) => {
          const d = spans.filter((s) => s.traceId === send.traceId && s.name === "deliver");
          return new Set(d.map((s) => s.instance)).size === 2 ? d : undefined;
        });
        assert.deepEqual(
          delivers.map((d) => d.instance).sort(),
          ["gateway-1", "gateway-2"],
          "one deliver span per gateway: 3 recipients, 2 envelopes",
        );
        for (const d of delivers) assert.equal(d.attributes["parley.delivery"], "topic");
      } finally {
        await sender.close();
        for (const r of receivers) await r.close();
      }
    });
  });
}
