// The host's client for the guest agent (envd): Connect over HTTP/1.1 to the
// sandbox's unique address, which the sandbox namespace forwards to the guest.
// SECURITY: every answer comes from the guest. Connect messages are capped
// (readMaxBytes), response heads are capped by the HTTP parsers (16 KiB), a
// unary call that gets no answer gives up after unaryTimeoutMs, and a REST
// call after headersTimeoutMs without a response head, so a guest that
// accepts and never answers cannot make the host hold sockets forever.
import http from "node:http";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ACCESS_TOKEN_HEADER, ENVD_PORT, Filesystem, Process } from "@firebreak/protocol";

/** The largest Connect message the host reads from a guest. */
export const MAX_ENVD_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface EnvdClientOptions {
  /**
   * A unary call (stat, list, sendInput, ...) fails with `deadline_exceeded`
   * when the agent has not answered by then. Streams are not limited.
   * @default 300000 (5 minutes: a recursive remove under emulation can be slow)
   */
  unaryTimeoutMs?: number;
  /** A REST call (`fetch`) fails when no response head arrived by then. @default 60000 */
  headersTimeoutMs?: number;
  /** The agent's port. @default 49983 */
  port?: number;
}

export interface EnvdClient {
  baseUrl: string;
  /** Closes this client's pooled connections (the sandbox is gone or its token changed). */
  close: () => void;
  process: Client<typeof Process>;
  filesystem: Client<typeof Filesystem>;
  /** Plain fetch against the agent's REST routes (/files, /health), token attached. */
  fetch: (pathAndQuery: string, init?: RequestInit) => Promise<Response>;
}

export function envdClient(
  address: string,
  accessToken: string,
  user?: string,
  opts: EnvdClientOptions = {},
): EnvdClient {
  const unaryTimeoutMs = opts.unaryTimeoutMs ?? 300_000;
  const headersTimeoutMs = opts.headersTimeoutMs ?? 60_000;
  const baseUrl = `http://${address}:${opts.port ?? ENVD_PORT}`;
  const auth: Interceptor = (next) => async (req) => {
    req.header.set(ACCESS_TOKEN_HEADER, accessToken);
    if (user) req.header.set("authorization", `Basic ${Buffer.from(`${user}:`).toString("base64")}`);
    if (req.stream) return next(req);
    // A unary call: bounded in time, whatever the caller's signal says.
    return next({ ...req, signal: AbortSignal.any([req.signal, AbortSignal.timeout(unaryTimeoutMs)]) });
  };
  // INVARIANT: connections are pooled per client, never shared: sandbox
  // addresses are reused, and a kept-alive socket to a dead sandbox must not be
  // handed to the next sandbox at that address.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "1.1",
    nodeOptions: { agent, maxHeaderSize: 16 * 1024, insecureHTTPParser: false },
    useBinaryFormat: false,
    interceptors: [auth],
    // SECURITY: the guest answers these; a hostile guest must not make the node
    // buffer huge messages (Connect's default allows ~4 GiB).
    readMaxBytes: MAX_ENVD_MESSAGE_BYTES,
  });
  return {
    baseUrl,
    close: () => agent.destroy(),
    process: createClient(Process, transport),
    filesystem: createClient(Filesystem, transport),
    fetch: async (p, init = {}) => {
      const headers = new Headers(init.headers);
      headers.set(ACCESS_TOKEN_HEADER, accessToken);
      if (user) headers.set("authorization", `Basic ${Buffer.from(`${user}:`).toString("base64")}`);
      const noHead = new AbortController();
      const timer = setTimeout(
        () => noHead.abort(new Error(`the guest agent sent no answer within ${headersTimeoutMs} ms`)),
        headersTimeoutMs,
      );
      const signal = init.signal ? AbortSignal.any([init.signal, noHead.signal]) : noHead.signal;
      try {
        // Global fetch pools per origin; slots (and so origins) are handed out
        // round-robin, so an origin is reused long after its sockets expired.
        return await fetch(baseUrl + p, { ...init, headers, signal });
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
