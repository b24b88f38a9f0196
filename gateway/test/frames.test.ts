import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, equals, fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ClientFrameSchema,
  ErrorCode,
  ServerFrameSchema,
  type ClientFrame,
  type ServerFrame,
} from "../../gen/parley/client/v1/frames_pb.js";
import { ConfigError } from "../../lib/env.js";
import { loadConfig, originAllowed } from "../src/config.js";
import { decodeClientFrame, encodeServerFrame, errorCodeOf, errorFrame, pongFrame, serverFrame, type Decoded } from "../src/core/frames.js";
import { BEARER_PREFIX, negotiate, SUBPROTOCOL_BINARY, SUBPROTOCOL_JSON, type Negotiated } from "../src/core/protocol.js";

const MAX = 16 * 1024;
const CLIENT_MSG_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
const CONVERSATION_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c";

/** What uWS hands the core: an ArrayBuffer holding exactly the frame. */
function buf(data: Uint8Array | string): ArrayBuffer {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  return bytes.slice().buffer;
}

function decodedFrame(d: Decoded): ClientFrame {
  assert.ok(d.ok, `expected a frame, got ${d.ok ? "" : `${ErrorCode[d.code]}: ${d.message}`}`);
  return d.frame;
}

function failure(d: Decoded): { code: ErrorCode; message: string; ref?: number } {
  assert.ok(!d.ok, "expected a decode failure");
  return d;
}

const CLIENT_FRAMES: [string, ClientFrame][] = [
  [
    "send",
    create(ClientFrameSchema, {
      ref: 7,
      kind: { case: "send", value: { clientMsgId: CLIENT_MSG_ID, conversationId: CONVERSATION_ID, body: "héllo 👋 <b>" } },
    }),
  ],
  ["ping", create(ClientFrameSchema, { ref: 4_294_967_295, kind: { case: "ping", value: { nonce: 18_446_744_073_709_551_615n } } })],
  ["ping with ref 0 and nonce 0", create(ClientFrameSchema, { kind: { case: "ping", value: {} } })],
];

describe("decodeClientFrame", () => {
  for (const [name, frame] of CLIENT_FRAMES) {
    it(`binary round trip: ${name}`, () => {
      const got = decodedFrame(decodeClientFrame(buf(toBinary(ClientFrameSchema, frame)), true, MAX));
      assert.ok(equals(ClientFrameSchema, got, frame));
    });
    it(`JSON round trip: ${name}`, () => {
      const got = decodedFrame(decodeClientFrame(buf(toJsonString(ClientFrameSchema, frame)), false, MAX));
      assert.ok(equals(ClientFrameSchema, got, frame));
    });
  }

  it("reads the JSON a person types (camelCase or proto names, 64-bit numbers as strings)", () => {
    const f = decodedFrame(
      decodeClientFrame(buf(`{"ref": 3, "send": {"client_msg_id": "${CLIENT_MSG_ID}", "conversationId": "${CONVERSATION_ID}", "body": "hi"}}`), false, MAX),
    );
    assert.equal(f.ref, 3);
    assert.equal(f.kind.case, "send");
    assert.equal(f.kind.case === "send" && f.kind.value.clientMsgId, CLIENT_MSG_ID);
    const p = decodedFrame(decodeClientFrame(buf(`{"ping": {"nonce": "12345678901234567890"}}`), false, MAX));
    assert.equal(p.kind.case === "ping" && p.kind.value.nonce, 12_345_678_901_234_567_890n);
  });

  it("copies what it keeps: the buffer may be reused after the call", () => {
    const bytes = toBinary(ClientFrameSchema, CLIENT_FRAMES[0]![1]);
    const data = buf(bytes);
    const f = decodedFrame(decodeClientFrame(data, true, MAX));
    new Uint8Array(data).fill(0);
    assert.ok(equals(ClientFrameSchema, f, CLIENT_FRAMES[0]![1]));
  });

  const malformed: [string, ArrayBuffer, boolean][] = [
    ["truncated protobuf", buf(new Uint8Array([0xff, 0xff, 0xff])), true],
    ["a length-delimited field longer than the frame", buf(new Uint8Array([0x52, 0x10, 0x0a])), true],
    ["an illegal wire type", buf(new Uint8Array([0x0f])), true],
    ["invalid UTF-8 in a protobuf string (send.body)", buf(new Uint8Array([0x52, 0x04, 0x1a, 0x02, 0xc3, 0x28])), true],
    ["not JSON", buf("{not json"), false],
    ["JSON that is not an object", buf("[1,2]"), false],
    ["a JSON field of the wrong type", buf(`{"ref": "seven"}`), false],
    ["a JSON kind of the wrong type", buf(`{"send": "hi"}`), false],
    ["invalid UTF-8 in a text frame", buf(new Uint8Array([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d])), false],
    ["a lone surrogate encoded in a text frame", buf(new Uint8Array([0xed, 0xa0, 0x80])), false],
  ];
  for (const [name, data, isBinary] of malformed) {
    it(`MALFORMED_FRAME for ${name}`, () => {
      const f = failure(decodeClientFrame(data, isBinary, MAX));
      assert.equal(f.code, ErrorCode.MALFORMED_FRAME, f.message);
      assert.ok(f.message.length > 0);
    });
  }

  it("UNKNOWN_FRAME, with the ref, for a binary frame carrying only a field this server does not know", () => {
    // ref = 5, then field 90 (a kind added later), varint 1
    const f = failure(decodeClientFrame(buf(new Uint8Array([0x08, 0x05, 0xd0, 0x05, 0x01])), true, MAX));
    assert.equal(f.code, ErrorCode.UNKNOWN_FRAME);
    assert.equal(f.ref, 5);
    assert.equal(failure(decodeClientFrame(buf(new Uint8Array([0xd0, 0x05, 0x01])), true, MAX)).code, ErrorCode.UNKNOWN_FRAME);
  });

  it("UNKNOWN_FRAME, with the ref, for a JSON frame carrying a kind this server does not know (same as binary)", () => {
    const f = failure(decodeClientFrame(buf(`{"ref": 9, "teleport": {"conversationId": "${CONVERSATION_ID}"}}`), false, MAX));
    assert.equal(f.code, ErrorCode.UNKNOWN_FRAME, f.message);
    assert.equal(f.ref, 9);
  });

  it("UNKNOWN_FRAME for frames with no kind at all (empty binary, {})", () => {
    assert.equal(failure(decodeClientFrame(new ArrayBuffer(0), true, MAX)).code, ErrorCode.UNKNOWN_FRAME);
    assert.equal(failure(decodeClientFrame(buf("{}"), false, MAX)).code, ErrorCode.UNKNOWN_FRAME);
  });

  it("a known kind next to an unknown field decodes in both encodings", () => {
    const bin = new Uint8Array([...toBinary(ClientFrameSchema, CLIENT_FRAMES[1]![1]), 0xd0, 0x05, 0x01]);
    assert.equal(decodedFrame(decodeClientFrame(buf(bin), true, MAX)).kind.case, "ping");
    assert.equal(decodedFrame(decodeClientFrame(buf(`{"ping": {"nonce": "1"}, "later": true}`), false, MAX)).kind.case, "ping");
  });

  it("FRAME_TOO_LARGE above the limit, in both encodings, before decoding; exactly the limit is fine", () => {
    const body = "x".repeat(MAX);
    const frame = create(ClientFrameSchema, { kind: { case: "send", value: { clientMsgId: CLIENT_MSG_ID, conversationId: CONVERSATION_ID, body } } });
    const bin = toBinary(ClientFrameSchema, frame);
    const big = failure(decodeClientFrame(buf(bin), true, MAX));
    assert.equal(big.code, ErrorCode.FRAME_TOO_LARGE);
    assert.match(big.message, new RegExp(String(bin.byteLength)));
    assert.equal(failure(decodeClientFrame(buf(toJsonString(ClientFrameSchema, frame)), false, MAX)).code, ErrorCode.FRAME_TOO_LARGE);
    // Garbage over the limit is too large, not malformed.
    assert.equal(failure(decodeClientFrame(new ArrayBuffer(MAX + 1), true, MAX)).code, ErrorCode.FRAME_TOO_LARGE);
    assert.equal(decodedFrame(decodeClientFrame(buf(bin), true, bin.byteLength)).kind.case, "send");
  });
});

describe("server frames", () => {
  const sentAt = timestampFromMs(1_700_000_000_123);
  const frames: [string, ServerFrame][] = [
    [
      "hello",
      serverFrame({
        kind: {
          case: "hello",
          value: { userId: "u", deviceId: "d", sessionId: "s", gatewayId: "gw-1", maxFrameBytes: 16384, idleTimeoutSeconds: 60 },
        },
      }),
    ],
    [
      "ack",
      serverFrame({
        ref: 12,
        kind: {
          case: "ack",
          value: { clientMsgId: CLIENT_MSG_ID, conversationId: CONVERSATION_ID, seq: 9_007_199_254_740_993n, messageId: "m", sentAt, duplicate: true },
        },
      }),
    ],
    [
      "message",
      serverFrame({
        kind: {
          case: "message",
          value: { conversationId: CONVERSATION_ID, seq: 1n, messageId: "m", senderId: "u", senderDeviceId: "d", clientMsgId: CLIENT_MSG_ID, body: "🙂", sentAt },
        },
      }),
    ],
    ["error", errorFrame(ErrorCode.PERMISSION_DENIED, "no", 3, CLIENT_MSG_ID)],
    ["pong", pongFrame(5, 42n)],
  ];

  for (const [name, frame] of frames) {
    it(`encodeServerFrame round trips ${name} in both encodings`, () => {
      const bin = encodeServerFrame(frame, "binary");
      assert.ok(bin instanceof Uint8Array);
      assert.ok(equals(ServerFrameSchema, fromBinary(ServerFrameSchema, bin), frame));
      const json = encodeServerFrame(frame, "json");
      assert.equal(typeof json, "string");
      assert.ok(equals(ServerFrameSchema, fromJsonString(ServerFrameSchema, json as string), frame));
    });
  }

  it("JSON frames use the protobuf JSON mapping (camelCase, 64-bit as strings, RFC 3339 times)", () => {
    const json = JSON.parse(encodeServerFrame(frames[1]![1], "json") as string) as { ref: number; ack: Record<string, unknown> };
    assert.equal(json.ref, 12);
    assert.equal(json.ack.seq, "9007199254740993");
    assert.equal(json.ack.clientMsgId, CLIENT_MSG_ID);
    assert.equal(json.ack.sentAt, "2023-11-14T22:13:20.123Z");
  });

  it("errorFrame sets retryable exactly for RATE_LIMITED, UNAVAILABLE and INTERNAL, and carries ref and client_msg_id", () => {
    const retryable = new Set([ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL]);
    const codes = Object.values(ErrorCode).filter((v): v is ErrorCode => typeof v === "number");
    assert.ok(codes.length >= 11);
    for (const code of codes) {
      const f = errorFrame(code, "m", 4, "c");
      assert.equal(f.ref, 4);
      assert.equal(f.kind.case, "error");
      if (f.kind.case !== "error") continue;
      assert.equal(f.kind.value.code, code);
      assert.equal(f.kind.value.message, "m");
      assert.equal(f.kind.value.clientMsgId, "c");
      assert.equal(f.kind.value.retryable, retryable.has(code), ErrorCode[code]);
    }
    const plain = errorFrame(ErrorCode.MALFORMED_FRAME, "bad");
    assert.equal(plain.ref, 0);
    assert.equal(plain.kind.case === "error" && plain.kind.value.clientMsgId, "");
  });

  it("pongFrame echoes ref and nonce and stamps the server time", () => {
    const before = Date.now();
    const f = pongFrame(77, 123n);
    assert.equal(f.ref, 77);
    assert.equal(f.kind.case, "pong");
    if (f.kind.case !== "pong") return;
    assert.equal(f.kind.value.nonce, 123n);
    const t = timestampMs(f.kind.value.serverTime!);
    assert.ok(t >= before - 1000 && t <= Date.now() + 1000);
  });

  it("errorCodeOf maps every Connect code", () => {
    const expected = new Map<Code, ErrorCode>([
      [Code.InvalidArgument, ErrorCode.INVALID_ARGUMENT],
      [Code.OutOfRange, ErrorCode.INVALID_ARGUMENT],
      [Code.PermissionDenied, ErrorCode.PERMISSION_DENIED],
      [Code.NotFound, ErrorCode.NOT_FOUND],
      [Code.Unauthenticated, ErrorCode.UNAUTHENTICATED],
      [Code.ResourceExhausted, ErrorCode.RATE_LIMITED],
      [Code.Unavailable, ErrorCode.UNAVAILABLE],
      [Code.DeadlineExceeded, ErrorCode.UNAVAILABLE],
      [Code.Aborted, ErrorCode.UNAVAILABLE],
      [Code.Canceled, ErrorCode.INTERNAL],
      [Code.Unknown, ErrorCode.INTERNAL],
      [Code.AlreadyExists, ErrorCode.INTERNAL],
      [Code.FailedPrecondition, ErrorCode.INTERNAL],
      [Code.Unimplemented, ErrorCode.INTERNAL],
      [Code.Internal, ErrorCode.INTERNAL],
      [Code.DataLoss, ErrorCode.INTERNAL],
    ]);
    const allCodes = Object.values(Code).filter((v): v is Code => typeof v === "number");
    assert.equal(expected.size, allCodes.length, "every Connect code is listed");
    for (const [code, want] of expected) assert.equal(errorCodeOf(new ConnectError("x", code)), want, Code[code]);
    assert.equal(errorCodeOf(new Error("boom")), ErrorCode.INTERNAL);
    assert.equal(errorCodeOf("a string"), ErrorCode.INTERNAL);
  });
});

describe("negotiate", () => {
  function ok(r: Negotiated | string): Negotiated {
    assert.equal(typeof r, "object", `expected an offer, got "${String(r)}"`);
    return r as Negotiated;
  }

  it("no subprotocol: binary, answers with none", () => {
    assert.deepEqual(ok(negotiate("", "")), { encoding: "binary", protocol: "", token: undefined });
    assert.deepEqual(ok(negotiate("  ", "")), { encoding: "binary", protocol: "", token: undefined });
  });

  it("chooses the encoding subprotocol; the first offered wins", () => {
    assert.deepEqual(ok(negotiate(SUBPROTOCOL_BINARY, "")), { encoding: "binary", protocol: SUBPROTOCOL_BINARY, token: undefined });
    assert.deepEqual(ok(negotiate(SUBPROTOCOL_JSON, "")), { encoding: "json", protocol: SUBPROTOCOL_JSON, token: undefined });
    assert.equal(ok(negotiate("parley.v1.json, parley.v1", "")).encoding, "json");
    assert.equal(ok(negotiate("parley.v1,parley.v1.json", "")).encoding, "binary");
    assert.equal(ok(negotiate("chat.v2, parley.v1.json", "")).protocol, SUBPROTOCOL_JSON);
  });

  it("takes the token from a bearer.<token> entry and never answers with it", () => {
    const r = ok(negotiate(`parley.v1.json, ${BEARER_PREFIX}eyJ.abc-_.def`, ""));
    assert.deepEqual(r, { encoding: "json", protocol: SUBPROTOCOL_JSON, token: "eyJ.abc-_.def" });
    assert.equal(ok(negotiate("bearer.t1 , parley.v1", "")).token, "t1");
    assert.equal(ok(negotiate("parley.v1, bearer.", "")).token, "", "an empty token is not a token (the server refuses it)");
  });

  it("takes the token from Authorization: Bearer (any case); the subprotocol entry wins when both are there", () => {
    assert.equal(ok(negotiate("", "Bearer abc")).token, "abc");
    assert.equal(ok(negotiate("parley.v1", "bearer   abc")).token, "abc");
    assert.equal(ok(negotiate("parley.v1, bearer.fromproto", "Bearer fromheader")).token, "fromproto");
    assert.equal(ok(negotiate("", "Basic dXNlcjpwYXNz")).token, undefined);
    assert.equal(ok(negotiate("", "Bearer")).token, undefined);
    assert.equal(ok(negotiate("", "Bearer a b")).token, undefined);
  });

  it("refuses offers without an encoding subprotocol", () => {
    for (const offer of ["chat", "bearer.tok", "parley.v2", "parley.v1x", "PARLEY.V1"]) {
      const r = negotiate(offer, "Bearer t");
      assert.equal(typeof r, "string", offer);
      assert.match(r as string, /parley\.v1/);
    }
  });
});

describe("gateway config", () => {
  it("originAllowed: no Origin (native clients) is always allowed", () => {
    assert.equal(originAllowed("", []), true);
  });

  it("originAllowed: exact entries and *", () => {
    assert.equal(originAllowed("https://chat.example.com", ["https://chat.example.com"]), true);
    assert.equal(originAllowed("https://chat.example.com:8443", ["https://chat.example.com"]), false);
    assert.equal(originAllowed("http://chat.example.com", ["https://chat.example.com"]), false);
    assert.equal(originAllowed("https://evil.example", ["*"]), true);
    assert.equal(originAllowed("null", ["http://localhost:*"]), false);
  });

  it("originAllowed: scheme://host:* allows that host on any port and nothing else", () => {
    const allowed = ["http://localhost:*", "http://127.0.0.1:*"];
    for (const o of ["http://localhost", "http://localhost:3000", "http://127.0.0.1:5173", "http://localhost:1"]) {
      assert.equal(originAllowed(o, allowed), true, o);
    }
    for (const o of [
      "https://localhost:3000",
      "http://localhost.evil.com",
      "http://localhost.evil.com:3000",
      "http://localhost:3000.evil.com",
      "http://localhost:",
      "http://localhost:3000/",
      "http://localhost:abc",
      "http://evil.com#http://localhost:1",
      "http://127.0.0.10:80",
    ]) {
      assert.equal(originAllowed(o, allowed), false, o);
    }
  });

  it("loadConfig: defaults", () => {
    const cfg = loadConfig({});
    assert.equal(cfg.id, "gw-1");
    assert.equal(cfg.host, "127.0.0.1");
    assert.equal(cfg.publicPort, 7000);
    assert.equal(cfg.internalPort, 7200);
    assert.deepEqual(cfg.allowedOrigins, ["http://localhost:*", "http://127.0.0.1:*"]);
    assert.equal(cfg.maxFrameBytes, 16 * 1024);
    assert.equal(cfg.hardMaxFrameBytes, 64 * 1024);
    assert.equal(cfg.framesPerSecond, 100);
    assert.equal(cfg.frameBurst, 500);
    assert.equal(cfg.maxInFlightSends, 256);
    assert.equal(cfg.idleTimeoutSeconds, 60);
    assert.equal(cfg.presenceIntervalMs, 30_000);
  });

  it("loadConfig: reads the environment (ports 0, origins list trimmed, limits)", () => {
    const cfg = loadConfig({
      PARLEY_GATEWAY_ID: "gw-7",
      PARLEY_GATEWAY_PORT: "0",
      PARLEY_GATEWAY_INTERNAL_PORT: " 0 ",
      PARLEY_ALLOWED_ORIGINS: " https://a.example , ,http://b.example:* ",
      PARLEY_MAX_FRAME_BYTES: "2048",
      PARLEY_HARD_MAX_FRAME_BYTES: "2048",
      PARLEY_FRAMES_PER_SECOND: "5",
      PARLEY_FRAME_BURST: "10",
      PARLEY_PRESENCE_REPORT_MS: "100",
      PARLEY_SESSION_URL: "http://10.0.0.1:1",
    });
    assert.equal(cfg.id, "gw-7");
    assert.equal(cfg.publicPort, 0);
    assert.equal(cfg.internalPort, 0);
    assert.deepEqual(cfg.allowedOrigins, ["https://a.example", "http://b.example:*"]);
    assert.equal(cfg.maxFrameBytes, 2048);
    assert.equal(cfg.hardMaxFrameBytes, 2048);
    assert.equal(cfg.framesPerSecond, 5);
    assert.equal(cfg.frameBurst, 10);
    assert.equal(cfg.presenceIntervalMs, 100);
    assert.equal(cfg.sessionUrl, "http://10.0.0.1:1");
  });

  it("loadConfig: refuses bad numbers and a hard frame limit below the soft one", () => {
    const bad: Record<string, string>[] = [
      { PARLEY_GATEWAY_PORT: "70000" },
      { PARLEY_GATEWAY_PORT: "-1" },
      { PARLEY_GATEWAY_PORT: "80a" },
      { PARLEY_GATEWAY_INTERNAL_PORT: "1.5" },
      { PARLEY_MAX_FRAME_BYTES: "100" },
      { PARLEY_IDLE_TIMEOUT_SECONDS: "7" },
      { PARLEY_FRAMES_PER_SECOND: "0" },
      { PARLEY_PRESENCE_REPORT_MS: "99" },
      { PARLEY_MAX_FRAME_BYTES: "32768", PARLEY_HARD_MAX_FRAME_BYTES: "16384" },
    ];
    for (const env of bad) assert.throws(() => loadConfig(env), Error, JSON.stringify(env));
    assert.throws(() => loadConfig({ PARLEY_GATEWAY_PORT: "x" }), ConfigError);
    assert.throws(() => loadConfig({ PARLEY_MAX_FRAME_BYTES: "32768", PARLEY_HARD_MAX_FRAME_BYTES: "16384" }), /PARLEY_HARD_MAX_FRAME_BYTES/);
  });
});
