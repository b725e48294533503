// The ingress proxy: HTTP requests and WebSocket upgrades for
// `<port>-<sandboxId>.<domain>` or `/ingress/<sandboxId>/<port>/...` go to the
// sandbox's `<sandboxAddress>:<port>` (the node's namespace DNATs every port
// to the guest). Runs below the HTTP router like the envd proxy: nothing is
// buffered, so chunked responses, server-sent events and uploads stream.
import { randomBytes, timingSafeEqual } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { sha256 } from "../auth/keys.ts";
import { isEnvdRequest } from "../e2b/envd-proxy.ts";
import { API_ERRORS, type ApiErrorCode } from "../errors.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import { isFinalState, type Store } from "../store/store.ts";
import { AGENT_PORT, TOKEN_COOKIE, TOKEN_HEADER } from "./config.ts";
import { publicPortsOf } from "./public-ports.ts";
import { type IngressTarget, splitTokenCookie, targetMatcher } from "./target.ts";

export interface IngressDeps {
  store: Store;
  sandboxes: SandboxService;
  log: Logger;
  /** `<port>-<id>.<domain>` is routed here (ingress/config.ts: ingressDomain()). */
  domain: string;
}

// Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded; `host` is kept.
const HOP_BY_HOP = new Set([
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

interface Failure {
  code: ApiErrorCode;
  message: string;
}

interface Allowed {
  host: string;
  port: number;
  /** Set-Cookie for a browser that authenticated with `?token=`. */
  setCookie?: string;
}

function sameHash(a: string, b: string | null): boolean {
  if (!b || a.length !== b.length) return false;
  return timingSafeEqual(Buffer.from(a), Buffer.from(b));
}

function errorBody(f: Failure, requestId: string): string {
  return JSON.stringify({ error: { code: f.code, message: f.message, requestId } });
}

function newRequestId(req: IncomingMessage): string {
  const incoming = req.headers["x-request-id"];
  return typeof incoming === "string" && /^[\w.-]{1,64}$/.test(incoming)
    ? incoming
    : `req_${randomBytes(8).toString("hex")}`;
}

export function createIngress(deps: IngressDeps) {
  const { store, sandboxes, log } = deps;
  const match = targetMatcher(deps.domain);
  const publicPorts = publicPortsOf(store);
  // No keep-alive upstream: sandbox addresses are reused by later sandboxes
  // (as in the envd proxy).
  const agent = new http.Agent({ keepAlive: false, maxSockets: 1024 });

  /** The sandbox and port a request may reach, or why not. */
  async function authorize(req: IncomingMessage, t: IngressTarget): Promise<Allowed | Failure> {
    // SECURITY: the guest agent's port is only reachable through the envd
    // proxy, which checks the token itself and speaks only the agent's API.
    if (t.port === AGENT_PORT || t.port < 1 || t.port > 65535) {
      return { code: "NOT_FOUND", message: `port ${t.port} is not served through ingress` };
    }
    const rec = await store.getSandbox(t.sandboxId);
    if (!rec || isFinalState(rec.state)) {
      publicPorts.forget(t.sandboxId);
      return { code: "NOT_FOUND", message: `no sandbox ${t.sandboxId} (unknown or ended)` };
    }
    let setCookie: string | undefined;
    // SECURITY: a token is required unless the sandbox made this port public.
    // The sandbox's envd access token is compared by hash in constant time.
    if (!(await publicPorts.isPublic(rec.id, t.port))) {
      const header = req.headers[TOKEN_HEADER];
      const cookie = splitTokenCookie(req.headers.cookie).token;
      const token = typeof header === "string" ? header : (t.queryToken ?? cookie ?? "");
      if (!sameHash(sha256(token), rec.envdTokenHash)) {
        return {
          code: "UNAUTHENTICATED",
          message: `port ${t.port} of sandbox ${rec.id} is private: send the sandbox's envdAccessToken as X-Access-Token (or ?token= in a browser), or make the port public with POST /v1/sandboxes/${rec.id}/ports/${t.port} {"public": true}`,
        };
      }
      if (t.queryToken !== undefined && typeof header !== "string") {
        const cookiePath = t.prefix ?? "/";
        setCookie = `${TOKEN_COOKIE}=${encodeURIComponent(token)}; Path=${cookiePath}; HttpOnly; SameSite=Lax`;
      }
    }
    if (rec.state !== "running") {
      return {
        code: "CONFLICT",
        message: `sandbox ${rec.id} is ${rec.state}; ${rec.state === "paused" ? "resume it first" : "try again when it runs"}`,
      };
    }
    const endpoint = sandboxes.envdEndpoint(rec);
    if (!endpoint) return { code: "AGENT_ERROR", message: `sandbox ${rec.id} has no network endpoint` };
    return { host: endpoint.host, port: t.port, ...(setCookie ? { setCookie } : {}) };
  }

  /** Request headers for the sandbox: no hop-by-hop headers and no ingress token. */
  function upstreamHeaders(req: IncomingMessage, t: IngressTarget, keepUpgrade: boolean) {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || k === TOKEN_HEADER || k === "cookie") continue;
      if (HOP_BY_HOP.has(k) && !(keepUpgrade && (k === "connection" || k === "upgrade"))) continue;
      headers[k] = v;
    }
    // SECURITY: the access token is not handed to the app in the sandbox.
    const rest = splitTokenCookie(req.headers.cookie).rest;
    if (rest) headers["cookie"] = rest;
    const prior = req.headers["x-forwarded-for"];
    const client = req.socket.remoteAddress ?? "";
    headers["x-forwarded-for"] = prior ? `${prior}, ${client}` : client;
    headers["x-forwarded-proto"] = "http";
    if (req.headers.host) headers["x-forwarded-host"] = req.headers.host;
    if (t.prefix) headers["x-forwarded-prefix"] = t.prefix;
    return headers;
  }

  function fail(res: ServerResponse, f: Failure, requestId: string): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = errorBody(f, requestId);
    res.writeHead(API_ERRORS[f.code].status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      "x-request-id": requestId,
    });
    res.end(body);
  }

  function failRaw(socket: Duplex, f: Failure, requestId: string): void {
    const status = API_ERRORS[f.code].status;
    const body = errorBody(f, requestId);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
    );
  }

  const upstreamFailure = (t: IngressTarget, e: Error): Failure => ({
    code: "AGENT_ERROR",
    message: `sandbox ${t.sandboxId} did not answer on port ${t.port}: ${(e as NodeJS.ErrnoException).code ?? e.message}`,
  });

  return {
    /**
     * The ingress target of a request, or undefined for the API and the envd
     * proxy. A Host of `49983-<id>.<domain>` carrying the envd headers (an E2B
     * SDK without E2B_SANDBOX_URL) is left to the envd proxy.
     */
    match(req: IncomingMessage): IngressTarget | undefined {
      const t = match(req.headers.host, req.url);
      if (t && t.port === AGENT_PORT && t.via === "host" && isEnvdRequest(req)) return undefined;
      return t;
    },

    /** Proxies one HTTP request (streaming both ways). */
    async handle(req: IncomingMessage, res: ServerResponse, t: IngressTarget): Promise<void> {
      const requestId = newRequestId(req);
      if (t.redirectTo) {
        res.writeHead(308, { location: t.redirectTo, "content-length": 0, "x-request-id": requestId });
        res.end();
        return;
      }
      let allowed: Allowed | Failure;
      try {
        allowed = await authorize(req, t);
      } catch (e) {
        log.error({ err: e, requestId }, "ingress lookup failed");
        return fail(res, { code: "INTERNAL", message: "internal error" }, requestId);
      }
      if ("code" in allowed) {
        log.debug({ requestId, sandboxId: t.sandboxId, port: t.port, code: allowed.code }, "ingress refused");
        return fail(res, allowed, requestId);
      }
      const upstream = http.request(
        {
          host: allowed.host,
          port: allowed.port,
          method: req.method,
          path: t.upstreamPath,
          headers: upstreamHeaders(req, t, false),
          agent,
        },
        (up) => {
          const out: Record<string, string | string[]> = {};
          for (const [k, v] of Object.entries(up.headers)) {
            if (v === undefined || HOP_BY_HOP.has(k)) continue;
            out[k] = v;
          }
          if (allowed.setCookie) {
            const prior = out["set-cookie"];
            out["set-cookie"] = [...(Array.isArray(prior) ? prior : prior ? [prior] : []), allowed.setCookie];
          }
          res.writeHead(up.statusCode ?? 502, out);
          // Streamed responses (SSE, chunked) get their headers before the first byte of body.
          res.flushHeaders();
          up.pipe(res);
          up.on("error", () => res.destroy());
        },
      );
      upstream.on("error", (e) => {
        log.debug({ requestId, sandboxId: t.sandboxId, port: t.port, err: e }, "ingress upstream error");
        fail(res, upstreamFailure(t, e), requestId);
      });
      res.on("close", () => {
        if (!res.writableFinished) upstream.destroy();
      });
      req.pipe(upstream);
    },

    /**
     * Proxies an HTTP Upgrade (WebSocket): forwards the handshake, relays the
     * sandbox's answer, then pipes the two sockets both ways.
     */
    async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, t: IngressTarget): Promise<void> {
      const requestId = newRequestId(req);
      socket.on("error", () => {});
      let allowed: Allowed | Failure;
      try {
        allowed = t.redirectTo
          ? { code: "NOT_FOUND", message: `use ${t.redirectTo}` }
          : await authorize(req, t);
      } catch (e) {
        log.error({ err: e, requestId }, "ingress lookup failed");
        return failRaw(socket, { code: "INTERNAL", message: "internal error" }, requestId);
      }
      if ("code" in allowed) return failRaw(socket, allowed, requestId);
      const upstream = http.request({
        host: allowed.host,
        port: allowed.port,
        method: req.method,
        path: t.upstreamPath,
        headers: upstreamHeaders(req, t, true),
        agent,
      });
      upstream.on("upgrade", (up, upSocket, upHead) => {
        let lines = `HTTP/1.1 ${up.statusCode ?? 101} ${up.statusMessage ?? ""}\r\n`;
        for (let i = 0; i < up.rawHeaders.length; i += 2) {
          lines += `${up.rawHeaders[i]}: ${up.rawHeaders[i + 1]}\r\n`;
        }
        socket.write(`${lines}\r\n`);
        if (upHead.length) socket.write(upHead);
        if (head.length) upSocket.write(head);
        upSocket.on("error", () => socket.destroy());
        socket.on("error", () => upSocket.destroy());
        upSocket.on("close", () => socket.destroy());
        socket.on("close", () => upSocket.destroy());
        upSocket.pipe(socket);
        socket.pipe(upSocket);
      });
      // The sandbox refused the upgrade: relay its answer, then close.
      upstream.on("response", (up) => {
        let lines = `HTTP/1.1 ${up.statusCode ?? 502} ${up.statusMessage ?? ""}\r\n`;
        for (const [k, v] of Object.entries(up.headers)) {
          if (v === undefined || HOP_BY_HOP.has(k) || k === "content-length") continue;
          for (const one of Array.isArray(v) ? v : [v]) lines += `${k}: ${one}\r\n`;
        }
        socket.write(`${lines}connection: close\r\n\r\n`);
        up.pipe(socket);
        up.on("error", () => socket.destroy());
      });
      upstream.on("error", (e) => {
        log.debug(
          { requestId, sandboxId: t.sandboxId, port: t.port, err: e },
          "ingress upgrade upstream error",
        );
        if (socket.writable) failRaw(socket, upstreamFailure(t, e), requestId);
      });
      socket.on("close", () => upstream.destroy());
      upstream.end();
    },
  };
}

export type Ingress = ReturnType<typeof createIngress>;
