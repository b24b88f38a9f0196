/**
 * Which real backend servers the tests may use. The test command exports one
 * `PARLEY_TEST_*` variable per server it started; `PARLEY_REQUIRE_REAL_BACKENDS=1`
 * (CI) turns a missing one into a loud failure instead of a silently skipped suite.
 */
export type RealBackend = "postgres" | "redis" | "etcd" | "cassandra";

const VARIABLES: Record<RealBackend, string> = {
  postgres: "PARLEY_TEST_POSTGRES_URL",
  redis: "PARLEY_TEST_REDIS_URL",
  etcd: "PARLEY_TEST_ETCD_URL",
  cassandra: "PARLEY_TEST_CASSANDRA",
};

/**
 * The address of the real `backend` for tests (e.g. `postgres://parley@127.0.0.1:55432/parley`),
 * or undefined when none is configured; throws when one is required but missing.
 */
export function realBackend(backend: RealBackend): string | undefined {
  const name = VARIABLES[backend];
  const value = process.env[name]?.trim();
  if (value) return value;
  if (process.env.PARLEY_REQUIRE_REAL_BACKENDS === "1") {
    throw new Error(`${name} is not set (PARLEY_REQUIRE_REAL_BACKENDS=1 requires a real ${backend} server)`);
  }
  return undefined;
}

/**
 * All four real backends, in the shape tools/cluster takes, for the end-to-end tests that
 * start a cluster; undefined when they are not configured (a suite then defines no test;
 * with PARLEY_REQUIRE_REAL_BACKENDS=1 a missing one fails loudly instead).
 */
export function realClusterBackends(): { postgresUrl: string; redisUrl: string; etcdUrl: string; cassandra: string } | undefined {
  const postgresUrl = realBackend("postgres");
  const redisUrl = realBackend("redis");
  const etcdUrl = realBackend("etcd");
  const cassandra = realBackend("cassandra");
  return postgresUrl && redisUrl && etcdUrl && cassandra ? { postgresUrl, redisUrl, etcdUrl, cassandra } : undefined;
}
