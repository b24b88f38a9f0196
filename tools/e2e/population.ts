import { randomUUID } from "node:crypto";
import { api } from "./harness.js";

/**
 * Environment for clusters and platforms that sign up many accounts in a test or bench:
 * the cheapest password hashing the session service allows (never for production).
 */
export const CHEAP_PASSWORD_HASHING = {
  PARLEY_PASSWORD_HASH_MEMORY_KIB: "1024",
  PARLEY_PASSWORD_HASH_ITERATIONS: "1",
} as const;

/** A signed-up account with its access token. */
export interface Account {
  userId: string;
  username: string;
  password: string;
  /** The access token of the sign-up's device session. */
  token: string;
}

/** Runs `fn` over `items` with at most `limit` calls in flight; results in order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]!, i);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Signs `n` real accounts up through the public API (SignUp, as a client would). */
export function signUpMany(publicUrl: string, n: number, prefix = "u", concurrency = 32): Promise<Account[]> {
  const tag = randomUUID().slice(0, 6);
  const password = `pw-${randomUUID()}`;
  return mapLimit(Array.from({ length: n }, (_, i) => i), concurrency, async (i) => {
    const username = `${prefix}${i}-${tag}`;
    const res = await api(publicUrl).auth.signUp({ username, password });
    return { userId: res.user!.userId, username, password, token: res.tokens!.accessToken };
  });
}

/** AddMembers takes at most this many users per call; CreateGroup this many besides the creator. */
export const ADD_MEMBERS_CHUNK = 1000;
const CREATE_CHUNK = 999;

/** Creates a group owned by `owner` with every one of `members`, in chunks of 1,000. */
export async function createGroup(publicUrl: string, owner: Account, members: readonly Account[], name = "big group"): Promise<string> {
  const groups = api(publicUrl, owner.token).groups;
  const ids = members.map((m) => m.userId).filter((id) => id !== owner.userId);
  const { conversation } = await groups.createGroup({ name, memberIds: ids.slice(0, CREATE_CHUNK) });
  const conversationId = conversation!.conversationId;
  for (let i = CREATE_CHUNK; i < ids.length; i += ADD_MEMBERS_CHUNK) {
    await groups.addMembers({ conversationId, userIds: ids.slice(i, i + ADD_MEMBERS_CHUNK) });
  }
  return conversationId;
}

/** A new device of the account: a log-in of its own (new device id and session). */
export async function newDevice(publicUrl: string, a: Account): Promise<string> {
  const res = await api(publicUrl).auth.logIn({ username: a.username, password: a.password });
  return res.tokens!.accessToken;
}
