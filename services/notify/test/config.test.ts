import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConfigError } from "../../../lib/env.js";
import { DEFAULT_WEBPUSH_ALLOWED_HOSTS, loadConfig } from "../src/config.js";
import { endpointProblem, hostAllowed } from "../src/webpush-hosts.js";

describe("notify config", () => {
  it("has working defaults", () => {
    const cfg = loadConfig({});
    assert.equal(cfg.port, 7106);
    assert.equal(cfg.host, "127.0.0.1");
    assert.equal(cfg.dataDir, "data/notify");
    assert.equal(cfg.postgresUrl, undefined);
    assert.equal(cfg.sessionUrl, "http://127.0.0.1:7101");
    assert.equal(cfg.groupsUrl, "http://127.0.0.1:7105");
    assert.equal(cfg.delayMs, 2000);
    assert.equal(cfg.maxAttempts, 8);
    assert.equal(cfg.retryBaseMs, 1000);
    assert.equal(cfg.retryMaxMs, 300_000);
    assert.equal(cfg.leaseMs, 30_000);
    assert.equal(cfg.pollMs, 1000);
    assert.equal(cfg.maxDevicesPerUser, 20);
    assert.equal(cfg.requireProviders, false);
    assert.deepEqual(cfg.webPushAllowedHosts, [...DEFAULT_WEBPUSH_ALLOWED_HOSTS]);
    assert.deepEqual(cfg.providers, { fcm: undefined, apns: undefined, webpush: undefined, webhook: undefined });
  });

  it("reads every variable", () => {
    const cfg = loadConfig({
      PARLEY_NOTIFY_PORT: "9000",
      PARLEY_DATA_DIR: "/var/parley",
      PARLEY_POSTGRES_URL: "postgres://u@h/db",
      PARLEY_SESSION_URL: "http://s:1",
      PARLEY_GROUPS_URL: "http://g:2",
      PARLEY_NOTIFY_DELAY_MS: "500",
      PARLEY_NOTIFY_MAX_ATTEMPTS: "3",
      PARLEY_NOTIFY_RETRY_BASE_MS: "10",
      PARLEY_NOTIFY_RETRY_MAX_MS: "20",
      PARLEY_NOTIFY_LEASE_MS: "5000",
      PARLEY_NOTIFY_POLL_MS: "250",
      PARLEY_NOTIFY_MAX_DEVICES: "5",
      PARLEY_NOTIFY_REQUIRE_PROVIDERS: "yes",
      PARLEY_WEBPUSH_ALLOWED_HOSTS: " Push.Example.com , *.push.example.net ",
      PARLEY_WEBHOOK_URL: "https://hooks.example.com/push",
      PARLEY_WEBHOOK_SECRET: "x".repeat(32),
    });
    assert.deepEqual(
      [cfg.port, cfg.dataDir, cfg.postgresUrl, cfg.sessionUrl, cfg.groupsUrl],
      [9000, "/var/parley/notify", "postgres://u@h/db", "http://s:1", "http://g:2"],
    );
    assert.deepEqual(
      [cfg.delayMs, cfg.maxAttempts, cfg.retryBaseMs, cfg.retryMaxMs, cfg.leaseMs, cfg.pollMs, cfg.maxDevicesPerUser, cfg.requireProviders],
      [500, 3, 10, 20, 5000, 250, 5, true],
    );
    assert.deepEqual(cfg.webPushAllowedHosts, ["push.example.com", "*.push.example.net"]);
    assert.equal(cfg.providers.webhook?.url, "https://hooks.example.com/push");
  });

  it("refuses bad values", () => {
    const bad: Record<string, string>[] = [
      { PARLEY_NOTIFY_REQUIRE_PROVIDERS: "maybe" },
      { PARLEY_NOTIFY_MAX_ATTEMPTS: "0" },
      { PARLEY_NOTIFY_DELAY_MS: "-1" },
      { PARLEY_NOTIFY_RETRY_BASE_MS: "5000", PARLEY_NOTIFY_RETRY_MAX_MS: "1000" },
      { PARLEY_WEBPUSH_ALLOWED_HOSTS: "," },
      { PARLEY_WEBPUSH_ALLOWED_HOSTS: "https://push.example.com" },
      { PARLEY_WEBPUSH_ALLOWED_HOSTS: "*push.example.com" },
      { PARLEY_WEBHOOK_URL: "https://hooks.example.com/push" },
    ];
    for (const env of bad) assert.throws(() => loadConfig(env), ConfigError, JSON.stringify(env));
  });
});

describe("Web Push host allow-list", () => {
  const list = [...DEFAULT_WEBPUSH_ALLOWED_HOSTS];

  it("matches exact hosts and strict subdomains of wildcards", () => {
    assert.ok(hostAllowed(list, "fcm.googleapis.com"), "exact");
    assert.ok(hostAllowed(list, "FCM.googleapis.com."), "case and trailing dot");
    assert.ok(hostAllowed(list, "web.push.apple.com"), "wildcard");
    assert.ok(hostAllowed(list, "wns2-by3p.notify.windows.com"), "wildcard");
    assert.ok(!hostAllowed(list, "push.apple.com"), "not the wildcard's base");
    assert.ok(!hostAllowed(list, "evilpush.apple.com"), "not a suffix without a dot");
    assert.ok(!hostAllowed(list, "fcm.googleapis.com.evil.example"), "not a prefix");
    assert.ok(!hostAllowed(list, "127.0.0.1"));
    assert.ok(hostAllowed(["*"], "anything.internal"), "'*' allows all");
  });

  it("checks endpoints: https, length, no credentials, default port, allowed host", () => {
    assert.equal(endpointProblem(list, "https://updates.push.services.mozilla.com/wpush/v2/gAAA"), undefined);
    assert.match(endpointProblem(list, "http://fcm.googleapis.com/x") ?? "", /https/);
    assert.match(endpointProblem(list, `https://fcm.googleapis.com/${"a".repeat(2048)}`) ?? "", /at most/);
    assert.match(endpointProblem(list, "https://a:b@fcm.googleapis.com/x") ?? "", /credentials/);
    assert.match(endpointProblem(list, "https://fcm.googleapis.com:444/x") ?? "", /port/);
    assert.match(endpointProblem(list, "https://metadata.google.internal/x") ?? "", /not an allowed/);
    assert.equal(endpointProblem(["*"], "https://127.0.0.1:8443/push"), undefined, "'*' allows test servers");
  });
});
