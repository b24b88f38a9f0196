import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import WebSocket from "ws";
import { createLogger } from "../../lib/logger.js";
import { MemoryConnectionRegistry } from "../../lib/registry/connection-registry-memory.js";
import { fakeAccessToken } from "../../lib/testing/tokens.js";
import { until } from "../../lib/testing/wait.js";
import { FrameClient } from "../../tools/e2e/harness.js";
import { loadConfig } from "../src/config.js";
import { CloseCode, tokenRefusal } from "../src/core/protocol.js";
import { startPublicServer, type PublicServer } from "../src/uws/server.js";
import { fakeSession, routerlessCore } from "./fakes.js";

describe("tokenRefusal: what the gateway refuses before the upgrade", () => {
  const now = Date.UTC(2026, 0, 1);
  const token = (payload: object | string) =>
    `eyJhbGciOiJIUzI1NiJ9.${Buffer.from(typeof payload === "string" ? payload : JSON.stringify(payload)).toString("base64url")}.c2ln`;

  it("lets a JWT-shaped token with a future exp through (the session service decides)", () => {
    assert.equal(tokenRefusal(token({ sub: "u", exp: now / 1000 + 60 }), now), undefined);
  });

  it("refuses an expired token, and anything not shaped like one", () => {
    assert.equal(tokenRefusal(token({ exp: now / 1000 }), now), "access token expired");
    assert.equal(tokenRefusal("nope", now), "malformed token");
    assert.equal(tokenRefusal("a.b", now), "malformed token");
    assert.equal(tokenRefusal("a.b.c.d", now), "malformed token");
    assert.equal(tokenRefusal(token("not json"), now), "malformed token");
    assert.equal(tokenRefusal(token("null"), now), "malformed token");
    assert.equal(tokenRefusal(token({ sub: "u" }), now), "malformed token", "no exp");
    assert.equal(tokenRefusal(token({ exp: "soon" }), now), "malformed token");
    assert.equal(tokenRefusal(`${token({ exp: now / 1000 + 60 })}${"x".repeat(4096)}`, now), "malformed token", "over 4 KiB");
  });
});

/**
 * The upgrade completes at once and the token is checked after it: a gated fake session
 * service shows what happens while the check runs and after each answer.
 */
describe("uWS: authentication after the upgrade", { timeout: 30_000 }, () => {
  const logger = createLogger("test", "silent");
  const cfg = { ...loadConfig({ PARLEY_GATEWAY_PORT: "0" }), id: "gw-auth" };
  const registry = new MemoryConnectionRegistry();
  /** Authenticate calls wait here while `hold` is set; the test answers each one. */
  let hold = false;
  const held: { answer: () => void }[] = [];
  let sessionDown = false;
  let calls = 0;
  const session = fakeSession(async () => {
    calls++;
    if (hold) await new Promise<void>((answer) => held.push({ answer }));
    if (sessionDown) throw new ConnectError("session down", Code.Unavailable);
  });
  const core = routerlessCore(cfg, { registry, logger, session });
  let server: PublicServer;
  let url: string;

  before(async () => {
    server = await startPublicServer(cfg, core, () => {}, logger);
    url = `ws://127.0.0.1:${server.port}/ws`;
  });
  after(async () => {
    server.stopListening();
    await core.drain();
    await registry.close();
  });

  /** A raw client (JSON frames) that records what it gets, without waiting for Hello. */
  function rawClient(token: string) {
    const ws = new WebSocket(url, ["parley.v1.json"], { headers: { authorization: `Bearer ${token}` } });
    const texts: string[] = [];
    let closed: { code: number; reason: string } | undefined;
    ws.on("message", (d: Buffer) => texts.push(d.toString()));
    const closing = new Promise<{ code: number; reason: string }>((resolve) =>
      ws.once("close", (code: number, reason: Buffer) => resolve((closed = { code, reason: reason.toString() }))),
    );
    const opened = new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return { ws, texts, opened, closing, closed: () => closed };
  }

  const ping = (ref: number) => JSON.stringify({ ref, ping: { nonce: String(ref) } });

  it("frames sent while the token is checked are answered after Hello, in order", async () => {
    hold = true;
    const c = rawClient(fakeAccessToken(randomUUID(), randomUUID()));
    await c.opened;
    for (const ref of [1, 2, 3]) c.ws.send(ping(ref));
    await until("the check is asked", () => held.length === 1);
    assert.deepEqual(c.texts, [], "nothing before the answer");
    hold = false;
    held.shift()!.answer();
    await until("hello and three pongs", () => c.texts.length === 4);
    assert.match(c.texts[0]!, /"hello"/);
    assert.deepEqual(
      c.texts.slice(1).map((t) => (JSON.parse(t) as { ref: number }).ref),
      [1, 2, 3],
    );
    c.ws.close();
    await c.closing;
  });

  it("more than 16 frames before Hello close the socket with 1008; the late answer registers nothing", async () => {
    hold = true;
    const before = core.stats.connections;
    const c = rawClient(fakeAccessToken(randomUUID(), randomUUID()));
    await c.opened;
    for (let ref = 1; ref <= 17; ref++) c.ws.send(ping(ref));
    const { code, reason } = await c.closing;
    assert.equal(code, CloseCode.POLICY_VIOLATION);
    assert.match(reason, /more than 16 frames before Hello/);
    hold = false;
    await until("the check is asked", () => held.length === 1);
    held.shift()!.answer();
    const probe = await FrameClient.connect(url, fakeAccessToken(randomUUID(), randomUUID()));
    assert.equal(core.stats.connections, before + 1, "only the probe: nothing registered for the closed socket");
    assert.deepEqual(c.texts, [], "no Hello");
    await probe.close();
  });

  it("a client gone before the answer is never registered", async () => {
    hold = true;
    const before = core.stats.connections;
    const c = rawClient(fakeAccessToken(randomUUID(), randomUUID()));
    await c.opened;
    await until("the check is asked", () => held.length === 1);
    c.ws.terminate();
    await c.closing;
    hold = false;
    held.shift()!.answer();
    // A connection registered for it would show in the stats after the next flush.
    const probe = await FrameClient.connect(url, fakeAccessToken(randomUUID(), randomUUID()));
    assert.equal(core.stats.connections, before + 1, "only the probe");
    await probe.close();
  });

  it("a token the session service refuses closes with 4401 and its reason, without Hello", async () => {
    const c = rawClient(fakeAccessToken(randomUUID(), randomUUID()).replace(/fake$/, "forged"));
    await c.opened;
    assert.deepEqual(await c.closing, { code: CloseCode.UNAUTHENTICATED, reason: "unauthenticated: invalid token signature" });
    assert.deepEqual(c.texts, []);
  });

  it("while the session service is down the socket closes with 4013 (reconnect with backoff)", async () => {
    sessionDown = true;
    try {
      const c = rawClient(fakeAccessToken(randomUUID(), randomUUID()));
      await c.opened;
      assert.deepEqual(await c.closing, { code: CloseCode.TRY_AGAIN_LATER, reason: "try again later" });
    } finally {
      sessionDown = false;
    }
  });

  it("an expired or malformed token is refused with 401 at the upgrade, without asking the session service", async () => {
    const asked = calls;
    assert.equal(await FrameClient.upgradeStatus(url, ["parley.v1"], { authorization: `Bearer ${fakeAccessToken(randomUUID(), randomUUID(), -1)}` }), 401);
    assert.equal(await FrameClient.upgradeStatus(url, ["parley.v1"], { authorization: "Bearer nope" }), 401);
    assert.equal(calls, asked);
  });
});
