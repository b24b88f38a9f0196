import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { ConversationKind as ProtoKind, GroupsService } from "../../../gen/parley/groups/v1/groups_service_pb.js";
import type { CandidatePage, CandidateQuery, PushCandidates } from "./push-candidates.js";

/** PushCandidates over the groups service's ListPushCandidates. */
export class GrpcPushCandidates implements PushCandidates {
  private readonly client: Client<typeof GroupsService>;

  constructor(
    transport: Transport,
    private readonly timeoutMs = 10_000,
  ) {
    this.client = createClient(GroupsService, transport);
  }

  async candidates(q: CandidateQuery, signal?: AbortSignal): Promise<CandidatePage> {
    const res = await this.client.listPushCandidates(
      {
        conversationId: q.conversationId,
        seq: BigInt(q.seq),
        userIds: q.userIds ? [...q.userIds] : [],
        excludeUserIds: [...q.excludeUserIds],
        afterUserId: q.afterUserId,
        limit: q.limit,
      },
      { timeoutMs: this.timeoutMs, ...(signal ? { signal } : {}) },
    );
    return {
      kind: res.kind === ProtoKind.DIRECT ? "direct" : res.kind === ProtoKind.GROUP ? "group" : undefined,
      name: res.name,
      candidates: res.candidates.map((c) => ({ userId: c.userId, deliveredSeq: Number(c.deliveredSeq), readSeq: Number(c.readSeq) })),
      nextAfterUserId: res.nextAfterUserId,
    };
  }
}
