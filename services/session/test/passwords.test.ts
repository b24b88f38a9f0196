import assert from "node:assert/strict";
import { test } from "node:test";
import { PasswordHasher } from "../src/passwords.js";

const hasher = new PasswordHasher();

test("hashes with argon2id m=19456 t=2 p=1 and a fresh salt, and verifies", async () => {
  const [a, b] = await Promise.all([hasher.hash("hunter22hunter22"), hasher.hash("hunter22hunter22")]);
  assert.match(a, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
  assert.notEqual(a, b);
  assert.equal(await hasher.verify(a, "hunter22hunter22"), true);
  assert.equal(await hasher.verify(a, "hunter22hunter23"), false);
  assert.equal(await hasher.verify("not a hash", "hunter22hunter22"), false);
  assert.equal(await hasher.verifyDummy("hunter22hunter22"), false);
});

test("hashing runs off the event loop", async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    await hasher.hash("a password that takes a while");
  } finally {
    clearInterval(timer);
  }
  assert.ok(ticks > 0, "timers did not run while hashing");
});
