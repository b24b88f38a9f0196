import type { ApplyConversationChangeRequest } from "../../../../gen/parley/router/v1/router_service_pb.js";
import { endSpan, recordingParent, SpanKind, startSpan, traceFields, tracing } from "../../../../lib/telemetry/tracing.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { RouterContext } from "../context.js";

/** Largest encoded event accepted (the message store's own limit). */
export const MAX_EVENT_BYTES = 64 * 1024;
/** Most joined or left users named in one change (AddMembers takes 1,000 at a time). */
const MAX_USERS = 1000;

function requireUuids(field: string, ids: readonly string[]): void {
  if (ids.length > MAX_USERS) throw invalid(field, `at most ${MAX_USERS}`);
  for (const id of ids) requireUuid(field, id);
}

/**
 * A conversation's membership or settings changed. The cached membership goes first,
 * so from the moment this answers no send is authorized by the old membership; then
 * the change's event is stored in the conversation (its sequence number orders it among
 * the messages) and fanned out like a message, carrying the (un)subscriptions that
 * gateways apply around it. A retry of the same change finds the stored event (same
 * idempotency key) and fans it out again: gateways apply (un)subscriptions
 * idempotently and clients drop a frame whose seq they already have.
 */
export function applyConversationChange(ctx: RouterContext) {
  return async (req: ApplyConversationChangeRequest) => {
    const conversationId = requireUuid("conversation_id", req.conversationId);
    requireUuid("change_id", req.changeId);
    requireUuid("actor_id", req.actorId);
    requireUuids("joined_user_ids", req.joinedUserIds);
    requireUuids("left_user_ids", req.leftUserIds);
    if (req.event.length > MAX_EVENT_BYTES) throw invalid("event", `at most ${MAX_EVENT_BYTES} bytes`);
    ctx.membership.invalidate(conversationId);
    if (req.event.length === 0) return { seq: 0n };
    // Tracing: the event's store and fan-out continue this call's trace (its server span).
    const t = tracing();
    const parent = t && recordingParent();
    const storeSpan = parent && startSpan(t!, "store", SpanKind.PRODUCER, parent);
    let message;
    try {
      ({ message } = await ctx.appends.submit({
        conversationId,
        senderId: req.actorId,
        senderDeviceId: "",
        clientMsgId: req.changeId,
        body: "",
        event: req.event,
        ...(storeSpan && traceFields(storeSpan)),
      }));
      endSpan(storeSpan);
    } catch (err) {
      endSpan(storeSpan, err);
      throw err;
    }
    if (!message) throw new Error("message store answered without a message");
    ctx.fanOut.enqueue({
      span: parent && startSpan(t!, "fan-out", SpanKind.PRODUCER, parent, { "parley.conversation_id": conversationId }),
      message,
      // Only groups have events: a 1:1's changes (blocks) carry none.
      route: { kind: "group", memberIds: [] },
      senderDeviceId: "",
      membership: { joined: req.joinedUserIds, left: req.leftUserIds, deleted: req.deleted },
    });
    return { seq: message.seq };
  };
}
