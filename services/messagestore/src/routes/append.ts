import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AppendBatchResponseSchema,
  AppendResponseSchema,
  type AppendBatchRequest,
  type AppendBatchResponse,
  type AppendRequest,
  type AppendResponse,
} from "../../../../gen/parley/messagestore/v1/messagestore_service_pb.js";
import { settleEach } from "../../../../lib/batcher.js";
import { contextWith, endSpan, SpanKind, startItemSpan, tracing } from "../../../../lib/telemetry/tracing.js";
import { invalid, requireText, requireUuid } from "../../../../lib/validate.js";
import type { AppendInput } from "../sequencer.js";
import type { MessageStoreContext } from "../context.js";
import { toConnectError } from "./errors.js";
import { toProtoMessage } from "./message.js";

/** Most characters (code points) of a message body. */
export const MAX_BODY_CHARS = 4000;
/** Most bytes of an event message's encoded event. */
export const MAX_EVENT_BYTES = 64 * 1024;

/**
 * A chat message has a body of 1..4,000 characters and a sender device. An event message
 * (non-empty `event`, at most 64 KiB) may have an empty body and no sender device ("");
 * a device id that is given must still be a UUID.
 */
export function appendInput(req: AppendRequest): AppendInput {
  const isEvent = req.event.length > 0;
  if (req.event.length > MAX_EVENT_BYTES) throw invalid("event", `must have at most ${MAX_EVENT_BYTES} bytes`);
  const input: AppendInput = {
    conversationId: requireUuid("conversation_id", req.conversationId),
    senderId: requireUuid("sender_id", req.senderId),
    senderDeviceId: isEvent && req.senderDeviceId === "" ? "" : requireUuid("sender_device_id", req.senderDeviceId),
    clientMsgId: requireUuid("client_msg_id", req.clientMsgId),
    body: isEvent ? requireText("body", req.body, 0, MAX_BODY_CHARS) : requireText("body", req.body, 1, MAX_BODY_CHARS),
  };
  // A copy: the decoded bytes are a view of the whole request buffer, which the
  // sequencer's cache of recent messages would otherwise keep alive.
  if (isEvent) input.event = new Uint8Array(req.event);
  return input;
}

/**
 * Validates and stores one append. The sequencer queues it before this returns (no
 * await comes first), so appends started in some order get their seqs in that order.
 */
async function appendOne(ctx: MessageStoreContext, req: AppendRequest): Promise<AppendResponse> {
  const input = appendInput(req);
  // Tracing: the message's `append` span, from the trace context the item carries (a
  // batch mixes messages); its repository calls are traced under it (sequencer).
  const t = tracing();
  const span = t && startItemSpan(t, "append", SpanKind.CONSUMER, req, { "parley.conversation_id": input.conversationId });
  if (span) input.trace = contextWith(span);
  try {
    const { message, duplicate } = await ctx.sequencer.append(input);
    if (span) {
      span.setAttributes({ "parley.seq": message.seq, "parley.duplicate": duplicate });
      span.end();
    }
    return create(AppendResponseSchema, { message: toProtoMessage(message), duplicate });
  } catch (err) {
    const ce = toConnectError(err, ctx.logger);
    endSpan(span, ce);
    throw ce;
  }
}

/** Authorization (is the sender a member?) is the router's job, not the message store's. */
export function append(ctx: MessageStoreContext) {
  return (req: AppendRequest): Promise<AppendResponse> => appendOne(ctx, req);
}

/** Most appends in one AppendBatch call. */
export const MAX_APPEND_BATCH = 1024;

/** Every append of the batch, each with its own outcome; one conversation's in the order given. */
export function appendBatch(ctx: MessageStoreContext) {
  return async (req: AppendBatchRequest): Promise<AppendBatchResponse> => {
    if (req.appends.length > MAX_APPEND_BATCH) {
      throw new ConnectError(`at most ${MAX_APPEND_BATCH} appends per batch`, Code.InvalidArgument);
    }
    return create(AppendBatchResponseSchema, { results: await settleEach(req.appends, (a) => appendOne(ctx, a)) });
  };
}
