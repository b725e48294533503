// The envd traffic proxy: E2B SDKs pointed at E2B_SANDBOX_URL = this server
// send the in-sandbox daemon's traffic here (Connect RPC and /files), marked
// by `E2b-Sandbox-Id` (or, for SDK 2.7-2.14 REST calls, only `X-Access-Token`).
// It is forwarded to that sandbox's agent, streaming both ways, below the HTTP
// router (no buffering: client-streaming RPCs and large files pass through).
import { timingSafeEqual } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { CODE_INTERPRETER_PORT } from "@firebreak/code-interpreter";
import type { Logger } from "pino";
import { sha256 } from "../auth/keys.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import type { SandboxRecord, Store } from "../store/store.ts";

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "host",
]);

export function isEnvdRequest(req: IncomingMessage): boolean {
  if (req.headers["e2b-sandbox-id"]) return true;
  return req.headers["x-access-token"] !== undefined && req.headers["x-api-key"] === undefined;
}

function fail(res: ServerResponse, status: number, message: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ code: status, message });
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

function sameHash(a: string, b: string | null): boolean {
  if (!b || a.length !== b.length) return false;
  return timingSafeEqual(Buffer.from(a), Buffer.from(b));
}

export function envdProxy(store: Store, sandboxes: SandboxService, log: Logger) {
  // No keep-alive upstream: sandbox addresses are reused by later sandboxes, and
  // a pooled socket to a dead sandbox's address would fail the next request.
  const agent = new http.Agent({ keepAlive: false, maxSockets: 256 });
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // @e2b/code-interpreter sends no X-Access-Token on its /contexts calls,
    // only E2B-Traffic-Access-Token, which the E2B routes set to the same
    // sandbox token (trafficAccessToken in the create response).
    const token = String(req.headers["x-access-token"] ?? req.headers["e2b-traffic-access-token"] ?? "");
    const id = req.headers["e2b-sandbox-id"] ? String(req.headers["e2b-sandbox-id"]) : undefined;
    let rec: SandboxRecord | undefined;
    try {
      rec = id ? await store.getSandbox(id) : token ? await sandboxes.findByEnvdToken(token) : undefined;
    } catch (e) {
      log.error({ err: e }, "envd proxy lookup failed");
      return fail(res, 500, "internal error");
    }
    // SECURITY: the token is checked here too (the agent checks it again), so
    // traffic for a sandbox never reaches its VM without the sandbox's token.
    log.debug({ method: req.method, url: req.url, sandboxId: id, hasToken: token !== "" }, "envd proxy");
    if (!rec || !sameHash(sha256(token), rec.envdTokenHash)) {
      return fail(res, 401, "unknown sandbox or wrong X-Access-Token");
    }
    const port = Number(req.headers["e2b-sandbox-port"] ?? 49983);
    const envd = sandboxes.envdEndpoint(rec);
    if (!envd) return fail(res, 502, `sandbox ${rec.id} is ${rec.state}, not running`);
    // The agent's port, or the code interpreter's (E2B's two sandbox ports), on the same address.
    if (port !== envd.port && port !== CODE_INTERPRETER_PORT) {
      return fail(res, 502, `port ${port} is not served in sandbox ${rec.id}`);
    }
    const target = { host: envd.host, port };

    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || HOP_BY_HOP.has(k)) continue;
      headers[k] = v;
    }
    const upstream = http.request(
      { host: target.host, port: target.port, method: req.method, path: req.url, headers, agent },
      (up) => {
        const out: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(up.headers)) {
          if (v === undefined || HOP_BY_HOP.has(k)) continue;
          out[k] = v;
        }
        res.writeHead(up.statusCode ?? 502, out);
        up.pipe(res);
        up.on("error", () => res.destroy());
      },
    );
    upstream.on("error", (e) => {
      log.warn({ sandboxId: rec.id, err: e }, "envd proxy upstream error");
      fail(res, 502, `sandbox ${rec.id} did not answer: ${e.message}`);
    });
    res.on("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  };
}
