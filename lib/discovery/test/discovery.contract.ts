import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { Discovery, Registrar, ServiceKind } from "../discovery.js";

export interface DiscoveryPair {
  /** Registers instances. */
  registrar: Registrar;
  /** Another process's view of the same deployment (may be the same object). */
  observer: Discovery;
  close(): Promise<void>;
}

/** Resolves once `check` holds, re-checked on every change of `kind`; fails at the deadline. */
export function whenSeen(d: Discovery, kind: ServiceKind, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  if (check()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const stop = d.watch(kind, () => {
      if (!check()) return;
      stop();
      clearTimeout(timer);
      resolve();
    });
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`discovery did not converge within ${timeoutMs} ms`));
    }, timeoutMs);
  });
}

/** The contract of every Discovery + Registrar adapter. */
export function describeDiscovery(name: string, open: () => Promise<DiscoveryPair>) {
  describe(`Discovery contract: ${name}`, () => {
    let pair: DiscoveryPair;
    before(async () => {
      pair = await open();
    });
    after(() => pair.close());

    it("lists a registered instance in other views, with its addresses", async () => {
      const reg = await pair.registrar.register({
        kind: "gateway",
        id: "gw-a",
        url: "http://127.0.0.1:1",
        publicUrl: "http://127.0.0.1:2",
        load: 0,
      });
      await whenSeen(pair.observer, "gateway", () => pair.observer.resolve("gateway", "gw-a") !== undefined);
      const seen = pair.observer.resolve("gateway", "gw-a")!;
      assert.equal(seen.url, "http://127.0.0.1:1");
      assert.equal(seen.publicUrl, "http://127.0.0.1:2");
      assert.ok(pair.observer.list("gateway").some((i) => i.id === "gw-a"));
      assert.equal(pair.observer.list("router").length, 0);
      await reg.close();
    });

    it("reports load changes", async () => {
      const reg = await pair.registrar.register({ kind: "gateway", id: "gw-load", url: "http://127.0.0.1:3", load: 0 });
      reg.setLoad(42);
      await whenSeen(pair.observer, "gateway", () => pair.observer.resolve("gateway", "gw-load")?.load === 42);
      await reg.close();
    });

    it("forgets an instance that deregisters", async () => {
      const reg = await pair.registrar.register({ kind: "router", id: "r-1", url: "http://127.0.0.1:4" });
      await whenSeen(pair.observer, "router", () => pair.observer.resolve("router", "r-1") !== undefined);
      await reg.close();
      await whenSeen(pair.observer, "router", () => pair.observer.resolve("router", "r-1") === undefined);
      assert.equal(pair.observer.list("router").length, 0);
    });
  });
}
