// The envd traffic proxy: E2B SDKs pointed at E2B_SANDBOX_URL = this server
// send the in-sandbox daemon's traffic here (Connect RPC and /files), marked
// by `E2b-Sandbox-Id` (or, for SDK 2.7-2.14 REST calls, only `X-Access-Token`).
// It is forwarded to that sandbox's agent, streaming both ways with
// backpressure, below the HTTP router (no buffering: client-streaming RPCs and
// large files pass through). The agent's answer is checked like any guest
// answer (relay/http-relay.ts): a hostile agent fails its own requests only.
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { CODE_INTERPRETER_PORT } from "@firebreak/code-interpreter";
import { ENVD_PORT } from "@firebreak/protocol";
import type { Logger } from "pino";
import { sha256 } from "../auth/keys.ts";
import type { IngressTokens } from "../ingress/ingress-token.ts";
import { HOP_BY_HOP, relayHttp } from "../relay/http-relay.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import type { SandboxRecord, Store } from "../store/store.ts";

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

export function envdProxy(
  store: Store,
  sandboxes: SandboxService,
  log: Logger,
  ingressTokens?: IngressTokens,
) {
  // No keep-alive upstream: sandbox addresses are reused by later sandboxes, and
  // a pooled socket to a dead sandbox's address would fail the next request.
  // maxSockets is per upstream address, so per sandbox.
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const token = String(req.headers["x-access-token"] ?? "");
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
    const port = Number(req.headers["e2b-sandbox-port"] ?? 49983);
    // SECURITY: port 49999 (the code interpreter) also opens with the
    // sandbox's traffic token (E2B-Traffic-Access-Token, the ingress token E2B
    // creates return as trafficAccessToken): @e2b/code-interpreter sends no
    // X-Access-Token on its /contexts calls, only that. The agent's port
    // needs the agent's token.
    const traffic = req.headers["e2b-traffic-access-token"];
    const trafficOk =
      port === CODE_INTERPRETER_PORT &&
      rec !== undefined &&
      typeof traffic === "string" &&
      ingressTokens?.verify(rec.id, traffic) === true;
    if (!rec || !(sameHash(sha256(token), rec.envdTokenHash) || trafficOk)) {
      return fail(res, 401, "unknown sandbox or wrong X-Access-Token");
    }
    if (rec.state !== "running") return fail(res, 502, `sandbox ${rec.id} is ${rec.state}, not running`);
    // E2B's two sandbox ports: the agent's and the code interpreter's.
    if (port !== ENVD_PORT && port !== CODE_INTERPRETER_PORT) {
      return fail(res, 502, `port ${port} is not served in sandbox ${rec.id}`);
    }

    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined || HOP_BY_HOP.has(k) || k === "host") continue;
      headers[k] = v;
    }
    const sandboxId = rec.id;
    const target = rec;
    relayHttp(
      req,
      res,
      {
        // Through the sandbox's node (a byte tunnel); the caller's token goes as sent.
        open: (init) => {
          const r = sandboxes.portRequest(target, port, init.path, init);
          if (!r) throw new Error(`sandbox ${sandboxId} is not running`);
          return r;
        },
        path: req.url ?? "/",
        headers,
      },
      `the agent of sandbox ${sandboxId}`,
      {
        fail: (f) => fail(res, 502, f.message),
        // One short line per failed request (no stack): a hostile agent fails every request.
        onUpstreamError: (e) =>
          log.warn(
            { sandboxId, error: (e as NodeJS.ErrnoException).code ?? e.message },
            "envd proxy upstream error",
          ),
      },
    );
  };
}
