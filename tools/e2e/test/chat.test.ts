import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { Code } from "@connectrpc/connect";
import { ErrorCode, type ServerFrame } from "../../../gen/parley/client/v1/frames_pb.js";
import { ConversationKind } from "../../../gen/parley/client/v1/types_pb.js";
import { GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import { grpcJsUnary } from "../../../lib/testing/grpc-js.js";
import { api, FrameClient, ROOT, startPlatformProcess, tempDir, type RunningPlatform } from "../harness.js";
import { rejectsWith } from "../../../lib/testing/connect.js";

const PASSWORD = "correct horse battery";
const N = 100;

function messagesOf(c: FrameClient, conversationId: string) {
  return c.frames.flatMap((f) => (f.kind.case === "message" && f.kind.value.conversationId === conversationId ? [f.kind.value] : []));
}

function errorOf(f: ServerFrame) {
  assert.equal(f.kind.case, "error");
  return f.kind.value as Extract<ServerFrame["kind"], { case: "error" }>["value"];
}

describe("embedded platform, end to end (as started by npm start)", () => {
  const data = tempDir("parley-e2e-");
  let p: RunningPlatform;
  let alice: { id: string; token: string };
  let bob: { id: string; token: string };
  let conversationId: string;

  before(async () => {
    p = await startPlatformProcess(data.path);
  });
  after(async () => {
    await p?.stop();
    data.remove();
  });

  it("signs two users up over Connect (JSON and binary) and opens the same 1:1 from both sides", async () => {
    const a = await api(p.publicUrl, undefined, false).auth.signUp({ username: "alice", password: PASSWORD, displayName: "Alice" });
    const b = await api(p.publicUrl).auth.signUp({ username: "bob", password: PASSWORD });
    alice = { id: a.user!.userId, token: a.tokens!.accessToken };
    bob = { id: b.user!.userId, token: b.tokens!.accessToken };
    const me = await api(p.publicUrl, alice.token).auth.me({});
    assert.equal(me.user?.username, "alice");
    assert.equal(me.user?.displayName, "Alice");
    const [fromA, fromB] = await Promise.all([
      api(p.publicUrl, alice.token).chat.openDirectConversation({ peer: { case: "peerUsername", value: "bob" } }),
      api(p.publicUrl, bob.token, false).chat.openDirectConversation({ peer: { case: "peerUserId", value: alice.id } }),
    ]);
    conversationId = fromA.conversation!.conversationId;
    assert.equal(fromB.conversation?.conversationId, conversationId);
    assert.equal(fromA.conversation?.kind, ConversationKind.DIRECT);
    assert.deepEqual([...fromA.conversation!.memberIds].sort(), [alice.id, bob.id].sort());
  });

  it(`exchanges ${N} messages each way concurrently: live, in order, no gap, no duplicate; history complete`, async () => {
    const a = await FrameClient.connect(p.wsUrl, alice.token, { encoding: "binary" });
    const b = await FrameClient.connect(p.wsUrl, bob.token, { encoding: "json", tokenIn: "subprotocol" });
    try {
      for (let i = 0; i < N; i++) {
        a.send({ ref: i + 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: `a→b ${i}` } } });
        b.send({ ref: i + 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: `b→a ${i}` } } });
      }
      const acks = (c: FrameClient) => c.frames.filter((f) => f.kind.case === "ack").length;
      await a.signal.until("alice's acks", () => acks(a) === N, 20_000);
      await b.signal.until("bob's acks", () => acks(b) === N, 20_000);
      await a.signal.until("bob's messages at alice", () => messagesOf(a, conversationId).length === N, 20_000);
      await b.signal.until("alice's messages at bob", () => messagesOf(b, conversationId).length === N, 20_000);
      assert.equal(a.frames.filter((f) => f.kind.case === "error").length, 0);
      assert.equal(b.frames.filter((f) => f.kind.case === "error").length, 0);

      // Each side received the other's messages in increasing seq, each exactly once, in send order.
      for (const [rx, prefix] of [
        [a, "b→a"],
        [b, "a→b"],
      ] as const) {
        const got = messagesOf(rx, conversationId);
        const seqs = got.map((m) => Number(m.seq));
        assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "delivered in sequence order");
        assert.equal(new Set(seqs).size, N, "no duplicate");
        assert.deepEqual(
          got.map((m) => m.body),
          Array.from({ length: N }, (_, i) => `${prefix} ${i}`),
        );
        for (const m of got) {
          assert.match(m.messageId, /^[0-9a-f]{8}-[0-9a-f]{4}-7/);
          assert.ok(m.sentAt);
        }
      }
      // All 2N acks together cover seq 1..2N: no gap, no seq given twice.
      const ackSeqs = [...a.frames, ...b.frames].flatMap((f) => (f.kind.case === "ack" ? [Number(f.kind.value.seq)] : []));
      assert.deepEqual(
        ackSeqs.sort((x, y) => x - y),
        Array.from({ length: 2 * N }, (_, i) => i + 1),
      );

      // History: newest first, paginated, complete.
      const chat = api(p.publicUrl, bob.token).chat;
      const all: number[] = [];
      let before = 0n;
      for (;;) {
        const page = await chat.getHistory({ conversationId, beforeSeq: before, limit: 60 });
        all.push(...page.messages.map((m) => Number(m.seq)));
        if (page.nextBeforeSeq === 0n) break;
        before = page.nextBeforeSeq;
      }
      assert.deepEqual(
        all,
        Array.from({ length: 2 * N }, (_, i) => 2 * N - i),
      );
      const list = await chat.listConversations({});
      assert.equal(list.conversations[0]?.conversationId, conversationId);
      assert.equal(list.conversations[0]?.lastSeq, BigInt(2 * N));
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("acknowledges a resent client_msg_id with the same seq and stores it once", async () => {
    const a = await FrameClient.connect(p.wsUrl, alice.token);
    const b = await FrameClient.connect(p.wsUrl, bob.token);
    try {
      const clientMsgId = randomUUID();
      const send = (ref: number) => a.send({ ref, kind: { case: "send", value: { clientMsgId, conversationId, body: "once" } } });
      send(1);
      const first = await a.waitFor("first ack", (f) => f.ref === 1 && f.kind.case === "ack");
      send(2);
      const second = await a.waitFor("second ack", (f) => f.ref === 2);
      assert.equal(second.kind.case, "ack");
      if (first.kind.case !== "ack" || second.kind.case !== "ack") return;
      assert.equal(second.kind.value.seq, first.kind.value.seq);
      assert.equal(second.kind.value.messageId, first.kind.value.messageId);
      assert.equal(second.kind.value.duplicate, true);
      // A later message proves the resend was not delivered again in between.
      a.send({ ref: 3, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: "after" } } });
      await b.waitFor("the later message", (f) => f.kind.case === "message" && f.kind.value.body === "after");
      assert.equal(messagesOf(b, conversationId).filter((m) => m.body === "once").length, 1);
      const history = await api(p.publicUrl, alice.token).chat.getHistory({ conversationId, limit: 5 });
      assert.equal(history.messages.filter((m) => m.clientMsgId === clientMsgId).length, 1);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("delivers to the sender's other devices but not to the sending one", async () => {
    const login = await api(p.publicUrl).auth.logIn({ username: "alice", password: PASSWORD });
    const phone = await FrameClient.connect(p.wsUrl, alice.token);
    const laptop = await FrameClient.connect(p.wsUrl, login.tokens!.accessToken);
    try {
      phone.send({ ref: 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: "from phone" } } });
      await laptop.waitFor("copy on the laptop", (f) => f.kind.case === "message" && f.kind.value.body === "from phone");
      await phone.waitFor("ack", (f) => f.ref === 1 && f.kind.case === "ack");
      phone.send({ ref: 2, kind: { case: "ping", value: { nonce: 9n } } });
      await phone.waitFor("pong", (f) => f.ref === 2 && f.kind.case === "pong");
      assert.equal(messagesOf(phone, conversationId).length, 0);
    } finally {
      await phone.close();
      await laptop.close();
    }
  });

  describe("bad input gets its documented error and the connection survives", () => {
    let a: FrameClient;
    before(async () => {
      a = await FrameClient.connect(p.wsUrl, alice.token);
    });
    after(() => a.close());

    const cases: [string, (ref: number) => void, ErrorCode][] = [
      ["malformed binary frame", () => a.sendRaw(Buffer.from([0xff, 0xff, 0xff])), ErrorCode.MALFORMED_FRAME],
      ["malformed JSON frame", () => a.sendRaw("{not json"), ErrorCode.MALFORMED_FRAME],
      // Field 90 is no frame kind: it decodes, but carries nothing this server knows.
      ["unknown frame kind", () => a.sendRaw(Buffer.from([0xd0, 0x05, 0x01])), ErrorCode.UNKNOWN_FRAME],
      ["frame over max_frame_bytes", () => a.sendRaw(Buffer.alloc(20_000, 0x41).toString()), ErrorCode.FRAME_TOO_LARGE],
    ];
    for (const [name, act, code] of cases) {
      it(name, async () => {
        const before = a.frames.length;
        act(0);
        const f = await a.waitFor(name, (x) => a.frames.indexOf(x) >= before && x.kind.case === "error");
        assert.equal(errorOf(f).code, code);
        assert.equal(errorOf(f).retryable, false);
        a.send({ ref: 77, kind: { case: "ping", value: { nonce: 1n } } });
        await a.waitFor("pong after the error", (x) => a.frames.indexOf(x) >= before && x.kind.case === "pong");
      });
    }

    const sendCases: [string, () => { conversationId: string; body: string; clientMsgId: string }, ErrorCode][] = [
      ["empty body", () => ({ conversationId, body: "", clientMsgId: randomUUID() }), ErrorCode.INVALID_ARGUMENT],
      ["over-long body", () => ({ conversationId, body: "x".repeat(4001), clientMsgId: randomUUID() }), ErrorCode.INVALID_ARGUMENT],
      ["malformed conversation id", () => ({ conversationId: "general", body: "hi", clientMsgId: randomUUID() }), ErrorCode.INVALID_ARGUMENT],
      ["malformed client_msg_id", () => ({ conversationId, body: "hi", clientMsgId: "1" }), ErrorCode.INVALID_ARGUMENT],
      ["a conversation the user is not in", () => ({ conversationId: randomUUID(), body: "hi", clientMsgId: randomUUID() }), ErrorCode.PERMISSION_DENIED],
    ];
    let ref = 1000;
    for (const [name, make, code] of sendCases) {
      it(`send: ${name}`, async () => {
        const r = ++ref;
        const value = make();
        a.send({ ref: r, kind: { case: "send", value } });
        const f = await a.waitFor(name, (x) => x.ref === r);
        assert.equal(errorOf(f).code, code);
        assert.equal(errorOf(f).clientMsgId, value.clientMsgId);
      });
    }

    it("send: a foreign conversation that exists (carol and bob's) is denied and nothing is stored", async () => {
      const carol = await api(p.publicUrl).auth.signUp({ username: "carol", password: PASSWORD });
      const theirs = await api(p.publicUrl, carol.tokens!.accessToken).chat.openDirectConversation({
        peer: { case: "peerUsername", value: "bob" },
      });
      const id = theirs.conversation!.conversationId;
      a.send({ ref: 5000, kind: { case: "send", value: { conversationId: id, body: "intrude", clientMsgId: randomUUID() } } });
      assert.equal(errorOf(await a.waitFor("denied", (x) => x.ref === 5000)).code, ErrorCode.PERMISSION_DENIED);
      await rejectsWith(api(p.publicUrl, alice.token).chat.getHistory({ conversationId: id }), Code.PermissionDenied);
      const own = await api(p.publicUrl, carol.tokens!.accessToken).chat.getHistory({ conversationId: id });
      assert.equal(own.messages.length, 0);
    });

    it("a frame over the hard limit violates the protocol: the connection is dropped (1006), others live on", async () => {
      const c = await FrameClient.connect(p.wsUrl, alice.token);
      c.sendRaw(Buffer.alloc(70_000, 1));
      assert.equal(await c.waitForClose(), 1006);
      a.send({ ref: 6000, kind: { case: "ping", value: { nonce: 2n } } });
      await a.waitFor("pong on another connection", (x) => x.ref === 6000);
    });
  });

  describe("authentication", () => {
    it("refuses an upgrade without a token, with a malformed one, or from a foreign origin", async () => {
      assert.equal(await FrameClient.upgradeStatus(p.wsUrl, ["parley.v1"], {}), 401);
      assert.equal(await FrameClient.upgradeStatus(p.wsUrl, ["parley.v1"], { authorization: "Bearer nope" }), 401);
      assert.equal(await FrameClient.upgradeStatus(p.wsUrl, ["chat"], { authorization: `Bearer ${alice.token}` }), 400);
      assert.equal(
        await FrameClient.upgradeStatus(p.wsUrl, ["parley.v1"], { authorization: `Bearer ${alice.token}` }, "https://evil.example"),
        403,
      );
      assert.equal(
        await FrameClient.upgradeStatus(p.wsUrl, ["parley.v1"], { authorization: `Bearer ${alice.token}` }, "http://localhost:5173"),
        101,
      );
    });

    it("refuses an expired token at the upgrade (401) without asking the session service", async () => {
      const part = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
      const expired = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: alice.id, exp: Math.floor(Date.now() / 1000) - 60 })}.c2ln`;
      assert.equal(await FrameClient.upgradeStatus(p.wsUrl, ["parley.v1"], { authorization: `Bearer ${expired}` }), 401);
    });

    it("closes a socket whose token the session service refuses (bad signature) with 4401, without Hello", async () => {
      const [header, payload, signature] = alice.token.split(".") as [string, string, string];
      const forged = `${header}.${payload}.${[...signature].reverse().join("")}`;
      await assert.rejects(FrameClient.connect(p.wsUrl, forged), /closed with 4401 \(unauthenticated: invalid token signature\) before hello/);
    });

    it("answers Unauthenticated over Connect without a token, and InvalidArgument for bad sign-ups", async () => {
      await rejectsWith(api(p.publicUrl).chat.listConversations({}), Code.Unauthenticated);
      await rejectsWith(api(p.publicUrl, "x.y.z").auth.me({}), Code.Unauthenticated);
      await rejectsWith(api(p.publicUrl).auth.signUp({ username: "alice", password: PASSWORD }), Code.AlreadyExists);
      await rejectsWith(api(p.publicUrl).auth.signUp({ username: "dave", password: "short" }), Code.InvalidArgument);
      await rejectsWith(api(p.publicUrl).auth.signUp({ username: "d", password: PASSWORD }), Code.InvalidArgument);
      await rejectsWith(api(p.publicUrl).auth.logIn({ username: "alice", password: "wrong password" }), Code.Unauthenticated);
      await rejectsWith(
        api(p.publicUrl, alice.token).chat.openDirectConversation({ peer: { case: "peerUsername", value: "nobody" } }),
        Code.NotFound,
      );
      await rejectsWith(
        api(p.publicUrl, alice.token).chat.openDirectConversation({ peer: { case: "peerUsername", value: "alice" } }),
        Code.InvalidArgument,
      );
      await rejectsWith(api(p.publicUrl, alice.token).chat.getHistory({ conversationId: "nope" }), Code.InvalidArgument);
      await rejectsWith(api(p.publicUrl, alice.token).chat.getHistory({ conversationId, limit: 1000 }), Code.InvalidArgument);
    });

    it("refreshes, detects refresh-token reuse, and logs out for real", async () => {
      const s = await api(p.publicUrl).auth.logIn({ username: "bob", password: PASSWORD });
      const r = await api(p.publicUrl).auth.refresh({ refreshToken: s.tokens!.refreshToken });
      assert.notEqual(r.tokens?.refreshToken, s.tokens?.refreshToken);
      await api(p.publicUrl, r.tokens!.accessToken).auth.me({});
      // Reusing the first refresh token revokes the whole session.
      await rejectsWith(api(p.publicUrl).auth.refresh({ refreshToken: s.tokens!.refreshToken }), Code.Unauthenticated);
      await rejectsWith(api(p.publicUrl, r.tokens!.accessToken).auth.me({}), Code.Unauthenticated);

      const t = await api(p.publicUrl).auth.logIn({ username: "bob", password: PASSWORD });
      const live = await FrameClient.connect(p.wsUrl, t.tokens!.accessToken);
      const other = await FrameClient.connect(p.wsUrl, bob.token);
      await api(p.publicUrl, t.tokens!.accessToken).auth.logOut({});
      assert.equal(await live.waitForClose(), 4001, "the logged-out session's socket is closed");
      other.send({ ref: 42, kind: { case: "ping", value: { nonce: 42n } } });
      await other.waitFor("another session of the same user stays", (f) => f.ref === 42);
      assert.equal(other.closeCode, undefined);
      await other.close();
      await rejectsWith(api(p.publicUrl, t.tokens!.accessToken).auth.me({}), Code.Unauthenticated);
      // Still signed and unexpired: the upgrade completes, then the session service refuses it.
      await assert.rejects(FrameClient.connect(p.wsUrl, t.tokens!.accessToken), /closed with 4401 \(unauthenticated: [^)]*\) before hello/);
    });
  });

  describe("internal services", () => {
    it("answer a @grpc/grpc-js stub", async () => {
      const res = await grpcJsUnary(p.internalUrl, GroupsService, "getConversation", { conversationId });
      assert.deepEqual([...res.conversation!.memberIds].sort(), [alice.id, bob.id].sort());
    });

    it("answer buf curl through server reflection", async () => {
      const buf = join(ROOT, "node_modules", ".bin", "buf");
      const { stdout } = await promisify(execFile)(
        buf,
        [
          "curl",
          "--protocol",
          "grpc",
          "--http2-prior-knowledge",
          "-d",
          JSON.stringify({ conversationIds: [conversationId] }),
          `${p.internalUrl}/parley.messagestore.v1.MessageStoreService/GetHeads`,
        ],
        { timeout: 30_000 },
      );
      const heads = JSON.parse(stdout) as { heads: { conversationId: string; lastSeq: string }[] };
      assert.equal(heads.heads[0]?.conversationId, conversationId);
      assert.ok(Number(heads.heads[0]?.lastSeq) > 2 * N);
    });
  });

  it("keeps accounts and history across a restart (SIGTERM, then start on the same data dir)", async () => {
    const head = await api(p.publicUrl, alice.token).chat.getHistory({ conversationId, limit: 1 });
    assert.equal(await p.stop(), 0, "clean exit on SIGTERM");
    p = await startPlatformProcess(data.path);
    const login = await api(p.publicUrl).auth.logIn({ username: "alice", password: PASSWORD });
    const after = await api(p.publicUrl, login.tokens!.accessToken).chat.getHistory({ conversationId, limit: 1 });
    assert.deepEqual(after.messages[0]?.messageId, head.messages[0]?.messageId);
    // The sequence continues where it stopped.
    const a = await FrameClient.connect(p.wsUrl, login.tokens!.accessToken);
    a.send({ ref: 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId, body: "after restart" } } });
    const ack = await a.waitFor("ack", (f) => f.ref === 1);
    assert.equal(ack.kind.case === "ack" && ack.kind.value.seq, head.messages[0]!.seq + 1n);
    await a.close();
  });
});
