/**
 * The baseline of the benchmarks: a bare uWebSockets.js relay with no auth, storage or
 * routing. A client sends `<target index>|<payload>` and the relay writes the payload
 * to the target's socket; or `*|<payload>` and the relay publishes it to every socket
 * that connected with `?group=1`, except the sender (one uWS topic, as a bare group
 * chat would). Prints its port, then serves until SIGTERM.
 */
import uWS from "uWebSockets.js";

const sockets = new Map<number, uWS.WebSocket<{ id: number; group: boolean }>>();
const app = uWS.App();
app.ws<{ id: number; group: boolean }>("/ws", {
  maxBackpressure: 64 * 1024 * 1024,
  upgrade(res, req, context) {
    const id = Number(req.getQuery("id"));
    const group = req.getQuery("group") === "1";
    res.upgrade({ id, group }, req.getHeader("sec-websocket-key"), req.getHeader("sec-websocket-protocol"), req.getHeader("sec-websocket-extensions"), context);
  },
  open(ws) {
    sockets.set(ws.getUserData().id, ws);
    if (ws.getUserData().group) ws.subscribe("all");
  },
  message(ws, message) {
    const text = Buffer.from(message).toString();
    const bar = text.indexOf("|");
    if (text.startsWith("*|")) ws.publish("all", text.slice(2), false);
    else sockets.get(Number(text.slice(0, bar)))?.send(text.slice(bar + 1), false);
  },
  close(ws) {
    sockets.delete(ws.getUserData().id);
  },
});
app.listen("127.0.0.1", 0, (listen) => {
  if (!listen) throw new Error("relay cannot listen");
  console.log(JSON.stringify({ port: uWS.us_socket_local_port(listen) }));
  process.once("SIGTERM", () => {
    uWS.us_listen_socket_close(listen);
    for (const s of sockets.values()) s.close();
  });
});
