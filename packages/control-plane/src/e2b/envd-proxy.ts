// The envd traffic proxy: E2B SDKs pointed at E2B_SANDBOX_URL = this server
// send the in-sandbox daemon's traffic here (Connect RPC and /files), marked
// by `E2b-Sandbox-Id` (or, for SDK 2.7-2.14 REST calls, only `X-Access-Token`).
// It is forwarded to that sandbox's agent, streaming both ways with
// backpressure, below the HTTP router (no buffering: client-streaming RPCs and
// large files pass through). The agent's answer is checked like any guest
// answer (relay/http-relay.ts): a hostile agent fails its own requests only.
import { createHash, timingSafeEqual } from "node:crypto";
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
  if (req.headers["x-api-key"] !== undefined) return false;
  return req.headers["x-access-token"] !== undefined || signedFile(req) !== undefined;
}

interface SignedFile {
  path: string;
  user: string;
  signature: string;
  expiration: number | undefined;
}

/**
 * A signed file URL (E2B's `downloadUrl`/`uploadUrl`): `/files?path=&signature=`
 * with neither the sandbox's id nor its token; the signature names the sandbox.
 */
function signedFile(req: IncomingMessage): SignedFile | undefined {
  const url = req.url ?? "";
  if (!url.startsWith("/files?")) return undefined;
  const q = new URLSearchParams(url.slice(url.indexOf("?") + 1));
  const signature = q.get("signature");
  // A malformed signature is still a signed URL (401 invalid signature), not another route.
  if (!signature) return undefined;
  const exp = q.get("signature_expiration");
  return {
    path: q.get("path") ?? "",
    user: q.get("username") ?? "",
    signature,
    expiration: exp === null ? undefined : /^-?\d{1,12}$/.test(exp) ? Number(exp) : Number.NaN,
  };
}

/** The shape of a signature: `v1_` and an unpadded base64 sha256. */
const SIGNATURE = /^v1_[A-Za-z0-9+/]{43}$/;

/** E2B's file URL signature: `v1_` + base64(sha256(`path:op:user:token[:expiration]`)), unpadded. */
export function fileSignature(path: string, op: "read" | "write", user: string, token: string, exp?: number) {
  const raw = `${path}:${op}:${user}:${token}${exp === undefined ? "" : `:${exp}`}`;
  return `v1_${createHash("sha256").update(raw).digest("base64").replace(/=+$/, "")}`;
}

/** The sandbox id in a `49983-<id>.<domain>` Host (an E2B SDK without E2B_SANDBOX_URL). */
function hostSandboxId(req: IncomingMessage): string | undefined {
  return /^49983-([a-z0-9]{1,64})\./.exec(String(req.headers.host ?? ""))?.[1];
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
  // Tokens of running sandboxes, for signed URLs (which carry none); dropped when they stop.
  const tokens = new Map<string, string>();
  // What this proxy holds open to a sandbox is closed when it stops with the
  // node's tunnels to it (RemoteNode kill/pause, NodeDaemonClient.closeSandbox).
  sandboxes.onStopped((id) => tokens.delete(id));
  const tokenOf = async (rec: SandboxRecord) => {
    let t = tokens.get(rec.id);
    if (t === undefined) {
      t = await sandboxes.accessToken(rec);
      if (t === undefined) return undefined;
      if (tokens.size >= 10_000) tokens.delete(tokens.keys().next().value!);
      tokens.set(rec.id, t);
    }
    return t;
  };
  /**
   * The sandbox a signed file URL is for: the one named by Host, else the
   * running sandbox whose token makes the signature (any expiration given is
   * part of what is signed). SECURITY: the proxy adds the agent's token to a
   * signed request, so the signature is checked here, in constant time.
   */
  const signedTarget = async (
    req: IncomingMessage,
    f: SignedFile,
  ): Promise<SandboxRecord | { status: number; message: string }> => {
    if (Number.isNaN(f.expiration))
      return { status: 400, message: "signature_expiration is not a whole number" };
    if (!SIGNATURE.test(f.signature)) return { status: 401, message: "invalid signature" };
    const op = req.method === "GET" || req.method === "HEAD" ? "read" : "write";
    const named = hostSandboxId(req);
    const candidates = named
      ? [await store.getSandbox(named)].filter((r): r is SandboxRecord => r?.state === "running")
      : (await store.listLiveSandboxes()).filter((r) => r.state === "running");
    for (const rec of candidates) {
      const token = await tokenOf(rec);
      if (token === undefined) continue;
      const want = fileSignature(f.path, op, f.user, token, f.expiration);
      if (
        want.length === f.signature.length &&
        timingSafeEqual(Buffer.from(want), Buffer.from(f.signature))
      ) {
        if (f.expiration !== undefined && f.expiration * 1000 < Date.now()) {
          return { status: 401, message: "signature is already expired" };
        }
        return rec;
      }
    }
    return { status: 401, message: "invalid signature" };
  };

  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const token = String(req.headers["x-access-token"] ?? "");
    const id = req.headers["e2b-sandbox-id"] ? String(req.headers["e2b-sandbox-id"]) : hostSandboxId(req);
    const signed = token === "" ? signedFile(req) : undefined;
    let rec: SandboxRecord | undefined;
    try {
      if (signed) {
        const found = await signedTarget(req, signed);
        if ("status" in found) return fail(res, found.status, found.message);
        rec = found;
      } else {
        rec = id ? await store.getSandbox(id) : token ? await sandboxes.findByEnvdToken(token) : undefined;
      }
    } catch (e) {
      log.error({ err: e }, "envd proxy lookup failed");
      return fail(res, 500, "internal error");
    }
    // SECURITY: the token (or the URL's signature, checked above) is checked
    // here too (the agent checks the token again), so traffic for a sandbox
    // never reaches its VM without the sandbox's token.
    log.debug({ method: req.method, url: req.url, sandboxId: id, hasToken: token !== "" }, "envd proxy");
    const port = Number(req.headers["e2b-sandbox-port"] ?? 49983);
    // SECURITY: port 49999 (the code interpreter) also opens with the
    // sandbox's traffic token (E2B-Traffic-Access-Token, the ingress token E2B
    // creates return as trafficAccessToken): @e2b/code-interpreter sends no
    // X-Access-Token on its /contexts calls, only that. The agent's port
    // needs the agent's token.
    const traffic = req.headers["e2b-traffic-access-token"];
    // (Any port but the agent's: only 49999 is forwarded below, the rest 502.)
    const trafficOk =
      port !== ENVD_PORT &&
      rec !== undefined &&
      typeof traffic === "string" &&
      ingressTokens?.verify(rec.id, traffic) === true;
    // A signed file URL (checked above) is for the agent's /files only.
    if (signed && port !== ENVD_PORT) return fail(res, 401, "a signed URL opens only the agent's /files");
    if (!rec || !(signed || sameHash(sha256(token), rec.envdTokenHash) || trafficOk)) {
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
    if (signed) {
      // The caller has no token: the signature (checked above) stands for it,
      // and the agent wants its token on every call. SECURITY: added only
      // here, only for /files on the agent's port.
      const agentToken = await tokenOf(rec).catch(() => undefined);
      if (agentToken === undefined) return fail(res, 502, `sandbox ${rec.id} is not running`);
      headers["x-access-token"] = agentToken;
    }
    const sandboxId = rec.id;
    const target = rec;
    relayHttp(
      req,
      res,
      {
        // Over a byte tunnel through the sandbox's node (which reads nothing of it).
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
