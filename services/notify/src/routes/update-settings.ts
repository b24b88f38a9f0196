import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { UpdateSettingsRequest } from "../../../../gen/parley/notify/v1/notify_service_pb.js";
import { invalid, requireUuid } from "../../../../lib/validate.js";
import type { NotifyContext } from "../context.js";
import { privacyFromProto, settingsToProto } from "../convert.js";
import type { SettingsChange } from "../model.js";

/** Latest mute accepted: 9999-12-31T23:59:59Z. */
const MAX_MUTE_MS = 253_402_300_799_000;

export function updateSettings(ctx: NotifyContext) {
  return async (req: UpdateSettingsRequest) => {
    const userId = requireUuid("user_id", req.userId);
    const privacy = privacyFromProto(req.privacy);
    if (privacy === null) throw invalid("privacy", "must be FULL, SENDER_ONLY or NONE");
    const now = ctx.clock();
    const change: SettingsChange = {};
    if (privacy !== undefined) change.privacy = privacy;
    if (req.unmute) {
      change.mutedUntilMs = null;
    } else if (req.mutedUntil) {
      const t = req.mutedUntil;
      if (t.nanos < 0 || t.nanos > 999_999_999) throw invalid("muted_until", "nanos must be 0 to 999999999");
      const ms = timestampMs(t);
      if (!Number.isFinite(ms) || ms > MAX_MUTE_MS) throw invalid("muted_until", "must be a time before the year 10000");
      // A time in the past unmutes.
      change.mutedUntilMs = ms > now ? ms : null;
    }
    const settings = await ctx.store.updateSettings(userId, change, now);
    return { settings: settingsToProto(settings, now) };
  };
}
