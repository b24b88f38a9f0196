import { onShutdownSignal } from "../../lib/shutdown.js";
import { loadConfig } from "./config.js";
import { Gateway } from "./context.js";

const cfg = loadConfig(process.env);
const gateway = await Gateway.start(cfg);
onShutdownSignal(
  () => gateway.stop(),
  (err) => console.error(err),
);
