// Host-side HTTP proxy for a private HTTP service with an injected credential:
// the guest talks plain HTTP to the service's per-sandbox address, the
// namespace DNATs it here, and each request goes on to the real service with
// the operator's header added. SECURITY: the credential exists only in this
// process and on the wire between the host and the service; it never enters
// the guest, and any header of the same name the guest sends is replaced.
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { PrivateService } from "./service-registry.ts";

const HOP_BY_HOP = ["proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"];

export class InjectProxy {
  #server: Server | undefined;
  requests = 0;
  port = 0;

  readonly bindAddress: string;
  /** Only this source may use the proxy (the sandbox's namespace address). */
  readonly peerAddress: string;
  readonly service: PrivateService;

  constructor(bindAddress: string, peerAddress: string, service: PrivateService) {
    this.bindAddress = bindAddress;
    this.peerAddress = peerAddress;
    this.service = service;
  }

  async start(): Promise<number> {
    const server = createServer((req, res) => this.#forward(req, res));
    server.on("connection", (sock) => {
      if (sock.remoteAddress !== this.peerAddress) sock.destroy();
    });
    server.on("clientError", (_e, sock) => sock.destroy());
    server.headersTimeout = 30_000;
    server.requestTimeout = 0; // streaming bodies may take long
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: this.bindAddress, port: 0, exclusive: true }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.port = (server.address() as AddressInfo).port;
    return this.port;
  }

  #forward(req: IncomingMessage, res: ServerResponse): void {
    this.requests++;
    const headers: Record<string, string | string[]> = {};
    const inject = this.service.inject;
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || HOP_BY_HOP.includes(k)) continue;
      if (inject && k === inject.header.toLowerCase()) continue;
      headers[k] = v;
    }
    if (inject) headers[inject.header] = inject.value;
    const up = request(
      {
        host: this.service.address,
        port: this.service.port,
        method: req.method,
        // Always the configured service: an absolute-form URL cannot redirect the proxy.
        path: req.url?.startsWith("/") ? req.url : "/",
        headers,
        timeout: 30_000,
      },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on("timeout", () => up.destroy(new Error("service timed out")));
    up.on("error", () => {
      if (!res.headersSent) {
        res.writeHead(502, { "content-type": "text/plain" });
        res.end(`firebreak: private service ${this.service.name} is unreachable\n`);
      } else res.destroy();
    });
    req.pipe(up);
  }

  async close(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
