/** What a push says; providers turn it into their wire format (FCM, APNs, Web Push: a later issue). */
export interface PushNotification {
  userId: string;
  conversationId: string;
  seq: number;
  messageId: string;
  senderId: string;
  preview: string;
}

/** The push provider port. */
export interface PushProvider {
  readonly name: string;
  send(batch: readonly PushNotification[]): Promise<void>;
}
