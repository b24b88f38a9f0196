import { loadConfig } from "./config.js";
import { Gateway } from "./context.js";

const cfg = loadConfig(process.env);
const gateway = await Gateway.start(cfg);
let stopping = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.once(signal, () => {
    if (stopping) return;
    stopping = true;
    gateway.stop().catch((err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    });
  });
}
