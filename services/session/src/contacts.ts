import type { AccountStore, Contact } from "./account-store.js";
import type { Clock } from "./clock.js";
import { ContactNotFoundError } from "./errors.js";

/** Inputs arrive validated (routes/ do that at the edge): ids are UUIDs, the nickname is trimmed. */
export interface ContactsDeps {
  store: AccountStore;
  clock: Clock;
  /** The most contacts one user may have. */
  max: number;
}

/**
 * Users' contact lists (address books). Only ever called for the authenticated user
 * themself: the gateway passes the caller as the owner.
 */
export class Contacts {
  constructor(private readonly d: ContactsDeps) {}

  list(ownerId: string): Promise<Contact[]> {
    return this.d.store.listContacts(ownerId);
  }

  async get(ownerId: string, contactId: string): Promise<Contact> {
    const c = await this.d.store.getContact(ownerId, contactId);
    if (!c) throw new ContactNotFoundError(contactId);
    return c;
  }

  /** Adds or renames. `UnknownUserError`, `ContactLimitError` from the store pass through. */
  put(ownerId: string, contactId: string, nickname: string): Promise<{ contact: Contact; created: boolean }> {
    return this.d.store.putContact({ ownerId, contactId, nickname, at: this.d.clock.now(), max: this.d.max });
  }

  async delete(ownerId: string, contactId: string): Promise<void> {
    if (!(await this.d.store.deleteContact(ownerId, contactId))) throw new ContactNotFoundError(contactId);
  }
}
