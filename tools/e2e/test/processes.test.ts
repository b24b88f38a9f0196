import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { ErrorCode } from "../../../gen/parley/client/v1/frames_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";
import { RouterService } from "../../../gen/parley/router/v1/router_service_pb.js";
import { grpcJsUnary } from "../../../lib/testing/grpc-js.js";
import { api, FrameClient, ROOT, Signal, tempDir } from "../harness.js";

const START_DEADLINE_MS = 60_000;
const EXIT_DEADLINE_MS = 15_000;
/** grpc status PERMISSION_DENIED */
const GRPC_PERMISSION_DENIED = 7;

type LogLine = Record<string, unknown> & { msg?: string };

/** One entry point running as its own process, with its log lines. */
class Proc {
  readonly lines: LogLine[] = [];
  readonly output: string[] = [];
  readonly signal = new Signal();
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  readonly child: ChildProcess;

  constructor(
    readonly name: string,
    entry: string,
    env: Record<string, string>,
  ) {
    this.child = spawn(process.execPath, ["--import", "tsx", entry], {
      cwd: ROOT,
      env: { ...process.env, PARLEY_LOG_LEVEL: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.once("exit", (code, signal) => {
      this.exit = { code, signal };
      this.signal.changed();
    });
    createInterface({ input: this.child.stderr! }).on("line", (line) => this.output.push(`stderr: ${line}`));
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      this.output.push(line);
      try {
        this.lines.push(JSON.parse(line) as LogLine);
      } catch {
        // not a pino line
      }
      this.signal.changed();
    });
  }

  /** The first log line with this `msg`; fails when the process exits first or at the deadline. */
  log(msg: string, timeoutMs = START_DEADLINE_MS): Promise<LogLine> {
    return this.signal.until(
      `${this.name}: log line "${msg}"`,
      () => {
        const line = this.lines.find((l) => l.msg === msg);
        if (line) return line;
        if (this.exit) throw new Error(`${this.name} exited (${this.exit.code ?? this.exit.signal}) before "${msg}"\n${this.dump()}`);
        return undefined;
      },
      timeoutMs,
    );
  }

  /** The gRPC URL the process logged ("grpc server listening", field `url`). */
  async url(): Promise<string> {
    return String((await this.log("grpc server listening")).url);
  }

  /** SIGTERM, then the exit status, failing when the process is still alive at the deadline. */
  async terminate(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.exit) this.child.kill("SIGTERM");
    return this.exited();
  }

  /** The exit status, failing when the process is still alive at the deadline. */
  async exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    try {
      return await this.signal.until(`${this.name} to exit after SIGTERM`, () => this.exit, EXIT_DEADLINE_MS);
    } catch (err) {
      throw new Error(`${(err as Error).message} (something holds its event loop)\n${this.dump()}`);
    }
  }

  dump(): string {
    return this.output.slice(-40).join("\n");
  }
}

const LEAVES = [
  ["session", "services/session/src/main.ts", "PARLEY_SESSION_PORT"],
  ["messagestore", "services/messagestore/src/main.ts", "PARLEY_MESSAGESTORE_PORT"],
  ["presence", "services/presence/src/main.ts", "PARLEY_PRESENCE_PORT"],
  ["groups", "services/groups/src/main.ts", "PARLEY_GROUPS_PORT"],
  ["notify", "services/notify/src/main.ts", "PARLEY_NOTIFY_PORT"],
] as const;

describe("every standalone process starts, serves health, and exits 0 on SIGTERM", () => {
  const data = tempDir("parley-processes-");
  const procs = new Map<string, Proc>();
  const urls = new Map<string, string>();
  let publicUrl = "";

  before(async () => {
    // The leaves in parallel (each embedded database takes ~2 s), then the router and the
    // gateway pointed at them, so that their outgoing connections are real.
    for (const [name, entry, portVar] of LEAVES) procs.set(name, new Proc(name, entry, { PARLEY_DATA_DIR: data.path, [portVar]: "0" }));
    await Promise.all(LEAVES.map(async ([name]) => urls.set(name, await procs.get(name)!.url())));
    const peers = {
      PARLEY_SESSION_URL: urls.get("session")!,
      PARLEY_MESSAGESTORE_URL: urls.get("messagestore")!,
      PARLEY_PRESENCE_URL: urls.get("presence")!,
      PARLEY_GROUPS_URL: urls.get("groups")!,
      PARLEY_NOTIFY_URL: urls.get("notify")!,
    };
    procs.set("router", new Proc("router", "services/router/src/main.ts", { ...peers, PARLEY_DATA_DIR: data.path, PARLEY_ROUTER_PORT: "0" }));
    urls.set("router", await procs.get("router")!.url());
    const gateway = new Proc("gateway", "gateway/src/main.ts", {
      ...peers,
      PARLEY_ROUTER_URL: urls.get("router")!,
      PARLEY_DATA_DIR: data.path,
      PARLEY_GATEWAY_PORT: "0",
      PARLEY_GATEWAY_INTERNAL_PORT: "0",
      PARLEY_PRESENCE_REPORT_MS: "100",
    });
    procs.set("gateway", gateway);
    urls.set("gateway", await gateway.url());
    publicUrl = `http://127.0.0.1:${String((await gateway.log("public gateway port listening")).port)}`;
  });

  after(() => {
    // Only finds live children when a test failed: never leave them running.
    for (const p of procs.values()) if (!p.exit) p.child.kill("SIGKILL");
    data.remove();
  });

  it("each of the seven serves grpc.health.v1.Health SERVING on the URL it logged", async () => {
    assert.equal(urls.size, 7);
    for (const [name, url] of urls) {
      assert.match(url, /^http:\/\/127\.0\.0\.1:[1-9]\d*$/, name);
      const health = await grpcJsUnary(url, Health, "check", { service: "" });
      assert.equal(health.status, ServingStatus.SERVING, name);
    }
  });

  let ws: FrameClient | undefined;

  it("the router and the gateway hold live connections to their peers", async () => {
    // router → groups: an unknown conversation is refused.
    await assert.rejects(
      grpcJsUnary(urls.get("router")!, RouterService, "send", {
        senderId: randomUUID(),
        senderDeviceId: randomUUID(),
        conversationId: randomUUID(),
        clientMsgId: randomUUID(),
        body: "hi",
      }),
      (e: { code?: number }) => e.code === GRPC_PERMISSION_DENIED,
    );
    // gateway → session (Connect API), then a WebSocket (gateway → router → groups).
    const up = await api(publicUrl).auth.signUp({ username: "shutdown", password: "correct horse battery" });
    ws = await FrameClient.connect(publicUrl.replace(/^http/, "ws") + "/ws", up.tokens!.accessToken);
    const clientMsgId = randomUUID();
    ws.send({ ref: 1, kind: { case: "send", value: { clientMsgId, conversationId: randomUUID(), body: "hi" } } });
    const err = await ws.waitFor("error frame", (f) => f.kind.case === "error");
    assert.equal(err.kind.case === "error" && err.kind.value.code, ErrorCode.PERMISSION_DENIED);
  });

  // The services first, while the router and the gateway still hold connections to them.
  for (const name of [...LEAVES.map(([n]) => n), "router"]) {
    it(`${name} exits 0 on SIGTERM`, async () => {
      const p = procs.get(name)!;
      const { code, signal } = await p.terminate();
      assert.equal(signal, null, `${name} was killed by ${signal}\n${p.dump()}`);
      assert.equal(code, 0, `${name} exited with ${code}\n${p.dump()}`);
    });
  }

  it("gateway drains on SIGTERM: WebSocket closed with 4012, /readyz 503, keep-alive HTTP let go, exit 0", async () => {
    const p = procs.get("gateway")!;
    assert.ok(ws, "no WebSocket was opened");
    // An HTTP/1.1 keep-alive client, as a load balancer's health checker would be.
    const port = Number(new URL(publicUrl).port);
    const http = net.connect(port, "127.0.0.1");
    const received = new Signal();
    let text = "";
    let closedByServer = false;
    http.on("data", (d) => {
      text += d.toString();
      received.changed();
    });
    http.on("close", () => {
      closedByServer = true;
      received.changed();
    });
    const get = "GET /readyz HTTP/1.1\r\nHost: parley\r\n\r\n";
    http.write(get);
    await received.until("200 from /readyz", () => text.includes('"status":"ready"'));
    assert.match(text, /^HTTP\/1\.1 200/);

    p.child.kill("SIGTERM");
    assert.equal(await ws.waitForClose(), 4012);
    text = "";
    http.write(get);
    await received.until("503 and the connection closed", () => closedByServer && text.length > 0);
    assert.match(text, /^HTTP\/1\.1 503/);

    const { code, signal } = await p.exited();
    assert.equal(signal, null, `gateway was killed by ${signal}\n${p.dump()}`);
    assert.equal(code, 0, `gateway exited with ${code}\n${p.dump()}`);
  });
});
