/**
 * The socket.io baseline of tools/bench/idle-connections.ts: a socket.io 4 server with
 * what an authenticated chat connection needs at the least — a handshake middleware that
 * checks a signed token (HMAC-SHA256 of the user id, the key shared with the bench
 * through BENCH_TOKEN_KEY) and a room per user, so a message to a user could reach all of
 * their sockets. Default options otherwise (WebSocket transport only, no compression).
 * Prints its port, then serves until SIGTERM.
 */
import { timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Server } from "socket.io";
import { signBenchToken } from "./bench-token.js";

const key = process.env.BENCH_TOKEN_KEY;
if (!key) throw new Error("BENCH_TOKEN_KEY is not set");

const http = createServer();
const io = new Server(http, { transports: ["websocket"], serveClient: false });
io.use((socket, next) => {
  const token = String((socket.handshake.auth as { token?: unknown }).token ?? "");
  const dot = token.lastIndexOf(".");
  const userId = token.slice(0, dot);
  const given = Buffer.from(token.slice(dot + 1));
  const expected = Buffer.from(signBenchToken(key, userId).slice(dot + 1));
  if (dot <= 0 || given.length !== expected.length || !timingSafeEqual(given, expected)) return next(new Error("unauthenticated"));
  socket.data.userId = userId;
  next();
});
io.on("connection", (socket) => {
  void socket.join(`user:${socket.data.userId as string}`);
});
http.listen(0, "127.0.0.1", () => {
  const address = http.address();
  if (!address || typeof address === "string") throw new Error("socket.io baseline cannot listen");
  console.log(JSON.stringify({ port: address.port }));
  process.once("SIGTERM", () => {
    void io.close();
  });
});
