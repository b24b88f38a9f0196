import { randomBytes } from "node:crypto";
import { hash, verify, type Options } from "@node-rs/argon2";

/**
 * argon2id with the OWASP minimum (m=19456 KiB, t=2, p=1). `@node-rs/argon2`'s async
 * functions run on the libuv thread pool, so hashing never blocks the event loop.
 */
export const ARGON2_OPTIONS: Options = {
  algorithm: 2, // Algorithm.Argon2id (an ambient const enum: not importable under isolatedModules)
  memoryCost: 19456,
  timeCost: 2,
  parallelism: 1,
};

/** Password length bounds in code points; the maximum caps the work one request can ask for. */
export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 128;

export class PasswordHasher {
  private dummy: Promise<string> | undefined;

  constructor(private readonly options: Options = ARGON2_OPTIONS) {}

  hash(password: string): Promise<string> {
    return hash(password, this.options);
  }

  /** False for a wrong password and for a stored hash that cannot be parsed. */
  async verify(passwordHash: string, password: string): Promise<boolean> {
    try {
      return await verify(passwordHash, password, this.options);
    } catch {
      return false;
    }
  }

  /**
   * Spends the time of one verification when the user does not exist, so response
   * time does not tell which usernames are registered. Always false.
   */
  async verifyDummy(password: string): Promise<false> {
    this.dummy ??= this.hash(randomBytes(24).toString("base64url"));
    await this.verify(await this.dummy, password);
    return false;
  }

  /** Computes the dummy hash ahead of the first failed login (call at start). */
  async warmUp(): Promise<void> {
    this.dummy ??= this.hash(randomBytes(24).toString("base64url"));
    await this.dummy;
  }
}
