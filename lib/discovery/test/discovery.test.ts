import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { realBackend } from "../../testing/backends.js";
import { StaticDiscovery } from "../discovery-static.js";
import { EtcdDiscovery } from "../discovery-etcd.js";
import { describeDiscovery, whenSeen } from "./discovery.contract.js";

describeDiscovery("static (embedded)", async () => {
  const d = new StaticDiscovery();
  return { registrar: d, observer: d, close: async () => {} };
});

const etcd = realBackend("etcd");
if (etcd) {
  const prefix = `/parley-test-${randomUUID()}`;
  describeDiscovery("etcd (real server)", async () => {
    const registrar = await EtcdDiscovery.open({ endpoints: [etcd], prefix, leaseTtlSeconds: 2 });
    const observer = await EtcdDiscovery.open({ endpoints: [etcd], prefix, leaseTtlSeconds: 2 });
    return {
      registrar,
      observer,
      close: async () => {
        await registrar.close();
        await observer.close();
      },
    };
  });

  describe("etcd discovery (real server): failures", () => {
    it("drops an instance whose process died (its lease expires)", async () => {
      const observer = await EtcdDiscovery.open({ endpoints: [etcd], prefix, leaseTtlSeconds: 2 });
      const doomed = await EtcdDiscovery.open({ endpoints: [etcd], prefix, leaseTtlSeconds: 2 });
      try {
        await doomed.register({ kind: "messagestore", id: "ms-doomed", url: "http://127.0.0.1:5" });
        await whenSeen(observer, "messagestore", () => observer.resolve("messagestore", "ms-doomed") !== undefined);
        // A crash: the connection goes away without revoking the lease.
        await doomed.close();
        await whenSeen(observer, "messagestore", () => observer.resolve("messagestore", "ms-doomed") === undefined, 30_000);
      } finally {
        await observer.close();
      }
    });

    it("fails fast when etcd is unreachable", async () => {
      const started = Date.now();
      await assert.rejects(EtcdDiscovery.open({ endpoints: ["http://127.0.0.1:9"], prefix }));
      assert.ok(Date.now() - started < 15_000);
    });
  });
}
