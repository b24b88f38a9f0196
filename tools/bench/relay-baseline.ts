/**
 * The baseline of the 1:1 benchmark: a bare uWebSockets.js relay with no auth,
 * storage or routing. A client sends `<target index>|<payload>` and the relay writes
 * the payload to the target's socket. Prints its port, then serves until SIGTERM.
 */
import uWS from "uWebSockets.js";

const sockets = new Map<number, uWS.WebSocket<{ id: number }>>();
const app = uWS.App();
app.ws<{ id: number }>("/ws", {
  upgrade(res, req, context) {
    const id = Number(req.getQuery("id"));
    res.upgrade({ id }, req.getHeader("sec-websocket-key"), req.getHeader("sec-websocket-protocol"), req.getHeader("sec-websocket-extensions"), context);
  },
  open(ws) {
    sockets.set(ws.getUserData().id, ws);
  },
  message(ws, message) {
    const text = Buffer.from(message).toString();
    const bar = text.indexOf("|");
    sockets.get(Number(text.slice(0, bar)))?.send(text.slice(bar + 1), false);
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
