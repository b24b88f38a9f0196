import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";

export interface GrpcJsCallOptions {
  /** Deadline for the call; defaults to 10 s so a broken server fails the test, not hangs it. */
  timeoutMs?: number;
  /** Request metadata (ASCII values). */
  metadata?: Record<string, string>;
  /** grpc-js channel options, e.g. `{ "grpc.default_compression_algorithm": 2 }` for gzip. */
  channelOptions?: grpc.ChannelOptions;
}

/**
 * Calls one unary method of a protobuf-es service through @grpc/grpc-js (an independent
 * gRPC implementation), with protobuf-es doing the (de)serialization: no proto-loader.
 * `url` is `http://host:port` (the scheme is dropped); `methodName` is the method's local
 * name as in the generated service (`notifyOffline`). Resolves with the decoded response;
 * rejects with grpc-js's `ServiceError` (`code` is a `grpc.status`, `details` the message).
 * Opens and closes its own channel.
 */
export async function grpcJsUnary<T extends GenServiceMethods, K extends keyof T & string>(
  url: string,
  service: GenService<T>,
  methodName: K,
  request: MessageInitShape<T[K]["input"]>,
  options: GrpcJsCallOptions = {},
): Promise<MessageShape<T[K]["output"]>> {
  const method = service.methods.find((m) => m.localName === methodName || m.name === methodName);
  if (!method) throw new Error(`${service.typeName} has no method ${methodName}`);
  if (method.methodKind !== "unary") throw new Error(`${service.typeName}.${method.name} is not unary`);
  const input = method.input as T[K]["input"];
  const output = method.output as T[K]["output"];
  const target = url.includes("://") ? new URL(url).host : url;
  const client = new grpc.Client(target, grpc.credentials.createInsecure(), options.channelOptions);
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(options.metadata ?? {})) metadata.set(key, value);
  try {
    return await new Promise<MessageShape<T[K]["output"]>>((resolve, reject) => {
      client.makeUnaryRequest(
        `/${service.typeName}/${method.name}`,
        (value: MessageShape<T[K]["input"]>) => Buffer.from(toBinary(input, value)),
        (bytes: Buffer) => fromBinary(output, bytes),
        create(input, request),
        metadata,
        { deadline: Date.now() + (options.timeoutMs ?? 10_000) },
        (err, value) => (err ? reject(err) : value ? resolve(value) : reject(new Error("grpc-js: no response"))),
      );
    });
  } finally {
    client.close();
  }
}
