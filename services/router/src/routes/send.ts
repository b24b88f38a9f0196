import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  SendBatchResponseSchema,
  SendResponseSchema,
  type SendBatchRequest,
  type SendBatchResponse,
  type SendRequest,
  type SendResponse,
} from "../../../../gen/parley/router/v1/router_service_pb.js";
import { itemError } from "../../../../lib/batcher.js";
import { contextWith, endSpan, SpanKind, startItemSpan, startSpan, traceFields, tracing, type Span } from "../../../../lib/telemetry/tracing.js";
import { requireText, requireUuid } from "../../../../lib/validate.js";
import type { RouterContext } from "../context.js";
import type { Access } from "../membership-cache.js";

export const MAX_BODY_CHARS = 4000;
/** Most sends in one SendBatch call. */
export const MAX_SEND_BATCH = 1024;

function validate(req: SendRequest): void {
  requireUuid("sender_id", req.senderId);
  requireUuid("sender_device_id", req.senderDeviceId);
  requireUuid("conversation_id", req.conversationId);
  requireUuid("client_msg_id", req.clientMsgId);
  requireText("body", req.body, 1, MAX_BODY_CHARS);
}

/**
 * The hot path, for a batch of sends: validate each, authorize against cached
 * membership (one lookup per conversation of the batch), have the message store
 * assign sequence numbers and persist, answer each, and hand each stored message to
 * fan-out. The appends are submitted in the order of `sends`, with nothing awaited in
 * between, so one conversation's sends are sequenced in the order given.
 */
async function handleSends(ctx: RouterContext, sends: readonly SendRequest[]): Promise<(SendResponse | ConnectError)[]> {
  // Tracing: each send's `route` span continues its own trace (the item's trace fields,
  // set by the sender's gateway), whatever batch it came in.
  const t = tracing();
  const routeSpans: (Span | undefined)[] | undefined = t && sends.map((s) => startItemSpan(t, "route", SpanKind.CONSUMER, s, { "parley.conversation_id": s.conversationId }));
  const out: (SendResponse | ConnectError | undefined)[] = sends.map((s) => {
    try {
      validate(s);
      return undefined;
    } catch (err) {
      return ConnectError.from(err);
    }
  });
  const senders = new Map<string, Set<string>>();
  sends.forEach((s, i) => {
    if (out[i]) return;
    const set = senders.get(s.conversationId);
    if (set) set.add(s.senderId);
    else senders.set(s.conversationId, new Set([s.senderId]));
  });
  const access = new Map<string, Access | ConnectError>();
  await Promise.all(
    [...senders].map(async ([id, users]) => {
      try {
        access.set(id, await ctx.membership.access(id, [...users]));
      } catch (err) {
        access.set(id, ConnectError.from(err));
      }
    }),
  );
  const stored = sends.map(async (s, i) => {
    if (out[i]) return;
    const a = access.get(s.conversationId);
    if (a instanceof ConnectError) return void (out[i] = a);
    const route = a?.route;
    if (!route || !a.allowed.has(s.senderId)) {
      // Unknown conversations get the same answer as foreign ones: ids are no oracle.
      const blocked = route?.kind === "direct" && route.memberIds.includes(s.senderId);
      return void (out[i] = new ConnectError(blocked ? "blocked: this conversation is read-only" : "not a member of this conversation", Code.PermissionDenied));
    }
    const routeSpan = routeSpans?.[i];
    // The router's side of the append (batching and the call); the store's `append` continues it.
    const storeSpan = routeSpan && startSpan(t!, "store", SpanKind.PRODUCER, contextWith(routeSpan));
    try {
      const { message, duplicate } = await ctx.appends.submit({
        conversationId: s.conversationId,
        senderId: s.senderId,
        senderDeviceId: s.senderDeviceId,
        clientMsgId: s.clientMsgId,
        body: s.body,
        ...(storeSpan && traceFields(storeSpan)),
      });
      endSpan(storeSpan);
      if (!message) throw new ConnectError("message store answered without a message", Code.Internal);
      routeSpan?.setAttributes({ "parley.seq": Number(message.seq), "parley.duplicate": duplicate });
      // A resend was fanned out the first time; doing it again would duplicate it on devices.
      if (!duplicate) {
        ctx.fanOut.enqueue({
          message,
          route,
          senderDeviceId: s.senderDeviceId,
          receivedAtMs: s.receivedAtMs,
          span: routeSpan && startSpan(t!, "fan-out", SpanKind.PRODUCER, contextWith(routeSpan), { "parley.conversation_id": s.conversationId }),
        });
        ctx.notifyQueue.add(message, route);
      }
      out[i] = create(SendResponseSchema, {
        conversationId: message.conversationId,
        seq: message.seq,
        messageId: message.messageId,
        sentAt: message.sentAt,
        duplicate,
      });
    } catch (err) {
      if (storeSpan?.isRecording()) endSpan(storeSpan, err);
      out[i] = ConnectError.from(err);
    }
  });
  await Promise.all(stored);
  if (routeSpans) routeSpans.forEach((span, i) => endSpan(span, out[i] instanceof ConnectError ? out[i] : undefined));
  return out as (SendResponse | ConnectError)[];
}

export function send(ctx: RouterContext) {
  return async (req: SendRequest): Promise<SendResponse> => {
    const [result] = await handleSends(ctx, [req]);
    if (result instanceof ConnectError) throw result;
    return result!;
  };
}

export function sendBatch(ctx: RouterContext) {
  return async (req: SendBatchRequest): Promise<SendBatchResponse> => {
    if (req.sends.length > MAX_SEND_BATCH) {
      throw new ConnectError(`at most ${MAX_SEND_BATCH} sends per batch`, Code.InvalidArgument);
    }
    const results = await handleSends(ctx, req.sends);
    return create(SendBatchResponseSchema, {
      results: results.map((r) => ({ result: r instanceof ConnectError ? { case: "error" as const, value: itemError(r) } : { case: "ok" as const, value: r } })),
    });
  };
}
