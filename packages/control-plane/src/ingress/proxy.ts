// The ingress proxy: HTTP requests and WebSocket upgrades for
// `<port>-<sandboxId>.<domain>` or `/ingress/<sandboxId>/<port>/...` go to the
// sandbox's `<sandboxAddress>:<port>` (the node's namespace DNATs every port
// to the guest). Runs below the HTTP router like the envd proxy: nothing is
// buffered, so chunked responses, server-sent events and uploads stream.
import { randomBytes } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { isEnvdRequest } from "../e2b/envd-proxy.ts";
import { API_ERRORS, type ApiErrorCode } from "../errors.ts";
import {
  checkResponseHead,
  HOP_BY_HOP,
  openGuest,
  type RelayTarget,
  relayHttp,
  upstreamFailure,
} from "../relay/http-relay.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import { isFinalState, type SandboxRecord, type Store } from "../store/store.ts";
import {
  AGENT_PORT,
  E2B_TOKEN_HEADER,
  ENVD_TOKEN_HEADER,
  ingressConnectWaitMs,
  TOKEN_COOKIE,
  TOKEN_HEADER,
} from "./config.ts";
import type { IngressTokens } from "./ingress-token.ts";
import { cookieRequestRefusal } from "./origin.ts";
import { publicPortsOf } from "./public-ports.ts";
import { type IngressTarget, splitTokenCookie, targetMatcher } from "./target.ts";

export interface IngressDeps {
  store: Store;
  sandboxes: SandboxService;
  log: Logger;
  /** `<port>-<id>.<domain>` is routed here (ingress/config.ts: ingressDomain()). */
  domain: string;
  /** Derives and checks the sandboxes' ingress tokens. */
  tokens: IngressTokens;
  /** How long a bodiless request waits for a port that refuses (ingressConnectWaitMs). */
  connectWaitMs?: number;
}

/** Request headers that carry a token: never forwarded to the sandbox's app. */
const TOKEN_HEADERS = new Set([TOKEN_HEADER, E2B_TOKEN_HEADER, ENVD_TOKEN_HEADER]);

interface Failure {
  code: ApiErrorCode;
  message: string;
  /** For sandboxes created through E2B's API: E2B's status and body instead of ours. */
  e2b?: { status: number; body: Record<string, unknown> };
}

interface Allowed {
  rec: SandboxRecord;
  port: number;
  /** Set-Cookie for a browser that authenticated with `?token=`. */
  setCookie?: string;
}

function errorBody(f: Failure, requestId: string): string {
  if (f.e2b) return JSON.stringify(f.e2b.body);
  return JSON.stringify({ error: { code: f.code, message: f.message, requestId } });
}

const statusOf = (f: Failure) => f.e2b?.status ?? API_ERRORS[f.code].status;

function newRequestId(req: IncomingMessage): string {
  const incoming = req.headers["x-request-id"];
  return typeof incoming === "string" && /^[\w.-]{1,64}$/.test(incoming)
    ? incoming
    : `req_${randomBytes(8).toString("hex")}`;
}

function headerToken(req: IncomingMessage): string | undefined {
  for (const name of [TOKEN_HEADER, E2B_TOKEN_HEADER]) {
    const v = req.headers[name];
    if (typeof v === "string") return v;
  }
  return undefined;
}

export function createIngress(deps: IngressDeps) {
  const { store, sandboxes, log } = deps;
  const match = targetMatcher(deps.domain);
  const publicPorts = publicPortsOf(store);
  const connectWaitMs = deps.connectWaitMs ?? ingressConnectWaitMs();
  // What ingress holds open to a sandbox (requests, WebSockets) ends when it is
  // killed or paused: the node's tunnels to it close (NodeDaemonClient.closeSandbox).
  // No keep-alive upstream: sandbox addresses are reused by later sandboxes
  // (as in the envd proxy).

  /** The sandbox and port a request may reach, or why not. */
  async function authorize(
    req: IncomingMessage,
    t: IngressTarget,
    upgrade: boolean,
  ): Promise<Allowed | Failure> {
    const a = await authorizeNative(req, t, upgrade);
    if (!("code" in a) || a.code === "NOT_FOUND" || a.code === "INTERNAL") return a;
    // E2B's answers for its sandboxes (a private port without the traffic token: 403).
    const settings = await publicPorts.settings(t.sandboxId);
    if (settings.e2b && (a.code === "UNAUTHENTICATED" || a.code === "FORBIDDEN")) {
      return { ...a, e2b: { status: 403, body: { code: 403, message: a.message } } };
    }
    return a;
  }

  async function authorizeNative(
    req: IncomingMessage,
    t: IngressTarget,
    upgrade: boolean,
  ): Promise<Allowed | Failure> {
    // SECURITY: the guest agent's port is only reachable through the envd
    // proxy, which checks the token itself and speaks only the agent's API.
    if (t.port === AGENT_PORT || t.port < 1 || t.port > 65535) {
      return { code: "NOT_FOUND", message: `port ${t.port} is not served through ingress` };
    }
    const rec = await store.getSandbox(t.sandboxId);
    if (!rec || isFinalState(rec.state)) {
      // E2B answers an ended sandbox's URL with 502 and this body (its SDK tests read it).
      const e2b = rec ? (await publicPorts.settings(rec.id)).e2b : false;
      publicPorts.forget(t.sandboxId);
      const message = `no sandbox ${t.sandboxId} (unknown or ended)`;
      return {
        code: "NOT_FOUND",
        message,
        ...(e2b
          ? {
              e2b: {
                status: 502,
                body: { code: 502, message: "The sandbox was not found", sandboxId: rec!.id },
              },
            }
          : {}),
      };
    }
    let setCookie: string | undefined;
    // SECURITY: a token is required unless the sandbox made this port public.
    // It is the sandbox's ingress token (ingress-token.ts), never its envd
    // token, compared in constant time. A request that relies on the cookie
    // must come from the sandbox's own origin (origin.ts).
    if (!(await publicPorts.isPublic(rec.id, t.port))) {
      const header = headerToken(req);
      const cookies = splitTokenCookie(req.headers.cookie).tokens;
      let ok: boolean;
      if (header !== undefined) ok = deps.tokens.verify(rec.id, header);
      else if (t.queryToken !== undefined) ok = deps.tokens.verify(rec.id, t.queryToken);
      else {
        const refusal = cookies.length ? cookieRequestRefusal(req.headers, upgrade) : undefined;
        if (refusal) return { code: "FORBIDDEN", message: refusal };
        ok = cookies.some((c) => deps.tokens.verify(rec.id, c));
      }
      if (!ok) {
        const envdOnly = header === undefined && req.headers[ENVD_TOKEN_HEADER] !== undefined;
        return {
          code: "UNAUTHENTICATED",
          message: `port ${t.port} of sandbox ${rec.id} is private: send the sandbox's ingressToken (from its create or get response) as X-Firebreak-Ingress-Token (or ?token= in a browser), or make the port public with POST /v1/sandboxes/${rec.id}/ports/${t.port} {"public": true}${envdOnly ? "; the envd access token (X-Access-Token) does not open ingress" : ""}`,
        };
      }
      if (t.queryToken !== undefined && header === undefined) {
        const cookiePath = t.prefix ?? "/";
        setCookie = `${TOKEN_COOKIE}=${encodeURIComponent(t.queryToken)}; Path=${cookiePath}; HttpOnly; SameSite=Lax`;
      }
    }
    if (rec.state === "paused" && (await publicPorts.settings(rec.id)).autoResume) {
      // E2B's autoResume: traffic to a paused sandbox wakes it (for its tenant, under its quotas).
      const tenant = await store.getTenant(rec.tenantId);
      if (tenant) {
        try {
          const resumed = await sandboxes.resume({ keyId: "ingress", tenant }, rec.id);
          return { rec: resumed, port: t.port, ...(setCookie ? { setCookie } : {}) };
        } catch (e) {
          // Another request resumed it meanwhile: go on with it.
          const now = await store.getSandbox(rec.id);
          if (now?.state === "running")
            return { rec: now, port: t.port, ...(setCookie ? { setCookie } : {}) };
          log.warn({ sandboxId: rec.id, err: (e as Error).message }, "auto-resume failed");
        }
      }
    }
    if (rec.state !== "running") {
      return {
        code: "CONFLICT",
        message: `sandbox ${rec.id} is ${rec.state}; ${rec.state === "paused" ? "resume it first" : "try again when it runs"}`,
      };
    }
    return { rec, port: t.port, ...(setCookie ? { setCookie } : {}) };
  }

  /** Request headers for the sandbox: no hop-by-hop headers and no ingress token. */
  function upstreamHeaders(req: IncomingMessage, t: IngressTarget, keepUpgrade: boolean) {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || TOKEN_HEADERS.has(k) || k === "cookie") continue;
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

  /** E2B's maskRequestHost: the Host header the app sees (`${PORT}` replaced by the port). */
  async function maskHost(headers: http.OutgoingHttpHeaders, a: Allowed): Promise<void> {
    const mask = (await publicPorts.settings(a.rec.id)).maskRequestHost;
    // biome-ignore lint/suspicious/noTemplateCurlyInString: E2B's literal placeholder
    if (mask !== undefined) headers["host"] = mask.replaceAll("${PORT}", String(a.port));
  }

  function fail(res: ServerResponse, f: Failure, requestId: string): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = errorBody(f, requestId);
    res.writeHead(statusOf(f), {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      "x-request-id": requestId,
    });
    res.end(body);
  }

  function failRaw(socket: Duplex, f: Failure, requestId: string): void {
    const status = statusOf(f);
    const body = errorBody(f, requestId);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
    );
  }

  const what = (t: IngressTarget) => `sandbox ${t.sandboxId} port ${t.port}`;
  const target = (req: IncomingMessage, t: IngressTarget, a: Allowed, upgrade: boolean): RelayTarget => ({
    // Through the sandbox's node, which reaches <sandboxAddress>:<port>.
    open: (init) => {
      const r = sandboxes.portRequest(a.rec, a.port, init.path, init);
      if (!r) throw new Error(`sandbox ${a.rec.id} is not running`);
      return r;
    },
    path: t.upstreamPath,
    headers: upstreamHeaders(req, t, upgrade),
  });

  /** Set-Cookie headers of the app that would replace or shadow the ingress cookie are dropped. */
  const dropTokenCookies = (headers: Record<string, string | string[]>) => {
    const prior = headers["set-cookie"];
    if (prior === undefined) return;
    const kept = (Array.isArray(prior) ? prior : [prior]).filter(
      (c) => c.split("=", 1)[0]!.trim() !== TOKEN_COOKIE,
    );
    if (kept.length) headers["set-cookie"] = kept;
    else delete headers["set-cookie"];
  };

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

    /** Proxies one HTTP request (streaming both ways, with backpressure). */
    async handle(req: IncomingMessage, res: ServerResponse, t: IngressTarget): Promise<void> {
      const requestId = newRequestId(req);
      if (t.redirectTo) {
        res.writeHead(308, { location: t.redirectTo, "content-length": 0, "x-request-id": requestId });
        res.end();
        return;
      }
      let allowed: Allowed | Failure;
      try {
        allowed = await authorize(req, t, false);
      } catch (e) {
        log.error({ err: e, requestId }, "ingress lookup failed");
        return fail(res, { code: "INTERNAL", message: "internal error" }, requestId);
      }
      if ("code" in allowed) {
        log.debug({ requestId, sandboxId: t.sandboxId, port: t.port, code: allowed.code }, "ingress refused");
        return fail(res, allowed, requestId);
      }
      const setCookie = allowed.setCookie;
      const relayTarget = target(req, t, allowed, false);
      await maskHost(relayTarget.headers, allowed);
      relayHttp(req, res, relayTarget, what(t), {
        fail: (f) => fail(res, f, requestId),
        editHeaders: (h) => {
          // SECURITY: the app cannot set, replace or shadow the ingress cookie.
          dropTokenCookies(h);
          if (setCookie) {
            const prior = h["set-cookie"];
            h["set-cookie"] = [...(Array.isArray(prior) ? prior : prior ? [prior] : []), setCookie];
          }
        },
        // Streamed responses (SSE, chunked) get their headers before the first byte of body.
        flushHeaders: true,
        // A server still starting (nothing listens yet) answers once it listens, not 502.
        retryRefusedUntil: Date.now() + connectWaitMs,
        onUpstreamError: (e) =>
          log.debug({ requestId, sandboxId: t.sandboxId, port: t.port, err: e }, "ingress upstream error"),
      });
    },

    /**
     * Proxies an HTTP Upgrade (WebSocket): forwards the handshake, relays the
     * sandbox's answer (checked like any other answer), then pipes the two
     * sockets both ways (`pipe` pauses the faster side).
     */
    async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, t: IngressTarget): Promise<void> {
      const requestId = newRequestId(req);
      socket.on("error", () => {});
      let allowed: Allowed | Failure;
      try {
        allowed = t.redirectTo
          ? { code: "NOT_FOUND", message: `use ${t.redirectTo}` }
          : await authorize(req, t, true);
      } catch (e) {
        log.error({ err: e, requestId }, "ingress lookup failed");
        return failRaw(socket, { code: "INTERNAL", message: "internal error" }, requestId);
      }
      if ("code" in allowed) return failRaw(socket, allowed, requestId);
      const relayTarget = target(req, t, allowed, true);
      await maskHost(relayTarget.headers, allowed);
      const upstream = openGuest(relayTarget, req.method);
      // INVARIANT: set once the client has been answered (relayed head or error).
      let answered = false;
      const failOnce = (f: Failure) => {
        if (answered) return void socket.destroy();
        answered = true;
        if (socket.writable) failRaw(socket, f, requestId);
        else socket.destroy();
      };
      upstream.on("upgrade", (up, upSocket, upHead) => {
        upSocket.on("error", () => socket.destroy());
        // SECURITY: the handshake answer is the guest's: relay only headers
        // Node would write itself (no CR/LF or control characters).
        let lines = "HTTP/1.1 101 Switching Protocols\r\n";
        try {
          for (let i = 0; i < up.rawHeaders.length; i += 2) {
            const [k, v] = [up.rawHeaders[i]!, up.rawHeaders[i + 1]!];
            http.validateHeaderName(k);
            http.validateHeaderValue(k, v);
            lines += `${k}: ${v}\r\n`;
          }
        } catch {
          upSocket.destroy();
          return failOnce({
            code: "GUEST_RESPONSE_INVALID",
            message: `${what(t)} answered the upgrade with a header that cannot be relayed`,
          });
        }
        answered = true;
        socket.write(`${lines}\r\n`);
        if (upHead.length) socket.write(upHead);
        if (head.length) upSocket.write(head);
        socket.on("error", () => upSocket.destroy());
        upSocket.on("close", () => socket.destroy());
        socket.on("close", () => upSocket.destroy());
        upSocket.pipe(socket);
        socket.pipe(upSocket);
      });
      // The sandbox refused the upgrade: relay its answer, then close.
      upstream.on("response", (up) => {
        const checked = checkResponseHead(up, (k) => k === "content-length");
        if ("problem" in checked) {
          up.destroy();
          return failOnce({
            code: "GUEST_RESPONSE_INVALID",
            message: `${what(t)} answered: ${checked.problem}`,
          });
        }
        dropTokenCookies(checked.headers);
        answered = true;
        let lines = `HTTP/1.1 ${checked.status} ${http.STATUS_CODES[checked.status] ?? ""}\r\n`;
        for (const [k, v] of Object.entries(checked.headers)) {
          for (const one of Array.isArray(v) ? v : [v]) lines += `${k}: ${one}\r\n`;
        }
        socket.write(`${lines}connection: close\r\n\r\n`);
        up.on("error", () => socket.destroy());
        up.pipe(socket);
      });
      upstream.on("error", (e) => {
        log.debug(
          { requestId, sandboxId: t.sandboxId, port: t.port, err: e },
          "ingress upgrade upstream error",
        );
        failOnce(upstreamFailure(e, what(t)));
      });
      upstream.on("close", () => {
        if (!answered) {
          failOnce({
            code: "GUEST_RESPONSE_INVALID",
            message: `${what(t)} closed the connection without answering`,
          });
        }
      });
      socket.on("close", () => {
        if (!answered) answered = true;
        upstream.destroy();
      });
      upstream.end();
    },
  };
}

export type Ingress = ReturnType<typeof createIngress>;
