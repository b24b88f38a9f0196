import { create, toBinary, type DescEnum, type DescExtension, type DescFile, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import type { Routes } from "./rpc.js";

/** What a reflection request asks, the same in v1 and v1alpha. */
type Question = v1.ServerReflectionRequest["messageRequest"] | v1alpha.ServerReflectionRequest["messageRequest"];

/** The `message_response` oneof, written once for both protocol versions. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

function error(code: Code, message: string): Answer {
  return { case: "errorResponse", value: { errorCode: code, errorMessage: message } };
}

/** Every file, symbol and extension reachable from the served services. Built once. */
class DescriptorIndex {
  readonly serviceNames: string[] = [];
  readonly #files = new Map<string, DescFile>();
  readonly #symbols = new Map<string, DescFile>();
  /** extendee type name → extension number → extension. */
  readonly #extensions = new Map<string, Map<number, DescExtension>>();
  readonly #encoded = new Map<DescFile, Uint8Array>();

  constructor(services: readonly DescService[]) {
    for (const service of services) {
      if (!this.serviceNames.includes(service.typeName)) this.serviceNames.push(service.typeName);
      this.#addFile(service.file);
    }
  }

  #addFile(file: DescFile): void {
    if (this.#files.has(file.proto.name)) return;
    this.#files.set(file.proto.name, file);
    for (const dep of file.dependencies) this.#addFile(dep);
    for (const service of file.services) {
      this.#symbols.set(service.typeName, file);
      for (const method of service.methods) this.#symbols.set(`${service.typeName}.${method.name}`, file);
    }
    for (const message of file.messages) this.#addMessage(file, message);
    for (const e of file.enums) this.#addEnum(file, e);
    for (const ext of file.extensions) this.#addExtension(file, ext);
  }

  #addMessage(file: DescFile, message: DescMessage): void {
    this.#symbols.set(message.typeName, file);
    for (const field of message.fields) this.#symbols.set(`${message.typeName}.${field.name}`, file);
    for (const oneof of message.oneofs) this.#symbols.set(`${message.typeName}.${oneof.name}`, file);
    for (const nested of message.nestedMessages) this.#addMessage(file, nested);
    for (const e of message.nestedEnums) this.#addEnum(file, e);
    for (const ext of message.nestedExtensions) this.#addExtension(file, ext);
  }

  #addEnum(file: DescFile, e: DescEnum): void {
    this.#symbols.set(e.typeName, file);
    // Enum values are scoped like siblings of their enum (C++ scoping rules).
    const scope = e.typeName.includes(".") ? e.typeName.slice(0, e.typeName.lastIndexOf(".") + 1) : "";
    for (const value of e.values) this.#symbols.set(scope + value.name, file);
  }

  #addExtension(file: DescFile, ext: DescExtension): void {
    this.#symbols.set(ext.typeName, file);
    let byNumber = this.#extensions.get(ext.extendee.typeName);
    if (!byNumber) this.#extensions.set(ext.extendee.typeName, (byNumber = new Map()));
    byNumber.set(ext.number, ext);
  }

  /** `file` first, then its transitive dependencies, each once, serialized. */
  #withDependencies(file: DescFile): Answer {
    const out: Uint8Array[] = [];
    const seen = new Set<DescFile>();
    const visit = (f: DescFile) => {
      if (seen.has(f)) return;
      seen.add(f);
      out.push(this.#encode(f));
      for (const dep of f.dependencies) visit(dep);
    };
    visit(file);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
  }

  #encode(file: DescFile): Uint8Array {
    let bytes = this.#encoded.get(file);
    if (!bytes) this.#encoded.set(file, (bytes = toBinary(FileDescriptorProtoSchema, file.proto)));
    return bytes;
  }

  answer(question: Question): Answer {
    switch (question.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.serviceNames.map((name) => ({ name })) } };
      case "fileByFilename": {
        const file = this.#files.get(question.value);
        return file ? this.#withDependencies(file) : error(Code.NotFound, `file not found: ${question.value}`);
      }
      case "fileContainingSymbol": {
        const symbol = question.value.startsWith(".") ? question.value.slice(1) : question.value;
        const file = this.#symbols.get(symbol);
        return file ? this.#withDependencies(file) : error(Code.NotFound, `symbol not found: ${question.value}`);
      }
      case "fileContainingExtension": {
        const extendee = stripDot(question.value.containingType);
        const ext = this.#extensions.get(extendee)?.get(question.value.extensionNumber);
        return ext
          ? this.#withDependencies(ext.file)
          : error(Code.NotFound, `extension ${question.value.extensionNumber} of ${extendee} not found`);
      }
      case "allExtensionNumbersOfType": {
        const typeName = stripDot(question.value);
        const known = this.#symbols.has(typeName) && this.#isMessage(typeName);
        if (!known) return error(Code.NotFound, `message type not found: ${question.value}`);
        const numbers = [...(this.#extensions.get(typeName)?.keys() ?? [])].sort((a, b) => a - b);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: typeName, extensionNumber: numbers } };
      }
      default:
        return error(Code.InvalidArgument, "empty or unsupported reflection request");
    }
  }

  #isMessage(typeName: string): boolean {
    const file = this.#symbols.get(typeName);
    if (!file) return false;
    const find = (messages: DescMessage[]): boolean =>
      messages.some((m) => m.typeName === typeName || find(m.nestedMessages));
    return find(file.messages);
  }
}

function stripDot(name: string): string {
  return name.startsWith(".") ? name.slice(1) : name;
}

/**
 * gRPC server reflection (`grpc.reflection.v1` and the older `v1alpha` still asked for by
 * some tools) for `services`, plus the health and reflection services themselves, so
 * grpcurl and `buf curl` work without local schemas. Every request gets exactly one
 * response; failures are `error_response`s, never a failed stream.
 */
export function reflectionRoutes(services: readonly DescService[]): Routes {
  const index = new DescriptorIndex([...services, Health, v1.ServerReflection, v1alpha.ServerReflection]);
  return (router) => {
    router.service(v1.ServerReflection, {
      async *serverReflectionInfo(requests) {
        for await (const req of requests) {
          yield create(v1.ServerReflectionResponseSchema, {
            validHost: req.host,
            originalRequest: req,
            messageResponse: index.answer(req.messageRequest),
          });
        }
      },
    });
    router.service(v1alpha.ServerReflection, {
      async *serverReflectionInfo(requests) {
        for await (const req of requests) {
          yield create(v1alpha.ServerReflectionResponseSchema, {
            validHost: req.host,
            originalRequest: req,
            messageResponse: index.answer(req.messageRequest),
          });
        }
      },
    });
  };
}
