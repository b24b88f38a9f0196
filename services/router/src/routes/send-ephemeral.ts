import { Code, ConnectError } from "@connectrpc/connect";
import type { EphemeralEvent, SendEphemeralRequest } from "../../../../gen/parley/router/v1/router_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { RouterContext } from "../context.js";
import type { Access } from "../membership-cache.js";

/** Most events in one SendEphemeral call. */
export const MAX_EPHEMERAL_BATCH = 1024;
/** Largest pre-encoded frame of one event (a typing frame is under 150 bytes). */
export const MAX_EPHEMERAL_FRAME_BYTES = 4096;

function validate(e: EphemeralEvent): void {
  requireUuid("sender_id", e.senderId);
  requireUuid("sender_device_id", e.senderDeviceId);
  requireUuid("conversation_id", e.conversationId);
  if (e.serverFrame.length === 0 || e.serverFrame.length > MAX_EPHEMERAL_FRAME_BYTES) {
    throw invalid("server_frame", `1 to ${MAX_EPHEMERAL_FRAME_BYTES} bytes`);
  }
  if (e.userIds.length > MAX_TARGETS) throw invalid("user_ids", `at most ${MAX_TARGETS}`);
  for (const u of e.userIds) requireUuid("user_ids", u);
}

/** Most users one targeted event names. */
const MAX_TARGETS = 1000;

/**
 * Ephemeral events (typing, receipts): authorized against the cached membership like
 * sends (one lookup per conversation of the batch), then handed to fan-out without
 * being stored: to every member's devices, or only to the users an event names.
 * Events of senders who may not send there are dropped and counted; a malformed event
 * fails the whole call (gateways build these, clients do not).
 */
export function sendEphemeral(ctx: RouterContext) {
  return async (req: SendEphemeralRequest) => {
    if (req.events.length > MAX_EPHEMERAL_BATCH) throw new ConnectError(`at most ${MAX_EPHEMERAL_BATCH} events per call`, Code.InvalidArgument);
    for (const e of req.events) validate(e);
    const senders = new Map<string, Set<string>>();
    for (const e of req.events) {
      const set = senders.get(e.conversationId);
      if (set) set.add(e.senderId);
      else senders.set(e.conversationId, new Set([e.senderId]));
    }
    const access = new Map<string, Access>();
    await Promise.all([...senders].map(async ([id, users]) => access.set(id, await ctx.membership.access(id, [...users]))));
    let refused = 0;
    for (const e of req.events) {
      const a = access.get(e.conversationId);
      if (!a?.route || !a.allowed.has(e.senderId)) {
        refused++;
        continue;
      }
      ctx.fanOut.enqueueEphemeral({
        conversationId: e.conversationId,
        senderId: e.senderId,
        senderDeviceId: e.senderDeviceId,
        // Targeted (receipts): just those users' devices, looked up like a 1:1's members.
        route: e.userIds.length > 0 ? { kind: "direct", memberIds: e.userIds } : a.route,
        serverFrame: e.serverFrame,
      });
    }
    ctx.fanOut.stats.ephemeralRefused += refused;
    return { refused };
  };
}
