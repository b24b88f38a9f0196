import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fromBinary, fromJsonString, toBinary, toJsonString, type MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import WebSocket from "ws";
import { AuthService } from "../../gen/parley/client/v1/auth_service_pb.js";
import { ChatService } from "../../gen/parley/client/v1/chat_service_pb.js";
import { ContactsService } from "../../gen/parley/client/v1/contacts_service_pb.js";
import { GroupService } from "../../gen/parley/client/v1/group_service_pb.js";
import { NotificationService } from "../../gen/parley/client/v1/notification_service_pb.js";
import { ClientFrameSchema, ServerFrameSchema, type ServerFrame } from "../../gen/parley/client/v1/frames_pb.js";

const ROOT = new URL("../..", import.meta.url).pathname;

export interface RunningPlatform {
  publicUrl: string;
  wsUrl: string;
  internalUrl: string;
  dataDir: string;
  pid: number;
  /** SIGTERM, then resolves with the exit code once the process ended. */
  stop(): Promise<number | null>;
}

/**
 * Something tests can wait on: `changed()` is called on every event, and `until`
 * re-checks its condition then, failing at the deadline. No polling, no sleeps.
 */
export class Signal {
  private readonly waiters = new Set<() => void>();

  changed(): void {
    for (const w of [...this.waiters]) w();
  }

  /** A `check` that throws fails the wait at once with that error. */
  until<T>(what: string, check: () => T | undefined | false, timeoutMs = 10_000): Promise<T> {
    try {
      const first = check();
      if (first !== undefined && first !== false) return Promise.resolve(first);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<T>((resolve, reject) => {
      const finish = (err: unknown, v?: T) => {
        this.waiters.delete(waiter);
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(v!);
      };
      const waiter = () => {
        let v: T | undefined | false;
        try {
          v = check();
        } catch (err) {
          return finish(err);
        }
        if (v !== undefined && v !== false) finish(undefined, v);
      };
      const timer = setTimeout(() => finish(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
      this.waiters.add(waiter);
    });
  }
}

export function tempDir(prefix: string): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * Starts the platform the way `npm start` does (the same command, as its own process)
 * on free ports, and resolves once it printed its ready line.
 */
export async function startPlatformProcess(dataDir: string, env: Record<string, string> = {}): Promise<RunningPlatform> {
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", "tools/platform/main.ts"], {
    cwd: ROOT,
    env: {
      ...process.env,
      PARLEY_DATA_DIR: dataDir,
      PARLEY_GATEWAY_PORT: "0",
      PARLEY_INTERNAL_PORT: "0",
      PARLEY_GATEWAY_INTERNAL_PORT: "0",
      PARLEY_LOG_LEVEL: "warn",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ready = await new Promise<{ publicUrl: string; wsUrl: string; internalUrl: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("platform did not become ready in 60 s")), 60_000);
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      if (!line.startsWith('{"parley":"ready"')) return;
      clearTimeout(timer);
      resolve(JSON.parse(line));
    });
    void exited.then((code) => reject(new Error(`platform exited with ${code} before it was ready`)));
  });
  return {
    ...ready,
    dataDir,
    pid: child.pid!,
    stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

export function bearer(token: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

export interface ApiClients {
  auth: Client<typeof AuthService>;
  chat: Client<typeof ChatService>;
  contacts: Client<typeof ContactsService>;
  groups: Client<typeof GroupService>;
  notifications: Client<typeof NotificationService>;
}

/** Connect clients of the public API (HTTP/1.1, like a browser or curl). */
export function api(publicUrl: string, token?: string, binary = true): ApiClients {
  const transport = createConnectTransport({
    baseUrl: publicUrl,
    httpVersion: "1.1",
    useBinaryFormat: binary,
    interceptors: token ? [bearer(token)] : [],
  });
  return {
    auth: createClient(AuthService, transport),
    chat: createClient(ChatService, transport),
    contacts: createClient(ContactsService, transport),
    groups: createClient(GroupService, transport),
    notifications: createClient(NotificationService, transport),
  };
}

export type ClientFrameInit = MessageInitShape<typeof ClientFrameSchema>;

/** A WebSocket client that records every server frame and lets a test wait for them. */
export class FrameClient {
  readonly frames: ServerFrame[] = [];
  closeCode: number | undefined;
  closeReason = "";
  readonly signal = new Signal();

  private constructor(
    readonly ws: WebSocket,
    readonly encoding: "binary" | "json",
  ) {
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      this.frames.push(
        isBinary ? fromBinary(ServerFrameSchema, new Uint8Array(data)) : fromJsonString(ServerFrameSchema, data.toString("utf8")),
      );
      this.signal.changed();
    });
    ws.on("close", (code: number, reason: Buffer) => {
      this.closeCode = code;
      this.closeReason = reason.toString();
      this.signal.changed();
    });
  }

  /** Opens and waits for Hello. */
  static async connect(
    wsUrl: string,
    token: string,
    opts: { encoding?: "binary" | "json"; tokenIn?: "header" | "subprotocol"; origin?: string } = {},
  ): Promise<FrameClient> {
    const encoding = opts.encoding ?? "binary";
    const protocols = [encoding === "json" ? "parley.v1.json" : "parley.v1"];
    const headers: Record<string, string> = {};
    if (opts.tokenIn === "subprotocol") protocols.push(`bearer.${token}`);
    else headers.authorization = `Bearer ${token}`;
    const ws = new WebSocket(wsUrl, protocols, { headers, origin: opts.origin });
    const client = new FrameClient(ws, encoding);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    // A close before Hello (e.g. 4013 TRY_AGAIN_LATER) fails at once, with its code and reason.
    await client.signal.until("hello", () => {
      if (client.frames.some((f) => f.kind.case === "hello")) return true;
      if (client.closeCode !== undefined) throw new Error(`closed with ${client.closeCode} (${client.closeReason}) before hello`);
      return undefined;
    });
    return client;
  }

  /** The HTTP status an upgrade attempt is refused with (or 101 when it opens). */
  static async upgradeStatus(wsUrl: string, protocols: string[], headers: Record<string, string>, origin?: string): Promise<number> {
    const ws = new WebSocket(wsUrl, protocols, { headers, origin });
    return new Promise<number>((resolve) => {
      ws.once("open", () => {
        ws.close();
        resolve(101);
      });
      ws.once("unexpected-response", (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.once("error", () => resolve(0));
    });
  }

  send(frame: ClientFrameInit): void {
    const msg = create(ClientFrameSchema, frame);
    if (this.encoding === "binary") this.ws.send(toBinary(ClientFrameSchema, msg));
    else this.ws.send(toJsonString(ClientFrameSchema, msg));
  }

  sendRaw(data: Buffer | string): void {
    this.ws.send(data);
  }

  waitFor(what: string, match: (f: ServerFrame) => boolean, timeoutMs = 10_000): Promise<ServerFrame> {
    return this.signal.until(what, () => this.frames.find(match), timeoutMs);
  }

  waitForClose(timeoutMs = 10_000): Promise<number> {
    return this.signal.until("close", () => this.closeCode, timeoutMs);
  }

  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once("close", () => resolve());
      this.ws.close(1000);
    });
  }
}

export { ROOT };
