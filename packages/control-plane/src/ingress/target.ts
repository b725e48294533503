// Which sandbox port a request is for: parse only, no I/O (unit-tested).
//   Host-based:  Host: <port>-<sandboxId>.<domain>[:listenPort]   path kept as is
//   Path-based:  /ingress/<sandboxId>/<port>/<path...>            prefix removed
import { PATH_PREFIX, TOKEN_COOKIE, TOKEN_QUERY } from "./config.ts";

export interface IngressTarget {
  sandboxId: string;
  port: number;
  /** How the request named its target. */
  via: "host" | "path";
  /** The path and query to send to the sandbox (the `?token=` parameter removed). */
  upstreamPath: string;
  /** Path-based only: the prefix the sandbox's app is mounted under (`/ingress/<id>/<port>`). */
  prefix?: string;
  /** The token from `?token=`, when given. */
  queryToken?: string;
  /** Path-based request without the slash after the port: redirect to it (relative links then work). */
  redirectTo?: string;
}

const ID = "[a-z0-9]{1,64}";
const PORT = "[0-9]{1,5}";
const PATH_RE = new RegExp(`^${PATH_PREFIX}(${ID})/(${PORT})(/.*)?$`);

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** A matcher for one domain (the regexp is built once). */
export function targetMatcher(domain: string) {
  const hostRe = new RegExp(`^(${PORT})-(${ID})\\.${escapeRe(domain)}\\.?(?::\\d{1,5})?$`, "i");
  return (host: string | undefined, url: string | undefined): IngressTarget | undefined => {
    const raw = url ?? "/";
    const q = raw.indexOf("?");
    const pathname = q < 0 ? raw : raw.slice(0, q);
    const search = q < 0 ? "" : raw.slice(q + 1);
    let sandboxId: string;
    let port: number;
    let rest: string;
    let via: IngressTarget["via"];
    let prefix: string | undefined;
    const h = host ? hostRe.exec(host) : null;
    if (h) {
      via = "host";
      port = Number(h[1]);
      sandboxId = h[2]!.toLowerCase();
      rest = pathname.startsWith("/") ? pathname : `/${pathname}`;
    } else {
      const p = PATH_RE.exec(pathname);
      if (!p) return undefined;
      via = "path";
      sandboxId = p[1]!;
      port = Number(p[2]);
      prefix = `${PATH_PREFIX}${sandboxId}/${port}`;
      if (p[3] === undefined) {
        return {
          sandboxId,
          port,
          via,
          prefix,
          upstreamPath: "/",
          redirectTo: `${prefix}/${search ? `?${search}` : ""}`,
        };
      }
      rest = p[3];
    }
    let queryToken: string | undefined;
    let query = search;
    if (search) {
      const params = new URLSearchParams(search);
      const t = params.get(TOKEN_QUERY);
      if (t !== null) {
        queryToken = t;
        params.delete(TOKEN_QUERY);
        query = params.toString();
      }
    }
    return {
      sandboxId,
      port,
      via,
      upstreamPath: query ? `${rest}?${query}` : rest,
      ...(prefix ? { prefix } : {}),
      ...(queryToken !== undefined ? { queryToken } : {}),
    };
  };
}

/**
 * The values of the ingress token cookie in a Cookie header (a browser may
 * send several: a page served under the same site can set one with a Domain
 * attribute), and the header without them.
 */
export function splitTokenCookie(cookie: string | undefined): { tokens: string[]; rest?: string } {
  const tokens: string[] = [];
  if (!cookie) return { tokens };
  const kept: string[] = [];
  for (const part of cookie.split(";")) {
    const p = part.trim();
    if (!p) continue;
    const eq = p.indexOf("=");
    if (eq > 0 && p.slice(0, eq) === TOKEN_COOKIE) tokens.push(safeDecode(p.slice(eq + 1)));
    else kept.push(p);
  }
  return { tokens, ...(kept.length ? { rest: kept.join("; ") } : {}) };
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}
