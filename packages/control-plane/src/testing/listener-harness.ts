// Test support: the control plane's real HTTP listener (listener.ts: ingress,
// envd proxy and API on one port) in-process over a FakeNode, on 127.0.0.1,
// with a FakeGuest standing in for every sandbox. Tests talk to it over real
// sockets, as browsers, SDKs and hostile guests would.
import http from "node:http";
import { getRequestListener } from "@hono/node-server";
import pino from "pino";
import type { ControlPlaneConfig } from "../config.ts";
import { envdProxy } from "../e2b/envd-proxy.ts";
import { createIngress } from "../ingress/proxy.ts";
import { createListener } from "../listener.ts";
import { ApiClient } from "./api-client.ts";
import { FakeGuest } from "./fake-guest.ts";
import { inProcess } from "./in-process.ts";

export const DOMAIN = "firebreak.localhost";

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  // biome-ignore lint/suspicious/noExplicitAny: parsed test JSON
  json: any;
}

export interface RequestOptions {
  host?: string;
  headers?: Record<string, string>;
  method?: string;
  body?: string | Buffer;
}

export async function listenerHarness(config: Partial<ControlPlaneConfig> = {}) {
  const ip = await inProcess(config);
  const log = pino({ level: process.env["FIREBREAK_TEST_LOG"] ? "debug" : "silent" });
  const ingress = createIngress({
    store: ip.store,
    sandboxes: ip.sandboxes,
    log,
    domain: DOMAIN,
    tokens: ip.ingressTokens,
    // A port that refuses is tried again for a second (tests of it set no more).
    connectWaitMs: 1_000,
  });
  const server = createListener({
    ingress,
    envd: envdProxy(ip.store, ip.sandboxes, log),
    api: getRequestListener(ip.app.fetch),
    log,
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  const url = `http://127.0.0.1:${port}`;
  const guest = FakeGuest.create();
  const api = await new ApiClient(url).init();

  /** Opens a request and hands back the response unread (for slow-client tests). */
  function open(
    path: string,
    opts: RequestOptions = {},
  ): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
    return new Promise((resolve, reject) => {
      const req = http.request({
        host: "127.0.0.1",
        port,
        path,
        method: opts.method ?? "GET",
        headers: { ...(opts.host ? { host: opts.host } : {}), ...opts.headers },
        agent: false,
      });
      req.on("response", (res) => resolve({ req, res }));
      req.on("error", reject);
      req.end(opts.body);
    });
  }

  /** A whole request and answer (a response cut by the server rejects). */
  async function request(path: string, opts: RequestOptions = {}): Promise<Reply> {
    const { res } = await open(path, opts);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString();
    const json = String(res.headers["content-type"]).startsWith("application/json")
      ? JSON.parse(body)
      : undefined;
    return { status: res.statusCode!, headers: res.headers, body, json };
  }

  return {
    ...ip,
    url,
    port,
    server,
    guest,
    /** An API client over the real listener. */
    http: api,
    open,
    request,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await guest.close();
      await ip.close();
    },
  };
}

export type Harness = Awaited<ReturnType<typeof listenerHarness>>;
