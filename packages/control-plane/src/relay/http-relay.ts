// Relays one HTTP request to a port inside a sandbox and the answer back to
// the client, streaming both ways with backpressure. Used by the ingress proxy
// and the envd proxy, which differ only in how they render their own errors.
//
// SECURITY: everything the upstream sends is written by the guest. A status
// outside 200-599, a header Node would refuse to write, a head larger than
// MAX_GUEST_HEADER_BYTES, a parse error, or a connection closed before the
// head fails this request only (502, through `fail`), never the process. The
// body is piped with `pipeline`: a fast guest behind a slow client is paused
// (TCP backpressure reaches the guest), and an error on either side destroys
// both.
import http, { type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from "node:http";
import { pipeline } from "node:stream";

/** The largest response head (status line and headers) read from a guest. */
export const MAX_GUEST_HEADER_BYTES = 16 * 1024;

/** Hop-by-hop headers (RFC 9110 7.6.1): never relayed in either direction. */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

export interface RelayFailure {
  /** AGENT_ERROR: nothing answered; GUEST_RESPONSE_INVALID: what answered is not HTTP we relay. */
  code: "AGENT_ERROR" | "GUEST_RESPONSE_INVALID";
  message: string;
}

/** How to open the upstream request: through the sandbox's node, to one of its ports. */
export type OpenUpstream = (init: {
  method: string | undefined;
  path: string;
  headers: OutgoingHttpHeaders;
  maxHeaderSize: number;
}) => http.ClientRequest;

export interface RelayTarget {
  open: OpenUpstream;
  /** Path and query sent upstream. */
  path: string;
  headers: OutgoingHttpHeaders;
}

export interface RelayHooks {
  /** Renders an error for the client; called at most once, only before any of the answer was sent. */
  fail: (f: RelayFailure) => void;
  /** Adds or changes headers of the relayed answer (Set-Cookie). */
  editHeaders?: (headers: Record<string, string | string[]>) => void;
  /** Sends the head before the first body byte (server-sent events). */
  flushHeaders?: boolean;
  /** Called with what went wrong upstream (for the log). */
  onUpstreamError?: (e: Error) => void;
  /**
   * Until this time (ms since the epoch), a refused connection is tried again
   * (every REFUSED_RETRY_MS) instead of failing: a server in the sandbox that
   * is still starting answers once it listens. Only for requests without a
   * body (nothing of the request is consumed before the connection is made).
   */
  retryRefusedUntil?: number;
}

/** The pause between connection attempts to a port that refused. */
export const REFUSED_RETRY_MS = 250;

/** The upstream refused the connection: nothing listens on the port (yet). */
export function isRefused(e: Error): boolean {
  const x = e as Error & { code?: unknown; errno?: unknown };
  // A local socket says ECONNREFUSED as its code; a node's tunnel as its errno (RemoteNode).
  return x.code === "ECONNREFUSED" || x.errno === "ECONNREFUSED";
}

/** A request without a body: no content-length above 0 and no transfer-encoding. */
export function hasNoBody(req: IncomingMessage): boolean {
  const len = req.headers["content-length"];
  return req.headers["transfer-encoding"] === undefined && (len === undefined || Number(len) === 0);
}

export type ResponseHead =
  | { status: number; headers: Record<string, string | string[]> }
  | { problem: string };

/**
 * The status and relayable headers of a guest's answer, or why it cannot be
 * relayed. Hop-by-hop headers and any in `drop` are left out.
 */
export function checkResponseHead(up: IncomingMessage, drop?: (name: string) => boolean): ResponseHead {
  const status = up.statusCode ?? 0;
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    return { problem: `status ${status} is not a final HTTP status (200-599)` };
  }
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(up.headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || drop?.(name)) continue;
    try {
      http.validateHeaderName(name);
      for (const one of Array.isArray(value) ? value : [value]) http.validateHeaderValue(name, one);
    } catch {
      return { problem: `header ${JSON.stringify(name.slice(0, 64))} cannot be relayed` };
    }
    headers[name] = value;
  }
  return { status, headers };
}

/** What an upstream socket or parser error means for the client. */
export function upstreamFailure(e: NodeJS.ErrnoException, what: string): RelayFailure {
  const code = e.code ?? "";
  if (code === "HPE_HEADER_OVERFLOW") {
    return {
      code: "GUEST_RESPONSE_INVALID",
      message: `${what} answered with headers larger than ${MAX_GUEST_HEADER_BYTES} bytes`,
    };
  }
  if (code.startsWith("HPE_")) {
    return { code: "GUEST_RESPONSE_INVALID", message: `${what} answered with malformed HTTP (${code})` };
  }
  return { code: "AGENT_ERROR", message: `${what} did not answer: ${code || e.message}` };
}

/** Opens the upstream request to a guest: strict parser, capped head. */
export function openGuest(t: RelayTarget, method: string | undefined): http.ClientRequest {
  return t.open({ method, path: t.path, headers: t.headers, maxHeaderSize: MAX_GUEST_HEADER_BYTES });
}

/**
 * Relays `req` to the target and its answer to `res`. `what` names the
 * upstream in error messages ("sandbox x port 8000").
 */
export function relayHttp(
  req: IncomingMessage,
  res: ServerResponse,
  target: RelayTarget,
  what: string,
  hooks: RelayHooks,
): void {
  // INVARIANT: `answered` is set once the client has been given a head (the
  // guest's or an error); after that a failure can only cut the connection.
  let answered = false;
  let clientGone = false;
  const failOnce = (f: RelayFailure) => {
    if (answered) {
      res.destroy();
      return;
    }
    answered = true;
    if (clientGone || res.headersSent) {
      res.destroy();
      return;
    }
    hooks.fail(f);
  };

  const bodiless = hooks.retryRefusedUntil !== undefined && hasNoBody(req);
  let upstream: http.ClientRequest;
  const attempt = () => {
    // INVARIANT: only the current attempt may answer the client or retry.
    const current = openGuest(target, req.method);
    upstream = current;
    let retrying = false;
    current.on("response", (up) => {
      const head = checkResponseHead(up);
      if ("problem" in head) {
        up.destroy();
        current.destroy();
        failOnce({ code: "GUEST_RESPONSE_INVALID", message: `${what} answered: ${head.problem}` });
        return;
      }
      hooks.editHeaders?.(head.headers);
      try {
        res.writeHead(head.status, head.headers);
      } catch (e) {
        up.destroy();
        current.destroy();
        failOnce({ code: "GUEST_RESPONSE_INVALID", message: `${what} answered: ${(e as Error).message}` });
        return;
      }
      answered = true;
      if (hooks.flushHeaders) res.flushHeaders();
      pipeline(up, res, (err) => {
        if (err) current.destroy();
      });
    });
    current.on("error", (e) => {
      hooks.onUpstreamError?.(e);
      if (
        bodiless &&
        isRefused(e) &&
        !answered &&
        !clientGone &&
        Date.now() + REFUSED_RETRY_MS <= hooks.retryRefusedUntil!
      ) {
        retrying = true;
        setTimeout(() => {
          if (!clientGone && !answered) attempt();
        }, REFUSED_RETRY_MS).unref();
        return;
      }
      failOnce(upstreamFailure(e, what));
    });
    // A guest that closes without a head (or answers a plain request with 101,
    // which makes Node close the socket without an error) gets no hanging client.
    current.on("close", () => {
      if (!answered && !retrying) {
        failOnce({
          code: "GUEST_RESPONSE_INVALID",
          message: `${what} closed the connection without answering`,
        });
      }
    });
    // A request without a body is sent whole at once; one with a body streams.
    if (bodiless) current.end();
  };
  res.on("close", () => {
    if (!res.writableFinished) {
      clientGone = true;
      upstream.destroy();
    }
  });
  req.on("error", () => upstream.destroy());
  attempt();
  if (bodiless) req.resume();
  else req.pipe(upstream!);
}
