// Readiness probe for the test Cassandra (used by infra.sh): one CQL round trip,
// `SELECT release_version FROM system.local`, against host:port. Prints the version and
// exits 0 when it answers; exits 1 (with the reason on stderr) otherwise.
// Usage: node --import tsx tools/infra/cassandra-ready.ts 127.0.0.1:59042 [timeoutMs]
import cassandra from "cassandra-driver";

async function probe(contactPoint: string, timeoutMs: number): Promise<string> {
  const client = new cassandra.Client({
    contactPoints: [contactPoint],
    localDataCenter: "datacenter1",
    socketOptions: { connectTimeout: timeoutMs, readTimeout: timeoutMs },
    pooling: { warmup: false },
  });
  try {
    await client.connect();
    const rs = await client.execute("SELECT release_version FROM system.local");
    return String(rs.first()?.get("release_version") ?? "unknown");
  } finally {
    await client.shutdown();
  }
}

const [contactPoint = "127.0.0.1:59042", timeoutArg = "5000"] = process.argv.slice(2);
try {
  console.log(await probe(contactPoint, Number(timeoutArg)));
} catch (err) {
  console.error(`cassandra at ${contactPoint} is not ready: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
