import type { Conversation } from "./model.js";

/** The conversations port: conversations and their members (Postgres in production). */
export interface ConversationStore {
  /**
   * Creates the direct conversation `conversationId` of two users unless it exists.
   * Two concurrent calls for the same pair create it once.
   */
  getOrCreateDirect(
    conversationId: string,
    userA: string,
    userB: string,
    createdAtMs: number,
  ): Promise<{ conversation: Conversation; created: boolean }>;
  get(conversationId: string): Promise<Conversation | undefined>;
  /** Conversations the user is a member of, newest first. */
  listForUser(userId: string, limit: number): Promise<Conversation[]>;
  close(): Promise<void>;
}
