import { join } from "node:path";
import { ConfigError, envPort, envString, type Env } from "../../../lib/env.js";
import { postgresUrlFromEnv } from "../../../lib/sql.js";

export interface MessageStoreConfig {
  host: string;
  /** gRPC port (0 picks a free one). */
  port: number;
  /** PGlite directory when no shared database is passed in (`<PARLEY_DATA_DIR>/messagestore`). */
  dataDir: string;
  /** `PARLEY_POSTGRES_URL`: the SQL repository on a Postgres server instead of PGlite. */
  postgresUrl: string | undefined;
  /** `PARLEY_CASSANDRA_CONTACT_POINTS` (+ `_KEYSPACE`, `_DATACENTER`): messages in Cassandra. */
  cassandra: CassandraConfig | undefined;
  logLevel: string;
}

export interface CassandraConfig {
  /** `host:port` of one or more nodes. */
  contactPoints: string[];
  keyspace: string;
  localDataCenter: string;
}

/** The Cassandra settings, or undefined when `PARLEY_CASSANDRA_CONTACT_POINTS` is unset. */
function cassandraFromEnv(env: Env): CassandraConfig | undefined {
  const points = envString(env, "PARLEY_CASSANDRA_CONTACT_POINTS", "");
  if (points === "") return undefined;
  const contactPoints = points.split(",").map((p) => p.trim());
  for (const p of contactPoints) {
    if (!/^[A-Za-z0-9.-]+(:\d{1,5})?$/.test(p)) {
      throw new ConfigError(`PARLEY_CASSANDRA_CONTACT_POINTS: "${p}" is not host or host:port`);
    }
  }
  const keyspace = envString(env, "PARLEY_CASSANDRA_KEYSPACE", "parley");
  if (!/^[a-z][a-z0-9_]{0,47}$/.test(keyspace)) {
    throw new ConfigError(`PARLEY_CASSANDRA_KEYSPACE: "${keyspace}" must be lower case letters, digits and _ (at most 48)`);
  }
  return { contactPoints, keyspace, localDataCenter: envString(env, "PARLEY_CASSANDRA_DATACENTER", "datacenter1") };
}

/** The message store's configuration from environment variables, with defaults and checks. */
export function loadConfig(env: Env): MessageStoreConfig {
  return {
    host: envString(env, "PARLEY_HOST", "127.0.0.1"),
    port: envPort(env, "PARLEY_MESSAGESTORE_PORT", 7103),
    dataDir: join(envString(env, "PARLEY_DATA_DIR", "data"), "messagestore"),
    postgresUrl: postgresUrlFromEnv(env),
    cassandra: cassandraFromEnv(env),
    logLevel: envString(env, "PARLEY_LOG_LEVEL", "info"),
  };
}
