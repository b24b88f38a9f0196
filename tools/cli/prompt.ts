import { createInterface } from "node:readline";

/** The terminal streams a command uses (process.std* in main.ts, pipes in tests). */
export interface Io {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream;
}

/** Reads one line from a non-terminal stdin (a pipe); undefined at end of input. */
export function readLine(io: Io): Promise<string | undefined> {
  return new Promise((resolve) => {
    const rl = createInterface({ input: io.stdin, terminal: false });
    let got: string | undefined;
    rl.once("line", (line) => {
      got = line;
      rl.close();
    });
    rl.once("close", () => {
      io.stdin.pause();
      resolve(got);
    });
  });
}

/** Asks for a secret on a terminal without echoing it. Ctrl-C/Ctrl-D give undefined. */
export function readSecret(io: Io, question: string): Promise<string | undefined> {
  const { stdin, stderr } = io;
  return new Promise((resolve) => {
    stderr.write(question);
    stdin.setRawMode?.(true);
    stdin.resume();
    let secret = "";
    const done = (value: string | undefined) => {
      stdin.off("data", onData);
      stdin.setRawMode?.(false);
      stdin.pause();
      stderr.write("\n");
      resolve(value);
    };
    const onData = (chunk: Buffer | string) => {
      for (const ch of chunk.toString("utf8")) {
        if (ch === "\r" || ch === "\n") return done(secret);
        if (ch === "\u0003" || ch === "\u0004") return done(undefined);
        if (ch === "\u007f" || ch === "\b") secret = [...secret].slice(0, -1).join("");
        else if (ch >= " ") secret += ch;
      }
    };
    stdin.on("data", onData);
  });
}
