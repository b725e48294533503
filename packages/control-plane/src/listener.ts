// The control plane's HTTP listener: one port, three kinds of traffic.
//   ingress target? (Host <port>-<id>.<domain>, or /ingress/<id>/<port>/)  -> ingress proxy
//   envd request?   (E2b-Sandbox-Id, or X-Access-Token without X-API-Key)  -> envd proxy
//   else                                                                   -> the Hono app
// Only Upgrade requests for an ingress target are upgraded (WebSocket).
// SECURITY: the proxies relay bytes a guest wrote; every failure there ends
// that request only. A rejection that still escapes a handler is logged as a
// bug and closes that connection; there is no process-wide catch-all.
import http, { type IncomingMessage, type RequestListener, type ServerResponse } from "node:http";
import type { Logger } from "pino";
import { isEnvdRequest } from "./e2b/envd-proxy.ts";
import type { Ingress } from "./ingress/proxy.ts";

export interface ListenerParts {
  ingress: Ingress;
  envd: (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  api: RequestListener;
  log: Logger;
}

export function createListener({ ingress, envd, api, log }: ListenerParts): http.Server {
  const bug = (what: string, destroy: () => void) => (e: unknown) => {
    log.error({ err: e }, `${what} failed unexpectedly`);
    destroy();
  };
  const server = http.createServer(
    {
      shouldUpgradeCallback: (req) => req.headers.upgrade !== undefined && ingress.match(req) !== undefined,
    },
    (req, res) => {
      const target = ingress.match(req);
      const destroy = () => res.destroy();
      if (target) ingress.handle(req, res, target).catch(bug("ingress", destroy));
      else if (isEnvdRequest(req)) envd(req, res).catch(bug("envd proxy", destroy));
      else Promise.resolve(api(req, res)).catch(bug("api", destroy));
    },
  );
  server.on("upgrade", (req, socket, head) => {
    socket.on("error", () => {});
    const target = ingress.match(req);
    if (target)
      ingress.upgrade(req, socket, head, target).catch(bug("ingress upgrade", () => socket.destroy()));
    else socket.destroy();
  });
  server.requestTimeout = 0; // long command streams and uploads
  return server;
}
