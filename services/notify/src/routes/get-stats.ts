import type { NotifyContext } from "../context.js";

export function getStats(ctx: NotifyContext) {
  return async () => {
    const s = ctx.pipeline.stats;
    return {
      messagesReceived: BigInt(s.messagesReceived),
      jobsDue: BigInt(s.jobsDue),
      pushesCreated: BigInt(s.pushesCreated),
      pushesCancelled: BigInt(s.pushesCancelled),
      sendsOk: BigInt(s.sendsOk),
      sendsRetried: BigInt(s.sendsRetried),
      devicesRemoved: BigInt(s.devicesRemoved),
      deadLettered: BigInt(s.deadLettered),
    };
  };
}
