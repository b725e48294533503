// Which browser requests may use the ingress cookie. Every sandbox's pages are
// served under one site (`*.<domain>`), so a page in sandbox A is same-site
// with sandbox B: SameSite=Lax cookies do not separate them, and a WebSocket
// has no CORS at all. Pure functions (unit-tested in origin.test.ts).
//
// SECURITY: a request that authenticates with the cookie (no header, no
// `?token=`) is refused when the browser says it comes from another origin:
// - an `Origin` header that is not the target's own origin;
// - `Sec-Fetch-Site: same-site | cross-site`, unless it is a top-level
//   navigation (following a link to the sandbox's page stays possible, like
//   SameSite=Lax);
// - a WebSocket upgrade without an `Origin` (browsers always send one).
import type { IncomingHttpHeaders } from "node:http";

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** Host and port of a Host header (`[v6]:port`, `name:port`, `name`), lowercased, no trailing dot. */
function splitHost(host: string): { name: string; port: string } {
  const h = host.trim().toLowerCase();
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(h);
  const name = (m?.[1] ?? h).replace(/\.$/, "");
  return { name, port: m?.[2] ?? "" };
}

/** Whether `origin` (as a browser sends it) is the origin of a request to `host`. */
export function isOwnOrigin(origin: string, host: string | undefined): boolean {
  if (!host) return false;
  let u: URL;
  try {
    u = new URL(origin);
  } catch {
    return false; // "null" (sandboxed frames, data: URLs) and garbage
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") return false;
  const h = splitHost(host);
  const defaultPort = u.protocol === "https:" ? "443" : "80";
  // A TLS-terminating proxy in front may present http or https: the scheme is
  // not compared, host and port are (a missing port is the scheme's default).
  const originPort = u.port || defaultPort;
  const hostPort = h.port || defaultPort;
  return u.hostname.replace(/\.$/, "") === h.name && originPort === hostPort;
}

/** Why a cookie-authenticated ingress request must be refused, or undefined when it may pass. */
export function cookieRequestRefusal(headers: IncomingHttpHeaders, upgrade: boolean): string | undefined {
  const origin = one(headers.origin);
  const host = one(headers.host);
  if (upgrade && origin === undefined) {
    return "a WebSocket that authenticates with the ingress cookie must carry an Origin header; programs send the token in X-Firebreak-Ingress-Token instead";
  }
  if (origin !== undefined && !isOwnOrigin(origin, host)) {
    return `the ingress cookie is not accepted from another origin (Origin ${JSON.stringify(origin.slice(0, 200))}); send the token in X-Firebreak-Ingress-Token instead`;
  }
  const site = one(headers["sec-fetch-site"]);
  if (site === "same-site" || site === "cross-site") {
    const navigation =
      one(headers["sec-fetch-mode"]) === "navigate" && one(headers["sec-fetch-dest"]) === "document";
    if (!navigation) {
      return `the ingress cookie is not accepted on ${site} subresource requests (a page of another sandbox or site); send the token in X-Firebreak-Ingress-Token instead`;
    }
  }
  return undefined;
}
