import { ConfigError } from "../../../lib/env.js";

/**
 * The Web Push endpoint allow-list. Notify POSTs to URLs that clients hand in (a
 * PushSubscription's endpoint), so without a list of acceptable hosts any user could make
 * the server call into its own network (SSRF). Patterns are host names, or `*.` followed
 * by a domain, which matches any host strictly below it (`*.push.apple.com` matches
 * `web.push.apple.com`, not `push.apple.com`). A lone `*` allows every host (tests,
 * private push services behind a firewall you trust).
 */
const LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
const HOST_RE = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`);

/** Checks and normalizes a comma-separated list of host patterns. */
export function parseHostPatterns(variable: string, raw: string): string[] {
  const patterns = raw
    .split(",")
    .map((p) => p.trim().toLowerCase())
    .filter((p) => p !== "");
  if (patterns.length === 0) throw new ConfigError(`${variable}: must name at least one host`);
  for (const p of patterns) {
    if (p === "*") continue;
    const host = p.startsWith("*.") ? p.slice(2) : p;
    if (!HOST_RE.test(host) || host.length > 253) {
      throw new ConfigError(`${variable}: "${p}" is not a host name or a *.domain pattern`);
    }
  }
  return patterns;
}

/** True when `hostname` (as in URL.hostname) matches one of the patterns. */
export function hostAllowed(patterns: readonly string[], hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/\.$/, "");
  for (const p of patterns) {
    if (p === "*") return true;
    if (p.startsWith("*.")) {
      if (host.endsWith(p.slice(1)) && host.length > p.length - 1) return true;
    } else if (host === p) {
      return true;
    }
  }
  return false;
}

/**
 * Why a Web Push endpoint is not acceptable, or undefined when it is: an https URL of at
 * most `maxChars` characters, without credentials, on an allowed host (and on the default port).
 */
export function endpointProblem(patterns: readonly string[], endpoint: string, maxChars = 2048): string | undefined {
  if (endpoint.length === 0) return "must not be empty";
  if (endpoint.length > maxChars) return `must have at most ${maxChars} characters`;
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return "is not a URL";
  }
  if (url.protocol !== "https:") return "must be an https URL";
  if (url.username !== "" || url.password !== "") return "must not contain credentials";
  if (url.port !== "" && !patterns.includes("*")) return "must use the default https port";
  if (!hostAllowed(patterns, url.hostname)) return `host ${url.hostname} is not an allowed push service`;
  return undefined;
}
