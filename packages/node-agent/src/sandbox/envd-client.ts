// The host's client for the guest agent (envd): Connect over HTTP/1.1 to the
// sandbox's unique address, which the sandbox namespace forwards to the guest.
import http from "node:http";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ACCESS_TOKEN_HEADER, ENVD_PORT, Filesystem, Process } from "@firebreak/protocol";

export interface EnvdClient {
  baseUrl: string;
  /** Closes this client's pooled connections (the sandbox is gone or its token changed). */
  close: () => void;
  process: Client<typeof Process>;
  filesystem: Client<typeof Filesystem>;
  /** Plain fetch against the agent's REST routes (/files, /health), token attached. */
  fetch: (pathAndQuery: string, init?: RequestInit) => Promise<Response>;
}

export function envdClient(address: string, accessToken: string, user?: string): EnvdClient {
  const baseUrl = `http://${address}:${ENVD_PORT}`;
  const auth: Interceptor = (next) => async (req) => {
    req.header.set(ACCESS_TOKEN_HEADER, accessToken);
    if (user) req.header.set("authorization", `Basic ${Buffer.from(`${user}:`).toString("base64")}`);
    return next(req);
  };
  // INVARIANT: connections are pooled per client, never shared: sandbox
  // addresses are reused, and a kept-alive socket to a dead sandbox must not be
  // handed to the next sandbox at that address.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    nodeOptions: { agent },
    useBinaryFormat: false,
    interceptors: [auth],
    // SECURITY: the guest answers these; a hostile guest must not make the node
    // buffer huge messages (Connect's default allows ~4 GiB).
    readMaxBytes: 16 * 1024 * 1024,
  });
  return {
    baseUrl,
    close: () => agent.destroy(),
    process: createClient(Process, transport),
    filesystem: createClient(Filesystem, transport),
    fetch: (p, init = {}) => {
      const headers = new Headers(init.headers);
      headers.set(ACCESS_TOKEN_HEADER, accessToken);
      if (user) headers.set("authorization", `Basic ${Buffer.from(`${user}:`).toString("base64")}`);
      // Global fetch pools per origin; slots (and so origins) are handed out
      // round-robin, so an origin is reused long after its sockets expired.
      return fetch(baseUrl + p, { ...init, headers });
    },
  };
}
