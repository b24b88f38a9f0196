/**
 * A minimal OTLP/HTTP trace collector for tests and benchmarks: `POST /v1/traces` with
 * an ExportTraceServiceRequest in protobuf (what @opentelemetry/exporter-trace-otlp-proto
 * sends) or JSON, optionally gzipped. It decodes the fields a test asserts on (ids,
 * parent, name, kind, times, attributes, links, status, the resource's service) and
 * keeps them, or only counts them (`keep: false`, for benchmarks).
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { gunzipSync } from "node:zlib";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

export type AttributeValue = string | number | boolean | bigint | AttributeValue[] | undefined;

export interface CollectedSpan {
  traceId: string;
  spanId: string;
  /** "" for a root span. */
  parentSpanId: string;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, AttributeValue>;
  links: { traceId: string; spanId: string }[];
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  statusCode: number;
  statusMessage: string;
  /** The resource's `service.name` and `service.instance.id`. */
  service: string;
  instance: string;
}

export interface OtlpCollector {
  /** The traces endpoint: `http://127.0.0.1:<port>/v1/traces`. */
  readonly tracesUrl: string;
  /** The base for OTEL_EXPORTER_OTLP_ENDPOINT. */
  readonly endpoint: string;
  /** Spans received so far (empty with `keep: false`). */
  readonly spans: CollectedSpan[];
  /** Spans and export requests received so far. */
  readonly counts: { spans: number; requests: number; bytes: number };
  /** Called after every export request. */
  onExport(listener: () => void): () => void;
  close(): Promise<void>;
}

/** Starts a collector on 127.0.0.1 (a free port unless given). */
export async function startOtlpCollector(o: { keep?: boolean; port?: number } = {}): Promise<OtlpCollector> {
  const keep = o.keep ?? true;
  const spans: CollectedSpan[] = [];
  const counts = { spans: 0, requests: 0, bytes: 0 };
  const listeners = new Set<() => void>();
  const server = http.createServer((req, res) => {
    if (req.method !== "POST" || (req.url ?? "").split("?")[0] !== "/v1/traces") {
      res.writeHead(404).end();
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      let body = Buffer.concat(chunks);
      try {
        if (req.headers["content-encoding"] === "gzip") body = gunzipSync(body);
        const json = (req.headers["content-type"] ?? "").includes("json");
        counts.requests++;
        counts.bytes += body.length;
        const got = json ? decodeJson(body.toString("utf8")) : decodeRequest(body);
        counts.spans += got.length;
        if (keep) spans.push(...got);
      } catch (err) {
        res.writeHead(400, { "content-type": "text/plain" }).end(String(err));
        return;
      }
      // An empty ExportTraceServiceResponse.
      res.writeHead(200, { "content-type": (req.headers["content-type"] ?? "").includes("json") ? "application/json" : "application/x-protobuf" });
      res.end((req.headers["content-type"] ?? "").includes("json") ? "{}" : undefined);
      for (const l of [...listeners]) l();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port ?? 0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    tracesUrl: `${endpoint}/v1/traces`,
    endpoint,
    spans,
    counts,
    onExport(listener) {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

// ---------------------------------------------------------------- protobuf

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** Calls `field(number, wireType)` for each field of a message; `field` must read or skip it. */
function eachField(r: BinaryReader, end: number, field: (no: number, wt: WireType) => void): void {
  while (r.pos < end) {
    const [no, wt] = r.tag();
    field(no, wt);
  }
}

function sub(r: BinaryReader): { r: BinaryReader; end: number } {
  const len = r.uint32();
  return { r, end: r.pos + len };
}

/** opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest → spans. */
export function decodeRequest(bytes: Uint8Array): CollectedSpan[] {
  const out: CollectedSpan[] = [];
  const r = new BinaryReader(bytes);
  eachField(r, bytes.length, (no, wt) => {
    if (no === 1 && wt === WireType.LengthDelimited) decodeResourceSpans(r, out);
    else r.skip(wt);
  });
  return out;
}

function decodeResourceSpans(r: BinaryReader, out: CollectedSpan[]): void {
  const { end } = sub(r);
  let resource: Record<string, AttributeValue> = {};
  const scopes: Omit<CollectedSpan, "service" | "instance">[][] = [];
  eachField(r, end, (no, wt) => {
    if (no === 1 && wt === WireType.LengthDelimited) {
      const s = sub(r);
      eachField(r, s.end, (n2, w2) => {
        if (n2 === 1 && w2 === WireType.LengthDelimited) {
          const [k, v] = decodeKeyValue(r);
          resource = { ...resource, [k]: v };
        } else r.skip(w2);
      });
    } else if (no === 2 && wt === WireType.LengthDelimited) {
      const s = sub(r);
      const list: Omit<CollectedSpan, "service" | "instance">[] = [];
      eachField(r, s.end, (n2, w2) => {
        if (n2 === 2 && w2 === WireType.LengthDelimited) list.push(decodeSpan(r));
        else r.skip(w2);
      });
      scopes.push(list);
    } else r.skip(wt);
  });
  const service = String(resource["service.name"] ?? "");
  const instance = String(resource["service.instance.id"] ?? "");
  for (const list of scopes) for (const s of list) out.push({ ...s, service, instance });
}

function decodeSpan(r: BinaryReader): Omit<CollectedSpan, "service" | "instance"> {
  const { end } = sub(r);
  const span: Omit<CollectedSpan, "service" | "instance"> = {
    traceId: "",
    spanId: "",
    parentSpanId: "",
    name: "",
    kind: 0,
    startNs: 0n,
    endNs: 0n,
    attributes: {},
    links: [],
    statusCode: 0,
    statusMessage: "",
  };
  eachField(r, end, (no, wt) => {
    switch (no) {
      case 1:
        span.traceId = hex(r.bytes());
        return;
      case 2:
        span.spanId = hex(r.bytes());
        return;
      case 4:
        span.parentSpanId = hex(r.bytes());
        return;
      case 5:
        span.name = r.string();
        return;
      case 6:
        span.kind = r.int32();
        return;
      case 7:
        span.startNs = BigInt(r.fixed64());
        return;
      case 8:
        span.endNs = BigInt(r.fixed64());
        return;
      case 9: {
        const [k, v] = decodeKeyValue(r);
        span.attributes[k] = v;
        return;
      }
      case 13: {
        const s = sub(r);
        const link = { traceId: "", spanId: "" };
        eachField(r, s.end, (n2, w2) => {
          if (n2 === 1) link.traceId = hex(r.bytes());
          else if (n2 === 2) link.spanId = hex(r.bytes());
          else r.skip(w2);
        });
        span.links.push(link);
        return;
      }
      case 15: {
        const s = sub(r);
        eachField(r, s.end, (n2, w2) => {
          if (n2 === 2) span.statusMessage = r.string();
          else if (n2 === 3) span.statusCode = r.int32();
          else r.skip(w2);
        });
        return;
      }
      default:
        r.skip(wt);
    }
  });
  return span;
}

function decodeKeyValue(r: BinaryReader): [string, AttributeValue] {
  const { end } = sub(r);
  let key = "";
  let value: AttributeValue;
  eachField(r, end, (no, wt) => {
    if (no === 1) key = r.string();
    else if (no === 2 && wt === WireType.LengthDelimited) value = decodeAnyValue(r);
    else r.skip(wt);
  });
  return [key, value];
}

function decodeAnyValue(r: BinaryReader): AttributeValue {
  const { end } = sub(r);
  let value: AttributeValue;
  eachField(r, end, (no, wt) => {
    switch (no) {
      case 1:
        value = r.string();
        return;
      case 2:
        value = r.bool();
        return;
      case 3: {
        const v = BigInt(r.int64());
        value = v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
        return;
      }
      case 4:
        value = r.double();
        return;
      case 5: {
        const s = sub(r);
        const list: AttributeValue[] = [];
        eachField(r, s.end, (n2, w2) => {
          if (n2 === 1 && w2 === WireType.LengthDelimited) list.push(decodeAnyValue(r));
          else r.skip(w2);
        });
        value = list;
        return;
      }
      default:
        r.skip(wt);
    }
  });
  return value;
}

// ---------------------------------------------------------------- JSON (OTLP/HTTP JSON encoding)

interface JsonAnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number;
  arrayValue?: { values?: JsonAnyValue[] };
}
interface JsonKeyValue {
  key: string;
  value?: JsonAnyValue;
}

function jsonValue(v: JsonAnyValue | undefined): AttributeValue {
  if (!v) return undefined;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(jsonValue);
  return undefined;
}

function jsonAttributes(list: JsonKeyValue[] | undefined): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = {};
  for (const kv of list ?? []) out[kv.key] = jsonValue(kv.value);
  return out;
}

/** The JSON encoding of ExportTraceServiceRequest → spans (ids are hex there). */
export function decodeJson(text: string): CollectedSpan[] {
  const req = JSON.parse(text) as {
    resourceSpans?: {
      resource?: { attributes?: JsonKeyValue[] };
      scopeSpans?: {
        spans?: {
          traceId: string;
          spanId: string;
          parentSpanId?: string;
          name: string;
          kind?: number;
          startTimeUnixNano?: string;
          endTimeUnixNano?: string;
          attributes?: JsonKeyValue[];
          links?: { traceId: string; spanId: string }[];
          status?: { code?: number; message?: string };
        }[];
      }[];
    }[];
  };
  const out: CollectedSpan[] = [];
  for (const rs of req.resourceSpans ?? []) {
    const resource = jsonAttributes(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: s.traceId,
          spanId: s.spanId,
          parentSpanId: s.parentSpanId ?? "",
          name: s.name,
          kind: s.kind ?? 0,
          startNs: BigInt(s.startTimeUnixNano ?? 0),
          endNs: BigInt(s.endTimeUnixNano ?? 0),
          attributes: jsonAttributes(s.attributes),
          links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId })),
          statusCode: s.status?.code ?? 0,
          statusMessage: s.status?.message ?? "",
          service: String(resource["service.name"] ?? ""),
          instance: String(resource["service.instance.id"] ?? ""),
        });
      }
    }
  }
  return out;
}
