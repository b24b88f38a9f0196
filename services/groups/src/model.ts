export type ConversationKind = "direct" | "group";

export interface Conversation {
  conversationId: string;
  kind: ConversationKind;
  memberIds: string[];
  createdAtMs: number;
  /** Bumped on every membership change. */
  version: number;
}
