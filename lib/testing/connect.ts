import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Asserts that `p` fails with one of `code` (and, when given, a message equal to or
 * matching `message`); returns the error for further checks.
 */
export async function rejectsWith(p: Promise<unknown>, code: Code | Code[], message?: string | RegExp): Promise<ConnectError> {
  let caught: unknown;
  try {
    await p;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, "expected the call to fail");
  const e = ConnectError.from(caught);
  const codes = Array.isArray(code) ? code : [code];
  assert.ok(codes.includes(e.code), `expected ${codes.map((c) => Code[c]).join("|")}, got ${Code[e.code]}: ${e.rawMessage}`);
  if (typeof message === "string") assert.equal(e.rawMessage, message);
  else if (message) assert.match(e.rawMessage, message);
  return e;
}
