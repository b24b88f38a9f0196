import assert from "node:assert/strict";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../logger.js";
import { startOpsServer, type OpsServer } from "../ops-server.js";
import { Readiness } from "../readiness.js";

const logger = createLogger("ops-test", "silent");

/** One raw HTTP/1.1 exchange on a keep-alive socket (what probes and load balancers do). */
function rawGet(port: number, request: string): Promise<{ text: string; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let text = "";
    socket.on("data", (d) => {
      text += d.toString();
      if (/\r\n\r\n/.test(text)) {
        const length = Number(/content-length: (\d+)/i.exec(text)?.[1] ?? 0);
        if (text.length - text.indexOf("\r\n\r\n") - 4 >= length) resolve({ text, socket });
      }
    });
    socket.once("error", reject);
    socket.write(request);
  });
}

describe("startOpsServer", () => {
  let ops: OpsServer;
  let fail: Error | undefined;
  const readiness = new Readiness({ cacheMs: 0 });
  before(async () => {
    readiness.begin([{ name: "postgres", check: async () => { if (fail) throw fail; } }]);
    ops = await startOpsServer({ port: 0, readiness, logger, routes: { "/extra": () => ({ status: 200, body: "extra" }) } });
  });
  after(async () => {
    await ops.close();
  });

  it("/healthz answers 200 ok", async () => {
    const res = await fetch(`${ops.url}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    assert.equal(res.headers.get("cache-control"), "no-store");
  });

  it("/readyz: 200 with the checks while they pass, 503 naming the failing one, JSON", async () => {
    const ok = await fetch(`${ops.url}/readyz`);
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get("content-type"), "application/json");
    const body = (await ok.json()) as { status: string; checks: { name: string; ok: boolean }[] };
    assert.equal(body.status, "ready");
    assert.deepEqual(body.checks.map((c) => [c.name, c.ok]), [["postgres", true]]);
    fail = new Error("connection refused");
    try {
      const bad = await fetch(`${ops.url}/readyz?verbose=1`);
      assert.equal(bad.status, 503);
      const b = (await bad.json()) as { status: string; failing: string[]; checks: { error?: string }[] };
      assert.deepEqual([b.status, b.failing, b.checks[0]!.error], ["not ready", ["postgres"], "connection refused"]);
    } finally {
      fail = undefined;
    }
  });

  it("HEAD has no body; other methods get 405, unknown paths 404", async () => {
    const head = await fetch(`${ops.url}/healthz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
    const post = await fetch(`${ops.url}/healthz`, { method: "POST" });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    const nope = await fetch(`${ops.url}/nope`);
    assert.equal(nope.status, 404);
    assert.match(await nope.text(), /\/healthz, \/readyz/);
  });

  it("routes can be added (given at start, or later: /metrics), and a failing route answers 500", async () => {
    assert.equal(await (await fetch(`${ops.url}/extra`)).text(), "extra");
    ops.route("/metrics", () => ({ status: 200, contentType: "text/plain; version=0.0.4", body: "parley_up 1\n" }));
    const m = await fetch(`${ops.url}/metrics`);
    assert.equal(m.headers.get("content-type"), "text/plain; version=0.0.4");
    assert.equal(await m.text(), "parley_up 1\n");
    ops.route("/broken", () => {
      throw new Error("bug");
    });
    assert.equal((await fetch(`${ops.url}/broken`)).status, 500);
  });
});

describe("startOpsServer close()", () => {
  it("lets go of idle keep-alive probe connections and stops listening", async () => {
    const readiness = new Readiness();
    readiness.drain();
    const ops = await startOpsServer({ port: 0, readiness, logger });
    const { text, socket } = await rawGet(ops.port, "GET /readyz HTTP/1.1\r\nHost: ops\r\n\r\n");
    assert.match(text, /^HTTP\/1\.1 503/);
    assert.match(text, /"status":"draining"/);
    const closedByServer = new Promise<void>((resolve) => socket.once("close", () => resolve()));
    await ops.close();
    await closedByServer;
    await assert.rejects(fetch(`${ops.url}/healthz`), "refused after close");
  });
});
