import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as net from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { status as grpcStatus } from "@grpc/grpc-js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import * as reflectionV1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as reflectionV1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { AuthService } from "../../gen/parley/client/v1/auth_service_pb.js";
import { GroupsService } from "../../gen/parley/groups/v1/groups_service_pb.js";
import { HealthRegistry } from "../grpc-health.js";
import { reflectionRoutes } from "../grpc-reflection.js";
import { createLogger } from "../logger.js";
import { createClient, dialGrpc, inProcess, startGrpcServer, type GrpcServer, type Routes } from "../rpc.js";
import { grpcJsUnary } from "../testing/grpc-js.js";

const logger = createLogger("rpc-test", "silent");
const BUF = fileURLToPath(new URL("../../node_modules/.bin/buf", import.meta.url));
const execFileAsync = promisify(execFile);

/** A trivial GroupsService.ListPushCandidates (one candidate per user id); a request for conversation "block" waits on `gate` (drain test). */
function notifyRoutes(gate?: { entered: () => void; released: Promise<void> }): Routes {
  return (router) =>
    router.service(GroupsService, {
      async listPushCandidates(req) {
        if (req.conversationId === "block" && gate) {
          gate.entered();
          await gate.released;
        }
        return { candidates: req.userIds.map((userId) => ({ userId })) };
      },
    });
}

function startNotify(routes: Routes = notifyRoutes()): Promise<GrpcServer> {
  return startGrpcServer({ port: 0, routes, services: [GroupsService], logger, drainMs: 10_000 });
}

async function buf(...args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--timeout", "20s", ...args], {
    timeout: 30_000,
    env: { ...process.env, NO_COLOR: "1" },
  });
  return stdout;
}

/** Resolves true when a TCP connection to the port is refused, false when it is accepted. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => (err.code === "ECONNREFUSED" ? resolve(true) : reject(err)));
  });
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, deadlineMs = 5_000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe("startGrpcServer", { timeout: 30_000 }, () => {
  let server: GrpcServer;
  before(async () => {
    server = await startNotify();
  });
  after(async () => {
    await server.close();
  });

  it("serves a connect-es client over dialGrpc", async () => {
    const transport = dialGrpc(server.url);
    try {
      const client = createClient(GroupsService, transport);
      const res = await client.listPushCandidates({ userIds: ["a", "b", "c"], conversationId: "c1", seq: 7n });
      assert.equal(res.candidates.length, 3);
    } finally {
      transport.close();
    }
  });

  it("serves grpc-js clients, including grpc.health.v1.Health/Check", async () => {
    const res = await grpcJsUnary(server.url, GroupsService, "listPushCandidates", { userIds: ["a", "b"] });
    assert.equal(res.candidates.length, 2);
    for (const service of ["", "parley.groups.v1.GroupsService"]) {
      const health = await grpcJsUnary(server.url, Health, "check", { service });
      assert.equal(health.status, ServingStatus.SERVING, `status of ${JSON.stringify(service)}`);
    }
    await assert.rejects(grpcJsUnary(server.url, Health, "check", { service: "no.such.Service" }), (err: { code?: number }) => {
      assert.equal(err.code, grpcStatus.NOT_FOUND);
      return true;
    });
  });

  it("reports health changes set on the registry to Check and Watch", async () => {
    const transport = dialGrpc(server.url);
    const abort = new AbortController();
    try {
      const client = createClient(Health, transport);
      const stream = client.watch({ service: "parley.test.v1.LateService" }, { signal: abort.signal })[Symbol.asyncIterator]();
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVICE_UNKNOWN);
      server.health.set("parley.test.v1.LateService", ServingStatus.SERVING);
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
      server.health.set("parley.test.v1.LateService", ServingStatus.SERVING); // unchanged: not sent
      server.health.set("parley.test.v1.LateService", ServingStatus.NOT_SERVING);
      assert.equal((await stream.next()).value?.status, ServingStatus.NOT_SERVING);
      assert.equal((await client.check({ service: "parley.test.v1.LateService" })).status, ServingStatus.NOT_SERVING);
      assert.equal(server.health.watcherCount, 1);
      abort.abort();
      await assert.rejects(stream.next(), (err) => ConnectError.from(err).code === Code.Canceled);
      await waitFor("the server to drop the cancelled watcher", () => server.health.watcherCount === 0);
    } finally {
      transport.close();
    }
  });

  it("is listed and called by buf curl through server reflection (v1 and v1alpha)", async () => {
    const listed = (await buf("--list-methods", server.url)).trim().split("\n").sort();
    // Reflection lists every method of a served service; this server implements one of GroupsService's.
    const groupsMethods = GroupsService.methods.map((m) => `parley.groups.v1.GroupsService/${m.name}`);
    assert.deepEqual(listed.filter((m) => groupsMethods.includes(m)).length, groupsMethods.length, "every GroupsService method is listed");
    const methods = listed.filter((m) => !groupsMethods.includes(m) || m.endsWith("/ListPushCandidates"));
    assert.deepEqual(methods, [
      "grpc.health.v1.Health/Check",
      "grpc.health.v1.Health/Watch",
      "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      "parley.groups.v1.GroupsService/ListPushCandidates",
    ]);
    for (const protocol of ["grpc-v1", "grpc-v1alpha"]) {
      const services = (await buf("--reflect-protocol", protocol, "--list-services", server.url)).trim().split("\n").sort();
      assert.deepEqual(services, [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "parley.groups.v1.GroupsService",
      ]);
      const out = await buf(
        "--reflect-protocol",
        protocol,
        "-d",
        JSON.stringify({ userIds: ["u1", "u2"], conversationId: "c1", seq: "42" }),
        `${server.url}/parley.groups.v1.GroupsService/ListPushCandidates`,
      );
      assert.deepEqual(JSON.parse(out), { candidates: [{ userId: "u1" }, { userId: "u2" }] });
    }
    const health = await buf("-d", '{"service":"parley.groups.v1.GroupsService"}', `${server.url}/grpc.health.v1.Health/Check`);
    assert.deepEqual(JSON.parse(health), { status: "SERVING" });
  });
});

describe("startGrpcServer close()", { timeout: 30_000 }, () => {
  it("ends Health Watch with NOT_SERVING", async () => {
    const server = await startNotify();
    const transport = dialGrpc(server.url);
    try {
      const client = createClient(Health, transport);
      const stream = client.watch({ service: "" })[Symbol.asyncIterator]();
      assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
      const closing = server.close();
      assert.equal((await stream.next()).value?.status, ServingStatus.NOT_SERVING);
      assert.equal((await stream.next()).done, true);
      await closing;
    } finally {
      transport.close();
      await server.close();
    }
  });

  it("drains a call in flight, then refuses connections", async () => {
    let entered!: () => void;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const server = await startNotify(notifyRoutes({ entered, released }));
    const transport = dialGrpc(server.url);
    try {
      const client = createClient(GroupsService, transport);
      const call = client.listPushCandidates({ userIds: ["a", "b"], conversationId: "block" });
      await inHandler;
      let closed = false;
      const closing = server.close().then(() => {
        closed = true;
      });
      await waitFor("the listener to close", () => refused(server.port));
      assert.equal(server.health.get(""), ServingStatus.NOT_SERVING);
      assert.equal(closed, false, "close() must wait for the call in flight");
      release();
      assert.equal((await call).candidates.length, 2);
      await closing;
      assert.equal(await refused(server.port), true);
    } finally {
      release();
      transport.close();
      await server.close();
    }
  });
});

describe("startGrpcServer close() with a stuck call", { timeout: 30_000 }, () => {
  it("cuts calls still running after drainMs and resolves", async () => {
    let entered!: () => void;
    const inHandler = new Promise<void>((resolve) => (entered = resolve));
    let aborted = false;
    const server = await startGrpcServer({
      port: 0,
      services: [GroupsService],
      logger,
      drainMs: 50,
      routes: (router) =>
        router.service(GroupsService, {
          async listPushCandidates(_req, ctx) {
            entered();
            await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
            aborted = true;
            return {};
          },
        }),
    });
    const transport = dialGrpc(server.url);
    try {
      const failed = assert.rejects(createClient(GroupsService, transport).listPushCandidates({}), ConnectError);
      await inHandler;
      await server.close();
      await failed;
      await waitFor("the handler's signal to abort", () => aborted);
    } finally {
      transport.close();
      await server.close();
    }
  });
});

describe("HealthRegistry", { timeout: 30_000 }, () => {
  it("starts SERVING for the server and each service, and shutdown ends subscriptions", () => {
    const registry = new HealthRegistry(["a.v1.A"]);
    assert.equal(registry.get(""), ServingStatus.SERVING);
    assert.equal(registry.get("a.v1.A"), ServingStatus.SERVING);
    assert.equal(registry.get("b.v1.B"), undefined);
    const seen: [ServingStatus, boolean][] = [];
    registry.subscribe("a.v1.A", (status, ended) => seen.push([status, ended]));
    registry.set("a.v1.A", ServingStatus.NOT_SERVING);
    registry.set("a.v1.A", ServingStatus.SERVING);
    registry.shutdown();
    registry.set("a.v1.A", ServingStatus.SERVING); // ignored after shutdown
    assert.deepEqual(seen, [
      [ServingStatus.NOT_SERVING, false],
      [ServingStatus.SERVING, false],
      [ServingStatus.NOT_SERVING, false],
      [ServingStatus.NOT_SERVING, true],
    ]);
    assert.equal(registry.get("a.v1.A"), ServingStatus.NOT_SERVING);
    assert.equal(registry.watcherCount, 0);
  });
});

describe("reflectionRoutes", { timeout: 30_000 }, () => {
  const transport = inProcess(reflectionRoutes([AuthService]));
  after(() => transport.close());

  type V1Request = MessageInitShape<typeof reflectionV1.ServerReflectionRequestSchema>;

  async function ask(requests: V1Request[]): Promise<reflectionV1.ServerReflectionResponse[]> {
    const client = createClient(reflectionV1.ServerReflection, transport);
    const out: reflectionV1.ServerReflectionResponse[] = [];
    async function* input() {
      for (const r of requests) yield create(reflectionV1.ServerReflectionRequestSchema, r);
    }
    for await (const res of client.serverReflectionInfo(input())) out.push(res);
    return out;
  }

  function fileNames(res: reflectionV1.ServerReflectionResponse): string[] {
    assert.equal(res.messageResponse.case, "fileDescriptorResponse", JSON.stringify(res.messageResponse.value));
    return res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name);
  }

  function errorCode(res: reflectionV1.ServerReflectionResponse): number {
    assert.equal(res.messageResponse.case, "errorResponse");
    return res.messageResponse.value.errorCode;
  }

  const authFiles = ["parley/client/v1/auth_service.proto", "google/protobuf/timestamp.proto", "parley/client/v1/types.proto"];

  it("answers every request on one stream, echoing host and request", async () => {
    const responses = await ask([
      { host: "h1", messageRequest: { case: "listServices", value: "" } },
      { host: "h2", messageRequest: { case: "fileContainingSymbol", value: "parley.client.v1.AuthService" } },
      { messageRequest: { case: "fileContainingSymbol", value: ".parley.client.v1.AuthService.LogIn" } },
      { messageRequest: { case: "fileContainingSymbol", value: "parley.client.v1.LogInRequest" } },
      { messageRequest: { case: "fileContainingSymbol", value: "parley.client.v1.ConversationKind" } },
      { messageRequest: { case: "fileContainingSymbol", value: "parley.client.v1.User.user_id" } },
      { messageRequest: { case: "fileByFilename", value: "parley/client/v1/types.proto" } },
      { messageRequest: { case: "fileByFilename", value: "grpc/health/v1/health.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.SERVING" } },
      { messageRequest: { case: "fileContainingSymbol", value: "grpc.reflection.v1alpha.ServerReflection" } },
    ]);
    assert.equal(responses.length, 10);
    const [list, ...files] = responses;
    assert.equal(list.validHost, "h1");
    assert.equal(list.originalRequest?.messageRequest.case, "listServices");
    assert.equal(list.messageResponse.case, "listServicesResponse");
    assert.deepEqual(list.messageResponse.value.service.map((s) => s.name), [
      "parley.client.v1.AuthService",
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
    assert.equal(files[0].validHost, "h2");
    assert.equal(files[0].originalRequest?.messageRequest.value, "parley.client.v1.AuthService");
    for (const res of files.slice(0, 3)) assert.deepEqual(fileNames(res), authFiles);
    assert.deepEqual(fileNames(files[3]), ["parley/client/v1/types.proto", "google/protobuf/timestamp.proto"]);
    assert.deepEqual(fileNames(files[4]), ["parley/client/v1/types.proto", "google/protobuf/timestamp.proto"]);
    assert.deepEqual(fileNames(files[5]), ["parley/client/v1/types.proto", "google/protobuf/timestamp.proto"]);
    assert.deepEqual(fileNames(files[6]), ["grpc/health/v1/health.proto"]);
    assert.deepEqual(fileNames(files[7]), ["grpc/health/v1/health.proto"]);
    assert.deepEqual(fileNames(files[8]), ["grpc/reflection/v1alpha/reflection.proto"]);
    const first = files[0].messageResponse;
    assert.equal(first.case, "fileDescriptorResponse");
    const auth = fromBinary(FileDescriptorProtoSchema, first.value.fileDescriptorProto[0]);
    assert.deepEqual(auth.service.map((s) => s.name), ["AuthService"]);
    assert.deepEqual(auth.dependency, ["google/protobuf/timestamp.proto", "parley/client/v1/types.proto"]);
  });

  it("reports unknown names and empty requests as error responses, not stream errors", async () => {
    const responses = await ask([
      { messageRequest: { case: "fileContainingSymbol", value: "parley.client.v1.Nope" } },
      { messageRequest: { case: "fileByFilename", value: "nope.proto" } },
      { messageRequest: { case: "fileContainingExtension", value: { containingType: "parley.client.v1.User", extensionNumber: 100 } } },
      { messageRequest: { case: "allExtensionNumbersOfType", value: "parley.client.v1.Nope" } },
      { messageRequest: { case: undefined } },
      { messageRequest: { case: "allExtensionNumbersOfType", value: ".parley.client.v1.User" } },
      { messageRequest: { case: "listServices", value: "*" } },
    ]);
    assert.deepEqual(responses.slice(0, 5).map(errorCode), [Code.NotFound, Code.NotFound, Code.NotFound, Code.NotFound, Code.InvalidArgument]);
    assert.equal(responses[0].originalRequest?.messageRequest.value, "parley.client.v1.Nope");
    const numbers = responses[5].messageResponse;
    assert.equal(numbers.case, "allExtensionNumbersResponse");
    assert.deepEqual(numbers.value, create(reflectionV1.ExtensionNumberResponseSchema, { baseTypeName: "parley.client.v1.User" }));
    assert.equal(responses[6].messageResponse.case, "listServicesResponse");
  });

  it("speaks v1alpha too", async () => {
    const client = createClient(reflectionV1alpha.ServerReflection, transport);
    async function* input() {
      yield create(reflectionV1alpha.ServerReflectionRequestSchema, {
        host: "h",
        messageRequest: { case: "fileContainingSymbol", value: "parley.client.v1.Tokens" },
      });
    }
    const out: reflectionV1alpha.ServerReflectionResponse[] = [];
    for await (const res of client.serverReflectionInfo(input())) out.push(res);
    assert.equal(out.length, 1);
    assert.equal(out[0].$typeName, "grpc.reflection.v1alpha.ServerReflectionResponse");
    assert.equal(out[0].validHost, "h");
    assert.equal(out[0].messageResponse.case, "fileDescriptorResponse");
    assert.deepEqual(
      out[0].messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b).name),
      authFiles,
    );
  });
});
