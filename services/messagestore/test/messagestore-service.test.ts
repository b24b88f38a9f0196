import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { MessageStoreService } from "../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { randomUuid } from "../../../lib/ids.js";
import { createLogger } from "../../../lib/logger.js";
import { createClient, inProcess, type Client } from "../../../lib/rpc.js";
import { openPglite } from "../../../lib/sql-pglite.js";
import type { Sql } from "../../../lib/sql.js";
import { loadConfig } from "../src/config.js";
import { MessageStoreContext } from "../src/context.js";
import { SeqConflictError } from "../src/errors.js";
import type { MessageRepository } from "../src/message-repository.js";
import { messageStoreRoutes } from "../src/routes.js";
import { eventBytes } from "./message-repository.contract.js";

async function rejectsWith(p: Promise<unknown>, code: Code, field?: string) {
  await assert.rejects(p, (e: unknown) => {
    const err = ConnectError.from(e);
    assert.equal(err.code, code, err.message);
    if (field) assert.match(err.rawMessage, new RegExp(`^${field.replace(/[[\]]/g, "\\$&")}:`));
    return true;
  });
}

const silent = createLogger("messagestore", "silent");
const NOW = 1_750_000_000_000;

function appendRequest(conversationId = randomUuid(), body = "hello") {
  return { conversationId, senderId: randomUuid(), senderDeviceId: randomUuid(), clientMsgId: randomUuid(), body };
}

/** An event message as the router appends it: no body, no sender device. */
function eventRequest(conversationId = randomUuid(), event = eventBytes(40)) {
  return { ...appendRequest(conversationId, ""), senderDeviceId: "", event };
}

describe("MessageStoreService", () => {
  let sql: Sql;
  let ctx: MessageStoreContext;
  let client: Client<typeof MessageStoreService>;
  let now = NOW;
  before(async () => {
    sql = await openPglite();
    ctx = await MessageStoreContext.fromConfig(loadConfig({}), { sql, logger: silent, clock: () => now });
    client = createClient(MessageStoreService, inProcess(messageStoreRoutes(ctx)));
  });
  after(async () => {
    await ctx.close();
    await sql.close();
  });

  it("appends with the next seq and answers a resend as a duplicate", async () => {
    const req = appendRequest();
    const first = await client.append(req);
    assert.equal(first.duplicate, false);
    const m = first.message!;
    assert.equal(m.seq, 1n);
    assert.equal(m.conversationId, req.conversationId);
    assert.equal(m.senderId, req.senderId);
    assert.equal(m.senderDeviceId, req.senderDeviceId);
    assert.equal(m.clientMsgId, req.clientMsgId);
    assert.equal(m.body, req.body);
    assert.equal(timestampMs(m.sentAt!), NOW);
    const again = await client.append(req);
    assert.equal(again.duplicate, true);
    assert.deepEqual(again.message, m);
    const second = await client.append({ ...appendRequest(req.conversationId), body: "second" });
    assert.equal(second.message!.seq, 2n);
  });

  it("AppendBatch sequences each conversation's appends in the order given, answers each, dedupes resends", async () => {
    const [a, b] = [randomUuid(), randomUuid()];
    const appends = Array.from({ length: 30 }, (_, i) => appendRequest(i % 3 ? a : b, `m${i}`));
    const resend = { ...appends[4]! };
    const { results } = await client.appendBatch({ appends: [...appends, appendRequest("not-a-uuid"), resend, appendRequest(a, "")] });
    assert.equal(results.length, 33);
    const ok = results.slice(0, 30).map((r) => {
      assert.equal(r.result.case, "ok");
      return r.result.value as { message: { conversationId: string; seq: bigint; body: string } };
    });
    const seqsOf = (c: string) => ok.filter((r) => r.message.conversationId === c).map((r) => Number(r.message.seq));
    assert.deepEqual(seqsOf(a), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.deepEqual(seqsOf(b), Array.from({ length: 10 }, (_, i) => i + 1));
    assert.deepEqual(results[30]!.result.case === "error" && results[30]!.result.value.code, Code.InvalidArgument);
    const dup = results[31]!.result;
    assert.ok(dup.case === "ok" && dup.value.duplicate && dup.value.message!.seq === ok[4]!.message.seq);
    assert.deepEqual(results[32]!.result.case === "error" && results[32]!.result.value.code, Code.InvalidArgument);
    const history = await client.getHistory({ conversationId: a, limit: 200 });
    assert.deepEqual(history.messages.map((m) => m.body).reverse(), appends.filter((x) => x.conversationId === a).map((x) => x.body));
    await rejectsWith(client.appendBatch({ appends: Array.from({ length: 1025 }, () => appendRequest()) }), Code.InvalidArgument);
  });

  it("returns history newest first, paged by before_seq, 50 by default", async () => {
    const c = randomUuid();
    const sent = await Promise.all(Array.from({ length: 60 }, (_, i) => client.append(appendRequest(c, `m${i}`))));
    assert.deepEqual(
      sent.map((r) => Number(r.message!.seq)).sort((a, b) => a - b),
      Array.from({ length: 60 }, (_, i) => i + 1),
    );
    const page1 = await client.getHistory({ conversationId: c });
    assert.deepEqual(
      page1.messages.map((m) => Number(m.seq)),
      Array.from({ length: 50 }, (_, i) => 60 - i),
    );
    const page2 = await client.getHistory({ conversationId: c, beforeSeq: 11n, limit: 200 });
    assert.deepEqual(
      page2.messages.map((m) => Number(m.seq)),
      Array.from({ length: 10 }, (_, i) => 10 - i),
    );
    const bySeq = new Map(sent.map((r) => [r.message!.seq, r.message!]));
    for (const m of page2.messages) assert.deepEqual(m, bySeq.get(m.seq));
    assert.deepEqual((await client.getHistory({ conversationId: randomUuid() })).messages, []);
  });

  it("returns a range oldest first, paged by after_seq, 200 by default", async () => {
    const c = randomUuid();
    const appended = [];
    for (let i = 0; i < 205; i++) appended.push((await client.append({ ...appendRequest(c, `m${i + 1}`) })).message!);
    const page1 = await client.getRange({ conversationId: c });
    assert.equal(page1.messages.length, 200);
    assert.deepEqual(page1.messages, appended.slice(0, 200));
    const page2 = await client.getRange({ conversationId: c, afterSeq: 200n, limit: 1000 });
    assert.deepEqual(page2.messages.map((m) => m.seq), [201n, 202n, 203n, 204n, 205n]);
    assert.deepEqual((await client.getRange({ conversationId: c, afterSeq: 203n, limit: 1 })).messages.map((m) => m.body), ["m204"]);
    assert.deepEqual((await client.getRange({ conversationId: c, afterSeq: 205n })).messages, []);
    assert.deepEqual((await client.getRange({ conversationId: randomUuid() })).messages, []);
  });

  it("returns one head per requested conversation, in request order", async () => {
    const [a, b, empty] = [randomUuid(), randomUuid(), randomUuid()];
    now = NOW + 1000;
    await client.append(appendRequest(a));
    now = NOW + 2000;
    await client.append(appendRequest(a));
    now = NOW + 3000;
    await client.append(appendRequest(b));
    now = NOW;
    const { heads } = await client.getHeads({ conversationIds: [b, empty, a, b] });
    assert.deepEqual(
      heads.map((h) => [h.conversationId, Number(h.lastSeq), h.lastSentAt ? timestampMs(h.lastSentAt) : undefined]),
      [
        [b, 1, NOW + 3000],
        [empty, 0, undefined],
        [a, 2, NOW + 2000],
      ],
    );
    assert.deepEqual((await client.getHeads({ conversationIds: [] })).heads, []);
  });

  it("stores event messages and returns the event from append, resends, history and AppendBatch", async () => {
    const c = randomUuid();
    const req = eventRequest(c);
    const first = await client.append(req);
    assert.equal(first.duplicate, false);
    const m = first.message!;
    assert.deepEqual([m.seq, m.body, m.senderDeviceId, m.senderId], [1n, "", "", req.senderId]);
    assert.deepEqual(m.event, req.event);
    // A resend answers with the stored event, even if the resend carries another one.
    const again = await client.append({ ...req, event: eventBytes(5) });
    assert.equal(again.duplicate, true);
    assert.deepEqual(again.message, m);
    // An event may carry a body and a device too; a chat message has no event.
    const withDevice = { ...appendRequest(c, "Ada joined"), event: eventBytes(64 * 1024) };
    const chat = appendRequest(c, "hi");
    const batch = [eventRequest(c), withDevice, chat, eventRequest(randomUuid())];
    const { results } = await client.appendBatch({ appends: [...batch, { ...batch[0]!, event: eventBytes(1) }] });
    const ok = results.map((r) => {
      assert.equal(r.result.case, "ok");
      return r.result.value as { duplicate: boolean; message: { seq: bigint; event: Uint8Array; body: string } };
    });
    assert.deepEqual(ok.map((r) => Number(r.message.seq)), [2, 3, 4, 1, 2]);
    batch.forEach((b, i) => assert.deepEqual(ok[i]!.message.event, "event" in b ? b.event : new Uint8Array(0)));
    assert.equal(ok[1]!.message.body, "Ada joined");
    assert.ok(ok[4]!.duplicate);
    assert.deepEqual(ok[4]!.message, ok[0]!.message);
    const history = await client.getHistory({ conversationId: c });
    assert.deepEqual(history.messages, [ok[2]!.message, ok[1]!.message, ok[0]!.message, m]);
  });

  it("returns each head's last message when asked (events included)", async () => {
    const [a, b, empty] = [randomUuid(), randomUuid(), randomUuid()];
    await client.append(appendRequest(a, "first"));
    const lastA = (await client.append(appendRequest(a, "second"))).message!;
    await client.append(appendRequest(b, "hello"));
    const lastB = (await client.append(eventRequest(b))).message!;
    const { heads } = await client.getHeads({ conversationIds: [b, empty, a], includeLastMessage: true });
    assert.deepEqual(
      heads.map((h) => [h.conversationId, Number(h.lastSeq), h.lastMessage]),
      [
        [b, 2, lastB],
        [empty, 0, undefined],
        [a, 2, lastA],
      ],
    );
    assert.equal(timestampMs(heads[2]!.lastSentAt!), timestampMs(lastA.sentAt!));
    const without = await client.getHeads({ conversationIds: [a, b] });
    assert.deepEqual(without.heads.map((h) => [Number(h.lastSeq), h.lastMessage]), [[2, undefined], [2, undefined]]);
  });

  it("accepts a body of 4,000 characters that are not all ASCII", async () => {
    const body = "😀".repeat(4000); // 8,000 UTF-16 units, 4,000 characters
    const r = await client.append(appendRequest(randomUuid(), body));
    assert.equal(r.message!.body, body);
  });

  describe("rejects bad arguments with InvalidArgument", () => {
    for (const field of ["conversationId", "senderId", "senderDeviceId", "clientMsgId"] as const) {
      const wire = field.replace(/[A-Z]/g, (ch) => `_${ch.toLowerCase()}`);
      it(`Append: ${wire} not a UUID`, async () => {
        await rejectsWith(client.append({ ...appendRequest(), [field]: "not-a-uuid" }), Code.InvalidArgument, wire);
        await rejectsWith(client.append({ ...appendRequest(), [field]: "" }), Code.InvalidArgument, wire);
        await rejectsWith(client.append({ ...appendRequest(), [field]: randomUuid().toUpperCase() }), Code.InvalidArgument, wire);
      });
    }
    it("Append: empty body", async () => {
      await rejectsWith(client.append(appendRequest(randomUuid(), "")), Code.InvalidArgument, "body");
    });
    it("Append: neither body nor event", async () => {
      await rejectsWith(client.append({ ...appendRequest(), body: "", event: new Uint8Array(0) }), Code.InvalidArgument, "body");
      // No event: a sender device is required again.
      await rejectsWith(client.append({ ...eventRequest(), event: new Uint8Array(0), body: "hi" }), Code.InvalidArgument, "sender_device_id");
    });
    it("Append: event over 64 KiB", async () => {
      await rejectsWith(client.append(eventRequest(randomUuid(), eventBytes(64 * 1024 + 1))), Code.InvalidArgument, "event");
      const r = await client.append(eventRequest(randomUuid(), eventBytes(64 * 1024)));
      assert.equal(r.message!.event.length, 64 * 1024);
    });
    it("Append: an event with a body over 4,000 characters, or a device id that is not a UUID", async () => {
      await rejectsWith(client.append({ ...eventRequest(), body: "x".repeat(4001) }), Code.InvalidArgument, "body");
      await rejectsWith(client.append({ ...eventRequest(), senderDeviceId: "not-a-uuid" }), Code.InvalidArgument, "sender_device_id");
      await rejectsWith(client.append({ ...eventRequest(), senderId: "" }), Code.InvalidArgument, "sender_id");
    });
    it("Append: body over 4,000 characters", async () => {
      await rejectsWith(client.append(appendRequest(randomUuid(), "x".repeat(4001))), Code.InvalidArgument, "body");
      await rejectsWith(client.append(appendRequest(randomUuid(), "😀".repeat(4001))), Code.InvalidArgument, "body");
    });
    it("GetHistory: conversation_id not a UUID", async () => {
      await rejectsWith(client.getHistory({ conversationId: "nope" }), Code.InvalidArgument, "conversation_id");
    });
    it("GetHistory: limit above 200", async () => {
      await rejectsWith(client.getHistory({ conversationId: randomUuid(), limit: 201 }), Code.InvalidArgument, "limit");
    });
    it("GetHistory: before_seq beyond 2^53", async () => {
      await rejectsWith(client.getHistory({ conversationId: randomUuid(), beforeSeq: 1n << 60n }), Code.InvalidArgument, "before_seq");
    });
    it("GetRange: conversation_id not a UUID, limit above 1,000, after_seq beyond 2^53", async () => {
      await rejectsWith(client.getRange({ conversationId: "nope" }), Code.InvalidArgument, "conversation_id");
      await rejectsWith(client.getRange({ conversationId: randomUuid(), limit: 1001 }), Code.InvalidArgument, "limit");
      await rejectsWith(client.getRange({ conversationId: randomUuid(), afterSeq: 1n << 60n }), Code.InvalidArgument, "after_seq");
      assert.deepEqual((await client.getRange({ conversationId: randomUuid(), limit: 1000 })).messages, []);
    });
    it("GetHeads: more than 500 ids", async () => {
      const ids = Array.from({ length: 501 }, () => randomUuid());
      await rejectsWith(client.getHeads({ conversationIds: ids }), Code.InvalidArgument, "conversation_ids");
    });
    it("GetHeads: an id that is not a UUID", async () => {
      await rejectsWith(client.getHeads({ conversationIds: [randomUuid(), "x"] }), Code.InvalidArgument, "conversation_ids[1]");
    });
  });

  it("accepts exactly 500 ids in GetHeads and 200 as a history limit", async () => {
    const ids = Array.from({ length: 500 }, () => randomUuid());
    assert.equal((await client.getHeads({ conversationIds: ids })).heads.length, 500);
    assert.deepEqual((await client.getHistory({ conversationId: randomUuid(), limit: 200 })).messages, []);
  });
});

describe("MessageStoreService error codes", () => {
  const broken = (err: () => Error): MessageRepository => ({
    lastSeq: async () => 0,
    findByClientMsgIds: async () => [],
    insert: async () => {
      throw err();
    },
    history: async () => {
      throw err();
    },
    range: async () => {
      throw err();
    },
    heads: async () => {
      throw err();
    },
  });

  async function serve(repository: MessageRepository) {
    const ctx = await MessageStoreContext.fromConfig(loadConfig({}), { repository, logger: silent, sequencer: { maxAttempts: 3 } });
    return { ctx, client: createClient(MessageStoreService, inProcess(messageStoreRoutes(ctx))) };
  }

  it("maps a failing repository to Unavailable", async () => {
    const { ctx, client } = await serve(broken(() => new Error("connection refused")));
    await rejectsWith(client.append(appendRequest()), Code.Unavailable);
    await rejectsWith(client.getHistory({ conversationId: randomUuid() }), Code.Unavailable);
    await rejectsWith(client.getRange({ conversationId: randomUuid() }), Code.Unavailable);
    await rejectsWith(client.getHeads({ conversationIds: [randomUuid()] }), Code.Unavailable);
    await ctx.close();
  });

  it("maps endless write races to Aborted, and a closing store to Unavailable", async () => {
    const { ctx, client } = await serve(broken(() => new SeqConflictError()));
    await rejectsWith(client.append(appendRequest()), Code.Aborted);
    await ctx.close();
    await rejectsWith(client.append(appendRequest()), Code.Unavailable);
  });
});

describe("loadConfig", () => {
  it("has defaults and checks the port", () => {
    assert.deepEqual(loadConfig({}), {
      host: "127.0.0.1",
      port: 7103,
      dataDir: join("data", "messagestore"),
      postgresUrl: undefined,
      cassandra: undefined,
      logLevel: "info",
    });
    const cfg = loadConfig({ PARLEY_MESSAGESTORE_PORT: "0", PARLEY_DATA_DIR: "/var/parley", PARLEY_LOG_LEVEL: "debug" });
    assert.equal(cfg.port, 0);
    assert.equal(cfg.dataDir, join("/var/parley", "messagestore"));
    assert.equal(cfg.logLevel, "debug");
    assert.throws(() => loadConfig({ PARLEY_MESSAGESTORE_PORT: "70000" }));
    assert.throws(() => loadConfig({ PARLEY_MESSAGESTORE_PORT: "abc" }));
  });
});
