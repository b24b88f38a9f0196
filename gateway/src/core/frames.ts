import { create, fromBinary, fromJsonString, toJsonString, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ClientFrameSchema,
  ErrorCode,
  ServerFrameSchema,
  type ClientFrame,
  type ServerFrame,
} from "../../../gen/parley/client/v1/frames_pb.js";
import type { Encoding } from "./protocol.js";
import { fastToBinary } from "../../../lib/fast-binary.js";

export type ServerFrameInit = MessageInitShape<typeof ServerFrameSchema>;

/** A decoded frame, or the error to answer with (`ref` when the frame decoded far enough to have one). */
export type Decoded = { ok: true; frame: ClientFrame } | { ok: false; code: ErrorCode; message: string; ref?: number };

const textDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Decodes one client frame: binary frames are protobuf, text frames the protobuf JSON
 * mapping. `data` is only valid during the call (uWS reuses it); decoding copies
 * everything it keeps. Fields this server does not know are skipped in both encodings,
 * so a frame kind added later is UNKNOWN_FRAME (not MALFORMED_FRAME) whichever way it
 * comes.
 */
export function decodeClientFrame(data: ArrayBuffer, isBinary: boolean, maxBytes: number): Decoded {
  if (data.byteLength > maxBytes) {
    return { ok: false, code: ErrorCode.FRAME_TOO_LARGE, message: `frame of ${data.byteLength} bytes exceeds ${maxBytes}` };
  }
  let frame: ClientFrame;
  try {
    frame = isBinary
      ? fromBinary(ClientFrameSchema, new Uint8Array(data))
      : fromJsonString(ClientFrameSchema, textDecoder.decode(data), { ignoreUnknownFields: true });
  } catch (err) {
    return { ok: false, code: ErrorCode.MALFORMED_FRAME, message: `cannot decode frame: ${(err as Error).message}` };
  }
  if (frame.kind.case === undefined) {
    return { ok: false, code: ErrorCode.UNKNOWN_FRAME, message: "frame has no kind this server knows", ref: frame.ref };
  }
  return { ok: true, frame };
}

export function encodeServerFrame(frame: ServerFrame, encoding: Encoding): Uint8Array | string {
  return encoding === "binary" ? fastToBinary(ServerFrameSchema, frame) : toJsonString(ServerFrameSchema, frame);
}

export function serverFrame(init: ServerFrameInit): ServerFrame {
  return create(ServerFrameSchema, init);
}

const RETRYABLE = new Set([ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL]);

export function errorFrame(code: ErrorCode, message: string, ref = 0, clientMsgId = ""): ServerFrame {
  return serverFrame({ ref, kind: { case: "error", value: { code, message, retryable: RETRYABLE.has(code), clientMsgId } } });
}

export function pongFrame(ref: number, nonce: bigint): ServerFrame {
  return serverFrame({ ref, kind: { case: "pong", value: { nonce, serverTime: timestampNow() } } });
}

/** The error code a client sees for an RPC failure behind the gateway. */
export function errorCodeOf(err: unknown): ErrorCode {
  switch (ConnectError.from(err).code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return ErrorCode.INVALID_ARGUMENT;
    case Code.PermissionDenied:
      return ErrorCode.PERMISSION_DENIED;
    case Code.NotFound:
      return ErrorCode.NOT_FOUND;
    case Code.Unauthenticated:
      return ErrorCode.UNAUTHENTICATED;
    case Code.ResourceExhausted:
      return ErrorCode.RATE_LIMITED;
    case Code.Unavailable:
    case Code.DeadlineExceeded:
    case Code.Aborted:
      return ErrorCode.UNAVAILABLE;
    default:
      return ErrorCode.INTERNAL;
  }
}
