import { onShutdownSignal } from "../../lib/shutdown.js";
import { telemetryConfig } from "../../lib/telemetry/config.js";
import { startTelemetry } from "../../lib/telemetry/telemetry.js";
import { startPlatform } from "./platform.js";

/** `npm start`: the whole platform in one process, no external servers. */
const telemetry = startTelemetry(telemetryConfig(process.env, "platform"));
const platform = await startPlatform(process.env);
const wsUrl = platform.publicUrl.replace(/^http/, "ws") + "/ws";
// One machine-readable line (tests and tools read it), then the human version.
console.log(
  JSON.stringify({ parley: "ready", publicUrl: platform.publicUrl, wsUrl, internalUrl: platform.internalUrl, dataDir: platform.dataDir }),
);
console.log(`
Parley is running (embedded mode, data in ${platform.dataDir}).
  WebSocket:    ${wsUrl}
  Connect API:  ${platform.publicUrl}/parley.client.v1.AuthService/SignUp (JSON or binary)
  gRPC (all internal services, reflection on): ${platform.internalUrl}
  Chat from a terminal:  npm run cli -- --server ${platform.publicUrl}
Press Ctrl-C to stop.
`);
onShutdownSignal(
  async () => {
    await platform.stop();
    await telemetry.shutdown();
    console.log("Parley stopped.");
  },
  (err) => console.error(err),
);
