/**
 * Domain errors of the session service. Routes turn them into Connect codes
 * (routes.ts); domain code never imports Connect or generated types.
 */

/** The credentials or token do not prove who the caller is. Maps to `Unauthenticated`. */
export class AuthenticationError extends Error {
  override readonly name = "AuthenticationError";
}

/** Maps to `AlreadyExists`. */
export class UsernameTakenError extends Error {
  override readonly name = "UsernameTakenError";
  constructor(readonly username: string) {
    super(`username "${username}" is taken`);
  }
}

/** The user is not in the contact list. Maps to `NotFound`. */
export class ContactNotFoundError extends Error {
  override readonly name = "ContactNotFoundError";
  constructor(readonly contactId: string) {
    super("not in the contact list");
  }
}
