import type { ConversationKind } from "./model.js";

/** One member who may get a push: they have not received nor read the messages up to the asked seq. */
export interface PushCandidate {
  userId: string;
  deliveredSeq: number;
  readSeq: number;
}

export interface CandidateQuery {
  conversationId: string;
  /** The newest message's seq: members whose cursors are below it. */
  seq: number;
  /** Only these users (at most 1,000); undefined: every member, paged. */
  userIds?: readonly string[];
  /** Never these (the sender). */
  excludeUserIds: readonly string[];
  /** Paging: users after this id ("" for the first page). */
  afterUserId: string;
  /** 1..1000. */
  limit: number;
}

export interface CandidatePage {
  /** Undefined for an unknown or deleted conversation (then there are no candidates). */
  kind: ConversationKind | undefined;
  /** Groups: the name. */
  name: string;
  candidates: PushCandidate[];
  /** "" on the last page. */
  nextAfterUserId: string;
}

/**
 * Who should get a push for a conversation's messages: active members with no device
 * that received them and no read of them, who have not muted the conversation (the
 * groups service owns membership, cursors and per-conversation mutes).
 */
export interface PushCandidates {
  candidates(q: CandidateQuery, signal?: AbortSignal): Promise<CandidatePage>;
}

/** Candidates per page and users per filtered call (ListPushCandidates' maximum). */
export const CANDIDATE_PAGE = 1000;
