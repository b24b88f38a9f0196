/**
 * A smoke test against a running Parley (the Tiltfile's test resource, or by hand):
 *   node --import tsx tools/e2e/smoke.ts http://127.0.0.1:7000
 * Two fresh users sign up, open a 1:1, and one message travels over the WebSocket.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { api, FrameClient } from "./harness.js";

const publicUrl = process.argv[2] ?? "http://127.0.0.1:7000";
const wsUrl = publicUrl.replace(/^http/, "ws") + "/ws";
const suffix = randomUUID().slice(0, 8);
const password = randomUUID();

const a = await api(publicUrl).auth.signUp({ username: `smoke-a-${suffix}`, password });
const b = await api(publicUrl).auth.signUp({ username: `smoke-b-${suffix}`, password });
const { conversation } = await api(publicUrl, a.tokens!.accessToken).chat.openDirectConversation({
  peer: { case: "peerUserId", value: b.user!.userId },
});
const sender = await FrameClient.connect(wsUrl, a.tokens!.accessToken);
const receiver = await FrameClient.connect(wsUrl, b.tokens!.accessToken);
sender.send({ ref: 1, kind: { case: "send", value: { clientMsgId: randomUUID(), conversationId: conversation!.conversationId, body: "smoke" } } });
const ack = await sender.waitFor("ack", (f) => f.ref === 1);
assert.equal(ack.kind.case, "ack");
await receiver.waitFor("message", (f) => f.kind.case === "message" && f.kind.value.body === "smoke");
await sender.close();
await receiver.close();
console.log(`smoke ok: ${publicUrl}`);
