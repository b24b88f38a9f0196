import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import * as net from "node:net";
import { after, before, describe, it } from "node:test";
import { create, type DescMethodServerStreaming } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createContextKey, createContextValues, type Client, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcWebTransport,
  type ConnectTransportOptions,
} from "@connectrpc/connect-node";
import uWS from "uWebSockets.js";
import {
  ChatService,
  type GetHistoryRequestSchema,
  type GetHistoryResponseSchema,
  type GetHistoryRequest,
  type GetUsersRequest,
  type ListConversationsRequest,
} from "../../gen/parley/client/v1/chat_service_pb.js";
import { AuthService } from "../../gen/parley/client/v1/auth_service_pb.js";
import { ConversationKind, MessageSchema, UserSchema, ConversationSchema } from "../../gen/parley/client/v1/types_pb.js";
import { mountConnect, type ConnectRequestInfo } from "../src/uws/connect-adapter.js";

const MAX_REQUEST_BYTES = 64 * 1024;
const peerKey = createContextKey<string>("", { description: "peer address" });

/** A Deferred that a test awaits with a deadline instead of sleeping. */
function deferred<T = void>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** Observations the fake service makes, for assertions. */
const seen = {
  slowCallStarted: deferred(),
  slowCallAborted: deferred<unknown>(),
  lastPeer: "",
  firstStreamMessageReceived: deferred(),
};

function requireAuth(ctx: HandlerContext): string {
  const auth = ctx.requestHeader.get("authorization");
  if (auth === null || !auth.startsWith("Bearer ")) {
    throw new ConnectError("missing bearer token", Code.Unauthenticated);
  }
  return auth.slice("Bearer ".length);
}

async function getUsers(req: GetUsersRequest, ctx: HandlerContext) {
  const token = requireAuth(ctx);
  seen.lastPeer = ctx.values.get(peerKey);
  if (req.usernames.some((u) => u === "")) {
    throw new ConnectError("empty username", Code.InvalidArgument);
  }
  return {
    users: req.usernames.map((username) =>
      create(UserSchema, {
        userId: `id-${username}`,
        username,
        // Echoes request headers, to prove they reach the handler.
        displayName: `${token}/${ctx.requestHeader.get("x-parley-test") ?? "-"}`,
      }),
    ),
  };
}

/**
 * ChatService has no streaming RPC; this one, GetHistory's shapes as a server stream
 * under another name, exercises the adapter's streaming write path.
 */
const streamHistory = {
  ...ChatService.method.getHistory,
  name: "StreamHistory",
  methodKind: "server_streaming",
} as unknown as DescMethodServerStreaming<typeof GetHistoryRequestSchema, typeof GetHistoryResponseSchema>;
const BIG_MESSAGE_BYTES = 24 * 1024 * 1024;

/** GetUsers registered as NO_SIDE_EFFECTS, so that the Connect GET path is exercised. */
const getUsersIdempotent = { ...ChatService.method.getUsers, idempotency: MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS };

function routes(router: ConnectRouter): void {
  router.service(ChatService, {
    async openDirectConversation(req, ctx) {
      requireAuth(ctx);
      if (req.peer.case === "peerUsername" && req.peer.value === "slow") {
        // Waits until the client goes away.
        seen.slowCallStarted.resolve();
        await new Promise<void>((resolve) => {
          if (ctx.signal.aborted) resolve();
          ctx.signal.addEventListener("abort", () => resolve(), { once: true });
        });
        seen.slowCallAborted.resolve(ctx.signal.reason);
      }
      return {
        conversation: create(ConversationSchema, {
          conversationId: "c1",
          kind: ConversationKind.DIRECT,
          memberIds: ["me", req.peer.value ?? "?"],
        }),
      };
    },
    async listConversations(req: ListConversationsRequest) {
      if (req.limit > 200) throw new ConnectError("limit must be 1..200", Code.InvalidArgument);
      if (req.limit === 13) throw new Error("unlucky: a plain Error from the handler");
      return { conversations: [] };
    },
    async getHistory(req: GetHistoryRequest) {
      // Large responses: `limit` messages of 16 KiB each, incompressible.
      return {
        messages: Array.from({ length: req.limit }, (_, i) =>
          create(MessageSchema, {
            conversationId: req.conversationId,
            seq: BigInt(i + 1),
            body: randomBytes(12 * 1024).toString("base64"),
          }),
        ),
      };
    },
  });
  router.rpc(getUsersIdempotent, getUsers);
  router.rpc(streamHistory, async function* (req, ctx) {
    // One message far larger than the socket buffers, then nothing until the client
    // confirms it got all of it: the first message must not wait for the second.
    yield { messages: [create(MessageSchema, { conversationId: req.conversationId, body: randomBytes(BIG_MESSAGE_BYTES * 0.75).toString("base64") })] };
    await new Promise<void>((resolve) => {
      seen.firstStreamMessageReceived.promise.then(resolve, resolve);
      ctx.signal.addEventListener("abort", () => resolve(), { once: true });
    });
    yield { messages: [create(MessageSchema, { conversationId: req.conversationId, body: "last" })] };
  });
}

interface RawResponse {
  status: number;
  head: string;
  body: string;
}

/** Sends raw bytes on a fresh TCP connection and reads until the server ends it. */
function rawExchange(port: number, request: string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    const parts: Buffer[] = [];
    socket.on("data", (d) => parts.push(d));
    socket.on("error", reject);
    socket.on("end", () => {
      socket.destroy();
      const text = Buffer.concat(parts).toString();
      const [head = "", body = ""] = text.split("\r\n\r\n", 2);
      resolve({ status: Number(head.split(" ")[1]), head, body });
    });
    socket.write(request);
  });
}

describe("mountConnect on uWebSockets.js", () => {
  let listenSocket: uWS.us_listen_socket;
  let port: number;
  let baseUrl: string;
  const agent = new http.Agent({ keepAlive: true });
  const infos: ConnectRequestInfo[] = [];
  /** What the adapter logged: failures outside the protocol, e.g. touching an aborted response. */
  const adapterErrors: object[] = [];
  let paths: readonly string[] = [];

  function chat(useBinaryFormat: boolean, extra: Pick<ConnectTransportOptions, "sendCompression" | "compressMinBytes"> = {}): Client<typeof ChatService> {
    return createClient(
      ChatService,
      createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat, nodeOptions: { agent }, ...extra }),
    );
  }
  const auth = { headers: { authorization: "Bearer tok", "x-parley-test": "hello" } };

  /** curl-like JSON POST over a fresh connection. */
  function postJson(path: string, body: string, headers: Record<string, string> = {}) {
    return fetch(baseUrl + path, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body,
    });
  }

  before(async () => {
    const app = uWS.App();
    ({ paths } = mountConnect(app, routes, {
      maxRequestBytes: MAX_REQUEST_BYTES,
      // Connect's own per-message limit (which defaults to maxRequestBytes) is set higher
      // here, so that the adapter's body limit is what these tests exercise.
      readMaxBytes: 16 * MAX_REQUEST_BYTES,
      notFoundFallback: true,
      contextValues(info) {
        infos.push(info);
        return createContextValues().set(peerKey, info.remoteAddress);
      },
      logger: {
        error(obj, msg) {
          adapterErrors.push({ msg, ...obj });
        },
      },
    }));
    listenSocket = await new Promise<uWS.us_listen_socket>((resolve, reject) => {
      app.listen("127.0.0.1", 0, (ls) => (ls ? resolve(ls) : reject(new Error("listen failed"))));
    });
    port = uWS.us_socket_local_port(listenSocket as unknown as uWS.us_socket);
    baseUrl = `http://127.0.0.1:${port}`;
  });

  after(() => {
    agent.destroy();
    uWS.us_listen_socket_close(listenSocket);
  });

  it("registers every procedure path", () => {
    // Every method of the service, whether or not the test implements it (unimplemented ones answer Unimplemented).
    const chatPaths = ChatService.methods.map((m) => `/${ChatService.typeName}/${m.name}`);
    assert.deepEqual([...paths].sort(), [...chatPaths, "/parley.client.v1.ChatService/StreamHistory"].sort());
    assert.ok(paths.includes("/parley.client.v1.ChatService/GetUsers"));
  });

  for (const binary of [true, false]) {
    const format = binary ? "binary" : "JSON";

    it(`unary call works, headers and context values reach the handler (${format})`, async () => {
      const res = await chat(binary).getUsers({ usernames: ["ada", "bob"] }, auth);
      assert.deepEqual(
        res.users.map((u) => [u.userId, u.username, u.displayName]),
        [
          ["id-ada", "ada", "tok/hello"],
          ["id-bob", "bob", "tok/hello"],
        ],
      );
      assert.equal(seen.lastPeer, "127.0.0.1");
      const info = infos.at(-1);
      assert.equal(info?.method, "POST");
      assert.equal(info?.path, "/parley.client.v1.ChatService/GetUsers");
      assert.equal(info?.header.get("x-parley-test"), "hello");
    });

    it(`error codes arrive typed (${format})`, async () => {
      const client = chat(binary);
      await assert.rejects(client.getUsers({ usernames: ["ada"] }), (e: unknown) => {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.Unauthenticated);
        assert.equal(e.rawMessage, "missing bearer token");
        return true;
      });
      await assert.rejects(client.getUsers({ usernames: [""] }, auth), (e: unknown) => {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.InvalidArgument);
        return true;
      });
      await assert.rejects(client.listConversations({ limit: 13 }), (e: unknown) => {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.Internal);
        return true;
      });
    });

    it(`an over-size body gets resource_exhausted and the server keeps serving (${format})`, async () => {
      const client = chat(binary);
      const many = Array.from({ length: 10_000 }, (_, i) => `user-${i}`); // > 64 KiB
      await assert.rejects(client.getUsers({ usernames: many }, auth), (e: unknown) => {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.ResourceExhausted);
        return true;
      });
      const res = await client.getUsers({ usernames: ["ada"] }, auth);
      assert.equal(res.users.length, 1);
    });

    it(`large responses arrive whole (${format})`, async () => {
      const res = await chat(binary).getHistory({ conversationId: "c1", limit: 200 });
      assert.equal(res.messages.length, 200);
      assert.equal(res.messages[199]?.body.length, 16 * 1024);
    });
  }

  it("a streamed response is written chunk by chunk with backpressure, no chunk held back", async () => {
    const transport = createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, nodeOptions: { agent } });
    const res = await transport.stream(streamHistory, undefined, undefined, undefined, (async function* () {
      yield { conversationId: "c9" };
    })());
    const bodies: number[] = [];
    const read = (async () => {
      for await (const m of res.message) {
        bodies.push(m.messages[0]?.body.length ?? -1);
        seen.firstStreamMessageReceived.resolve();
      }
    })();
    await withDeadline(read, 20_000, "the streamed messages");
    assert.deepEqual(bodies, [BIG_MESSAGE_BYTES, 4]);
  });

  it("gzip-compressed requests and responses work", async () => {
    const client = chat(true, { sendCompression: compressionGzip, compressMinBytes: 0 });
    const res = await client.getUsers({ usernames: ["ada", "bob", "cy"] }, auth);
    assert.equal(res.users.length, 3);
  });

  it("gRPC-Web works (it takes the chunked write path)", async () => {
    const client = createClient(
      ChatService,
      createGrpcWebTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } }),
    );
    const res = await client.getHistory({ conversationId: "c1", limit: 200 }); // ~3.3 MB
    assert.equal(res.messages.length, 200);
    await assert.rejects(client.getUsers({ usernames: ["ada"] }), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.Unauthenticated);
      return true;
    });
  });

  it("plain JSON POST, as curl would send it", async () => {
    const ok = await postJson("/parley.client.v1.ChatService/GetUsers", JSON.stringify({ usernames: ["ada"] }), {
      authorization: "Bearer curl",
    });
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get("content-type") ?? "", /^application\/json/);
    assert.deepEqual(await ok.json(), { users: [{ userId: "id-ada", username: "ada", displayName: "curl/-" }] });

    const denied = await postJson("/parley.client.v1.ChatService/GetUsers", "{}");
    assert.equal(denied.status, 401);
    assert.deepEqual(await denied.json(), { code: "unauthenticated", message: "missing bearer token" });

    const bad = await postJson("/parley.client.v1.ChatService/GetUsers", "{not json", { authorization: "Bearer x" });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as { code: string }).code, "invalid_argument");

    // No body at all (Content-Length: 0) is an empty binary message.
    const empty = await fetch(`${baseUrl}/parley.client.v1.ChatService/ListConversations`, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: "",
    });
    assert.equal(empty.status, 200);
    assert.equal((await empty.arrayBuffer()).byteLength, 0);
  });

  it("Connect GET works for NO_SIDE_EFFECTS procedures", async () => {
    const message = encodeURIComponent(JSON.stringify({ usernames: ["gus"] }));
    const res = await fetch(
      `${baseUrl}/parley.client.v1.ChatService/GetUsers?connect=v1&encoding=json&message=${message}`,
      { headers: { authorization: "Bearer get" } },
    );
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { users: [{ userId: "id-gus", username: "gus", displayName: "get/-" }] });
    assert.equal(infos.at(-1)?.method, "GET");
  });

  it("GET on a POST-only procedure is 405", async () => {
    const res = await fetch(`${baseUrl}/parley.client.v1.ChatService/ListConversations?connect=v1&encoding=json&message={}`);
    assert.equal(res.status, 405);
    assert.equal(res.headers.get("allow"), "POST");
    await res.arrayBuffer();
  });

  it("unknown paths are 404 (Unimplemented for Connect clients)", async () => {
    const unknownMethod = await postJson("/parley.client.v1.ChatService/NoSuchMethod", "{}");
    assert.equal(unknownMethod.status, 404);
    await unknownMethod.arrayBuffer();
    const unknownPath = await postJson("/nothing/here", "{}");
    assert.equal(unknownPath.status, 404);
    await unknownPath.arrayBuffer();
    const auth = createClient(AuthService, createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } }));
    await assert.rejects(auth.refresh({}), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.Unimplemented);
      return true;
    });
  });

  it("a wrong content type is 415", async () => {
    const res = await fetch(`${baseUrl}/parley.client.v1.ChatService/GetUsers`, {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "hello",
    });
    assert.equal(res.status, 415);
    await res.arrayBuffer();
    const grpc = await fetch(`${baseUrl}/parley.client.v1.ChatService/GetUsers`, {
      method: "POST",
      headers: { "content-type": "application/grpc" },
      body: new Uint8Array(5),
    });
    assert.equal(grpc.status, 415, "gRPC proper needs HTTP/2 trailers and is not served here");
    await grpc.arrayBuffer();
  });

  it("a Content-Length above the limit is refused before any body byte arrives", async () => {
    const res = await rawExchange(
      port,
      "POST /parley.client.v1.ChatService/GetUsers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
        "Authorization: Bearer t\r\nContent-Length: 100000000\r\n\r\n",
    );
    assert.equal(res.status, 429, res.head);
    assert.equal((JSON.parse(res.body) as { code: string }).code, "resource_exhausted");
    const next = await chat(false).getUsers({ usernames: ["ada"] }, auth);
    assert.equal(next.users.length, 1);
  });

  it("a chunked upload is answered once it passes the limit, before the upload ends", async () => {
    const CAP = 1000 * MAX_REQUEST_BYTES;
    let sent = 0;
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(`${baseUrl}/parley.client.v1.ChatService/GetUsers`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: "Bearer t" },
        agent: false,
      });
      let responded = false;
      req.on("response", (res) => {
        responded = true;
        const parts: Buffer[] = [];
        res.on("data", (d: Buffer) => parts.push(d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts).toString() }));
      });
      req.on("error", (e) => (responded ? undefined : reject(e)));
      const chunk = Buffer.alloc(16 * 1024, " ");
      req.write('{"usernames":["a"]');
      const pump = () => {
        // Keep sending (up to CAP) until the server answers.
        while (!responded && sent < CAP) {
          sent += chunk.length;
          if (!req.write(chunk)) return void req.once("drain", pump);
        }
        if (!responded) req.end("}");
      };
      pump();
    });
    assert.equal(status, 429);
    assert.ok(sent < CAP, `answered only after the whole ${sent} bytes were sent`);
    assert.equal((JSON.parse(body) as { code: string }).code, "resource_exhausted");
    const next = await chat(true).getUsers({ usernames: ["ada"] }, auth);
    assert.equal(next.users.length, 1);
  });

  it("a client that disconnects mid-body does not hurt the server", async () => {
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.write(
          "POST /parley.client.v1.ChatService/GetUsers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
            "Content-Length: 1000\r\n\r\n{\"usernames\":[",
          () => {
            socket.destroy();
            resolve();
          },
        );
      });
      socket.on("error", reject);
    });
    const res = await chat(true).getUsers({ usernames: ["ada"] }, auth);
    assert.equal(res.users.length, 1);
  });

  it("a client that aborts while the handler runs: the handler's signal fires, the server goes on", async () => {
    const controller = new AbortController();
    const call = chat(true).openDirectConversation(
      { peer: { case: "peerUsername", value: "slow" } },
      { ...auth, signal: controller.signal },
    );
    await withDeadline(seen.slowCallStarted.promise, 5000, "the slow handler to start");
    controller.abort();
    await assert.rejects(call, (e: unknown) => ConnectError.from(e).code === Code.Canceled);
    const reason = await withDeadline(seen.slowCallAborted.promise, 5000, "the handler's signal to abort");
    assert.ok(reason instanceof ConnectError);
    assert.equal(reason.code, Code.Canceled);
    const res = await chat(false).openDirectConversation({ peer: { case: "peerUserId", value: "u2" } }, auth);
    assert.equal(res.conversation?.conversationId, "c1");
  });

  it("500 concurrent requests all succeed", async () => {
    const binary = chat(true);
    const json = chat(false);
    const results = await Promise.all(
      Array.from({ length: 500 }, (_, i) => (i % 2 ? binary : json).getUsers({ usernames: [`u${i}`] }, auth)),
    );
    results.forEach((r, i) => assert.equal(r.users[0]?.username, `u${i}`));
  });

  it("nothing failed outside the protocol (runs last)", () => {
    assert.deepEqual(adapterErrors, []);
  });
});
