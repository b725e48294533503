// Host-side HTTP proxy for a private HTTP service with an injected credential:
// the guest talks plain HTTP to the service's per-sandbox address, the
// namespace DNATs it here, and each request goes on to the real service with
// the operator's header added. SECURITY: the credential exists only in this
// process and on the wire between the host and the service; it never enters
// the guest. The guest cannot choose where a request goes (always the
// configured service, with the service's Host), cannot make the proxy reflect
// the request (TRACE/TRACK) or tunnel (CONNECT, Upgrade), cannot pass or
// smuggle its own copy of the injected header, and cannot share an upstream
// connection with another sandbox.
import {
  Agent,
  createServer,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  request,
  type Server,
  type ServerResponse,
} from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { PrivateService } from "./service-registry.ts";

/** Per-sandbox bounds of the injection proxies. */
export interface InjectProxyLimits {
  /** Connections open at once, over all of one sandbox's proxies; more are closed at once. @default 32 */
  maxConnections: number;
  /** Request line and headers together, in bytes; larger gets 431. @default 16384 */
  maxHeaderBytes: number;
  /** Time to send the request line and headers; slower gets 408. @default 10000 */
  headersTimeoutMs: number;
  /** A connection with no traffic for this long is closed (also towards the service). @default 60000 */
  idleTimeoutMs: number;
}

export const DEFAULT_INJECT_LIMITS: Readonly<InjectProxyLimits> = Object.freeze({
  maxConnections: 32,
  maxHeaderBytes: 16_384,
  headersTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
});

/** Connections open to one sandbox's proxies (shared by all of them). */
export interface ConnectionGate {
  open: number;
}

/** Methods the proxy refuses: reflection (TRACE, TRACK) and tunnels (CONNECT). */
const REFUSED_METHODS = new Set(["TRACE", "TRACK", "CONNECT"]);
/** Headers that describe one hop (RFC 9110 7.6.1), never forwarded either way. */
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
  "expect", // answered here (100-continue); the body is forwarded as it comes
]);

function plain(res: ServerResponse, status: number, text: string): void {
  if (res.headersSent) return void res.destroy();
  res.writeHead(status, { "content-type": "text/plain", connection: "close" });
  res.end(`firebreak: ${text}\n`);
}

/** Header names the message's Connection header declares hop-by-hop. */
function connectionTokens(raw: string[]): Set<string> {
  const out = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() !== "connection") continue;
    for (const t of raw[i + 1]!.split(",")) if (t.trim()) out.add(t.trim().toLowerCase());
  }
  return out;
}

export class InjectProxy {
  #server: Server | undefined;
  #agent: Agent | undefined;
  readonly #sockets = new Set<Socket>();
  requests = 0;
  /** Connections closed at once because the sandbox had too many open. */
  rejected = 0;
  port = 0;

  readonly bindAddress: string;
  /** Only this source may use the proxy (the sandbox's namespace address). */
  readonly peerAddress: string;
  readonly service: PrivateService;
  readonly limits: InjectProxyLimits;
  readonly #gate: ConnectionGate;

  constructor(
    bindAddress: string,
    peerAddress: string,
    service: PrivateService,
    opts: { gate?: ConnectionGate; limits?: Partial<InjectProxyLimits> } = {},
  ) {
    this.bindAddress = bindAddress;
    this.peerAddress = peerAddress;
    this.service = service;
    this.limits = { ...DEFAULT_INJECT_LIMITS, ...opts.limits };
    this.#gate = opts.gate ?? { open: 0 };
  }

  /** The Host header every forwarded request carries: the service's name (and port unless 80). */
  get hostHeader(): string {
    return this.service.port === 80 ? this.service.name : `${this.service.name}:${this.service.port}`;
  }

  async start(): Promise<number> {
    // One agent per proxy (that is, per sandbox and service): upstream
    // connections are never shared with another sandbox's requests.
    this.#agent = new Agent({ keepAlive: true, maxSockets: this.limits.maxConnections });
    const server = createServer(
      {
        maxHeaderSize: this.limits.maxHeaderBytes,
        headersTimeout: this.limits.headersTimeoutMs,
        requestTimeout: 0, // streaming bodies may take long; idleness is bounded instead
        connectionsCheckingInterval: Math.min(1_000, this.limits.headersTimeoutMs),
        joinDuplicateHeaders: false,
      },
      (req, res) => this.#forward(req, res),
    );
    server.on("connection", (sock: Socket) => {
      sock.on("error", () => {});
      if (sock.remoteAddress !== this.peerAddress) return void sock.destroy();
      if (this.#gate.open >= this.limits.maxConnections) {
        this.rejected++;
        return void sock.destroy();
      }
      this.#gate.open++;
      this.#sockets.add(sock);
      sock.once("close", () => {
        this.#gate.open--;
        this.#sockets.delete(sock);
      });
    });
    server.setTimeout(this.limits.idleTimeoutMs, (sock: Socket) => sock.destroy());
    server.on("clientError", (e: NodeJS.ErrnoException, sock: Socket) => {
      if (!sock.writable) return void sock.destroy();
      const status =
        e.code === "HPE_HEADER_OVERFLOW"
          ? "431 Request Header Fields Too Large"
          : e.code === "ERR_HTTP_REQUEST_TIMEOUT"
            ? "408 Request Timeout"
            : "400 Bad Request";
      sock.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      sock.destroySoon();
    });
    // CONNECT and Upgrade would make the proxy a tunnel: refused.
    server.on("connect", (_req: IncomingMessage, sock: Socket) => {
      sock.on("error", () => {});
      sock.end("HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    });
    server.on("upgrade", (_req: IncomingMessage, sock: Socket) => {
      sock.on("error", () => {});
      sock.end("HTTP/1.1 501 Not Implemented\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: this.bindAddress, port: 0, exclusive: true }, () => {
        server.off("error", reject);
        server.on("error", () => {});
        resolve();
      });
    });
    this.port = (server.address() as AddressInfo).port;
    return this.port;
  }

  /** The origin-form target to send, or undefined when the request target is refused. */
  #target(req: IncomingMessage): string | undefined {
    const url = req.url ?? "";
    if (url.startsWith("/")) return url;
    if (url === "*" && req.method === "OPTIONS") return url;
    // Absolute form ("GET http://elsewhere/x"): the authority is ignored (the
    // request goes to the service anyway); only its path and query are kept.
    try {
      const u = new URL(url);
      if (u.protocol === "http:" || u.protocol === "https:") return `${u.pathname}${u.search}`;
    } catch {}
    return undefined;
  }

  #forward(req: IncomingMessage, res: ServerResponse): void {
    this.requests++;
    res.on("error", () => {});
    req.on("error", () => {});
    const method = req.method ?? "";
    // SECURITY: TRACE/TRACK would reflect the request (with the credential) back to the guest.
    if (REFUSED_METHODS.has(method.toUpperCase())) {
      res.setHeader("allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
      return void plain(res, 405, `${method} is not allowed through the service proxy`);
    }
    const path = this.#target(req);
    if (path === undefined)
      return void plain(res, 400, "the request target must be a path such as /v1/items");

    // SECURITY: the guest's headers minus hop-by-hop ones, minus Host and
    // minus every copy of the injected header (names compare lowercased, so
    // case variants and duplicates all go; obs-fold and bad names never
    // parse). Then the service's Host and the credential, set here only.
    const inject = this.service.inject;
    const injected = inject?.header.toLowerCase();
    const raw = req.rawHeaders;
    const dropped = connectionTokens(raw);
    const headers: OutgoingHttpHeaders = {};
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      if (HOP_BY_HOP.has(name) || dropped.has(name) || name.startsWith("proxy-")) continue;
      if (name === "host" || name === injected) continue;
      const prev = headers[name];
      const value = raw[i + 1]!;
      headers[name] = prev === undefined ? value : [...(Array.isArray(prev) ? prev : [String(prev)]), value];
    }
    headers["host"] = this.hostHeader;
    if (req.headers["transfer-encoding"] !== undefined) headers["transfer-encoding"] = "chunked";
    if (inject && injected) headers[injected] = inject.value;

    let up: ReturnType<typeof request>;
    try {
      up = request({
        host: this.service.address,
        port: this.service.port,
        method,
        path,
        headers,
        agent: this.#agent,
        timeout: this.limits.idleTimeoutMs,
      });
    } catch {
      // Node refuses some targets and header values outright (unescaped characters).
      return void plain(res, 400, "the request cannot be forwarded (bad target or header)");
    }
    up.on("timeout", () => up.destroy(new Error("service timed out")));
    up.on("error", () => {
      if (!res.headersSent) plain(res, 502, `private service ${this.service.name} is unreachable`);
      else res.destroy();
    });
    // Redirects are passed to the guest as they are, never followed here.
    up.on("response", (upRes) => {
      upRes.on("error", () => res.destroy());
      const out: string[] = [];
      const rawRes = upRes.rawHeaders;
      const droppedRes = connectionTokens(rawRes);
      for (let i = 0; i < rawRes.length; i += 2) {
        const name = rawRes[i]!.toLowerCase();
        const value = rawRes[i + 1]!;
        if (HOP_BY_HOP.has(name) || droppedRes.has(name) || name.startsWith("proxy-")) continue;
        // SECURITY: a service that reflects the credential in a header does not hand it to the guest.
        if (inject && (name === injected || value.includes(inject.value))) continue;
        out.push(rawRes[i]!, value);
      }
      try {
        res.writeHead(upRes.statusCode ?? 502, out);
      } catch {
        upRes.destroy();
        return plain(
          res,
          502,
          `private service ${this.service.name} sent a response that cannot be passed on`,
        );
      }
      upRes.pipe(res);
    });
    // The guest went away: so does the request to the service.
    res.on("close", () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }

  async close(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    this.#agent?.destroy();
    if (!s) return;
    for (const sock of this.#sockets) sock.destroy();
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
