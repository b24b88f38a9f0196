import { homedir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { runCommand, USAGE, UsageError } from "./commands.js";

/**
 * `npm run cli -- [--server URL] [--user NAME] <command> ...`: the Parley terminal client.
 * The only file that reads process.argv and process.env.
 */
async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: process.argv.slice(2),
      options: {
        server: { type: "string" },
        user: { type: "string" },
        limit: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    process.stderr.write(`parley: ${(err as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...args] = positionals;
  if (values.help || command === undefined || command === "help") {
    (command === undefined && !values.help ? process.stderr : process.stdout).write(USAGE + "\n");
    return command === undefined && !values.help ? 2 : 0;
  }
  let limit: number | undefined;
  if (values.limit !== undefined) {
    limit = Number(values.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      process.stderr.write(`parley: --limit must be an integer from 1 to 10000, got "${values.limit}"\n`);
      return 2;
    }
  }
  const env = process.env;
  try {
    return await runCommand(command, args, {
      server: values.server ?? env.PARLEY_SERVER ?? "http://127.0.0.1:7000",
      user: values.user,
      home: env.PARLEY_CLI_HOME || join(homedir(), ".config", "parley"),
      password: env.PARLEY_PASSWORD || undefined,
      limit,
      io: { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr },
    });
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`parley: ${err.message}\n`);
    return 2;
  }
}

process.exitCode = await main();
// A pipe on stdin that is still open (a chat left with /quit) would keep the process alive.
process.stdin.destroy();
