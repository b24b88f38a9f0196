/**
 * Close codes of the WebSocket protocol (documented in docs/protocol.md). 1xxx are
 * the standard ones; 4xxx are Parley's. "Reconnect" codes invite the client to
 * reconnect (with backoff) and resume from its cursors; terminal ones do not.
 */
export const CloseCode = {
  /** Normal closure. */
  NORMAL: 1000,
  /**
   * Not sent by Parley gateways (they send DRAINING): a proxy or load balancer in front
   * of them may send it when it goes away. Reconnect with backoff.
   */
  GOING_AWAY: 1001,
  /**
   * Not sent: what a client observes when the gateway drops a connection without a
   * close handshake, which it does when a frame exceeds the hard size limit (a
   * protocol violation; uWebSockets.js cuts such a connection at once).
   */
  DROPPED: 1006,
  /** The gateway failed unexpectedly: reconnect. */
  INTERNAL_ERROR: 1011,
  /** The session was revoked (log out elsewhere): refresh or log in again before reconnecting. */
  SESSION_REVOKED: 4001,
  /** The client read too slowly and the gateway's send buffer filled: reconnect and resync. */
  SLOW_CONSUMER: 4008,
  /**
   * This gateway is draining (shutting down or being replaced): ask
   * AuthService.AssignGateway for another gateway and reconnect there now, then resume.
   * No backoff needed: the gateway already spreads its closes over the drain period.
   */
  DRAINING: 4012,
  /** A backend needed to register the connection is unavailable: reconnect with backoff. */
  TRY_AGAIN_LATER: 4013,
  /**
   * The session service refused the access token after the upgrade (a bad signature, a
   * revoked or unknown session): refresh or log in again before reconnecting.
   */
  UNAUTHENTICATED: 4401,
  /** More frames before Hello than the client protocol allows (a resume, a few sends). */
  POLICY_VIOLATION: 1008,
} as const;

/** The close reason sent with DRAINING (4012). */
export const DRAINING_REASON = "gateway draining: reconnect to another gateway";

/** Subprotocols: the encoding of the frames the server sends. */
export const SUBPROTOCOL_BINARY = "parley.v1";
export const SUBPROTOCOL_JSON = "parley.v1.json";
/** A subprotocol entry `bearer.<access token>` carries the token for browsers, which cannot set headers. */
export const BEARER_PREFIX = "bearer.";

export type Encoding = "binary" | "json";

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+$/;

/**
 * What can be said of an access token without its key, so that an upgrade is refused
 * (401) at once: not shaped like a JWT, too long, or past its `exp` (read unverified:
 * it can only make the gateway refuse). Undefined when it may be valid; the session
 * service decides that after the upgrade.
 */
export function tokenRefusal(token: string, nowMs: number): string | undefined {
  const m = token.length <= 4096 ? JWT_SHAPE.exec(token) : null;
  if (!m) return "malformed token";
  let exp: unknown;
  try {
    exp = (JSON.parse(Buffer.from(m[1]!, "base64url").toString("utf8")) as { exp?: unknown }).exp;
  } catch {
    return "malformed token";
  }
  if (typeof exp !== "number") return "malformed token";
  if (exp * 1000 <= nowMs) return "access token expired";
  return undefined;
}

export interface Negotiated {
  encoding: Encoding;
  /** The subprotocol to answer with ("" when the client offered none). */
  protocol: string;
  token: string | undefined;
}

/**
 * Reads the offered subprotocols and the Authorization header. Returns an error text
 * when the offer is unusable.
 */
export function negotiate(protocolHeader: string, authorization: string): Negotiated | string {
  let encoding: Encoding = "binary";
  let protocol = "";
  let token: string | undefined;
  for (const raw of protocolHeader.split(",")) {
    const p = raw.trim();
    if (p === "") continue;
    if (p === SUBPROTOCOL_BINARY || p === SUBPROTOCOL_JSON) {
      if (protocol === "") {
        protocol = p;
        encoding = p === SUBPROTOCOL_JSON ? "json" : "binary";
      }
    } else if (p.startsWith(BEARER_PREFIX)) {
      token = p.slice(BEARER_PREFIX.length);
    }
  }
  if (protocolHeader.trim() !== "" && protocol === "") {
    return `offer subprotocol ${SUBPROTOCOL_BINARY} or ${SUBPROTOCOL_JSON}`;
  }
  const m = /^Bearer\s+(\S+)$/i.exec(authorization);
  if (m) token ??= m[1];
  return { encoding, protocol, token };
}
