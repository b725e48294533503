// The E2B-compatible control-plane API (shared/e2b-compat.md) on the same port:
// X-API-KEY auth (keys as e2b_<hex>), /sandboxes and /v2/sandboxes, connect,
// timeout, pause, metrics. Errors are E2B's `{code: <status>, message}`.
// The envd traffic proxy lives in envd-proxy.ts (it runs below HTTP routing).
import { ENVD_VERSION } from "@firebreak/protocol";
import { type Context, Hono } from "hono";
import { z } from "zod";
import type { AppEnv, Deps } from "../api/context.ts";
import { authenticate, hasScope, type RateLimiter } from "../auth/middleware.ts";
import { ApiError, toApiError } from "../errors.ts";
import { ingressDomain } from "../ingress/config.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import { isFinalState, type SandboxRecord } from "../store/store.ts";

const NewSandbox = z
  .object({
    templateID: z.string().regex(/^[a-z0-9][a-z0-9-]{0,39}$/),
    timeout: z.number().int().min(1).optional(),
    metadata: z.record(z.string().min(1).max(64), z.string().max(512)).optional(),
    envVars: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).optional(),
  })
  // E2B clients send more (autoPause, secure, network, mcp, ...): accepted and ignored.
  .loose();
const Timeout = z.object({ timeout: z.number().int().min(1).optional() }).loose();

function detail(sb: SandboxService, r: SandboxRecord, withToken: boolean) {
  const token = withToken ? sb.accessToken(r) : undefined;
  return {
    sandboxID: r.id,
    templateID: r.template,
    alias: r.template,
    clientID: r.nodeId,
    startedAt: r.readyAt ?? r.createdAt,
    endAt: r.timeoutAt ?? r.endedAt ?? new Date(Date.now() + r.timeoutMs).toISOString(),
    state: r.state === "paused" ? "paused" : "running",
    cpuCount: r.vcpus,
    memoryMB: r.memoryMib,
    diskSizeMB: 0,
    envdVersion: ENVD_VERSION,
    metadata: r.metadata,
    ...(token ? { envdAccessToken: token } : {}),
    domain: ingressDomain(), // getHost(port) = <port>-<id>.<domain>: the ingress proxy (src/ingress)
  };
}

function created(sb: SandboxService, r: SandboxRecord) {
  const token = sb.accessToken(r);
  return {
    sandboxID: r.id,
    templateID: r.template,
    alias: r.template,
    clientID: r.nodeId,
    envdVersion: ENVD_VERSION,
    // SECURITY: trafficAccessToken is the same sandbox token: @e2b/code-interpreter
    // sends it (E2B-Traffic-Access-Token) on every port-49999 call, including
    // /contexts where it sends no X-Access-Token, so every call is authenticated.
    ...(token ? { envdAccessToken: token, trafficAccessToken: token } : {}),
    domain: ingressDomain(), // getHost(port) = <port>-<id>.<domain>: the ingress proxy (src/ingress)
  };
}

export function e2bRoutes(app: Hono<AppEnv>, deps: Deps, limiter: RateLimiter): void {
  const e2b = new Hono<AppEnv>();
  const sb = deps.sandboxes;

  e2b.onError((err, c) => {
    const e = toApiError(err);
    if (e.code === "INTERNAL") c.get("log")?.error({ err }, "internal error");
    return c.json({ code: e.status, message: e.message }, e.status, e.headers);
  });

  const auth = async (c: Context<AppEnv>, next: () => Promise<void>) => {
    const caller = await authenticate(deps.store, c.req.raw.headers);
    limiter.take(caller.tenant.id, caller.tenant.limits.requestsPerMinute);
    if (!hasScope(caller, "sandboxes"))
      throw new ApiError("FORBIDDEN", 'this key lacks the "sandboxes" scope');
    c.set("caller", caller);
    return next();
  };
  // Only E2B's paths: a catch-all here would answer 401 for unknown native routes.
  for (const p of ["/sandboxes", "/sandboxes/*", "/v2/sandboxes", "/v2/sandboxes/*"]) e2b.use(p, auth);

  const readJson = async <T>(c: { req: { text(): Promise<string> } }, schema: z.ZodType<T>): Promise<T> => {
    const text = await c.req.text();
    if (text.length > deps.config.maxJsonBytes) throw new ApiError("PAYLOAD_TOO_LARGE", "body too large");
    let raw: unknown = {};
    if (text.trim()) {
      try {
        raw = JSON.parse(text);
      } catch {
        throw new ApiError("VALIDATION_FAILED", "malformed JSON body");
      }
    }
    const r = schema.safeParse(raw);
    if (!r.success)
      throw new ApiError(
        "VALIDATION_FAILED",
        r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "),
      );
    return r.data;
  };

  const create = async (c: Context<AppEnv>) => {
    const caller = c.get("caller");
    const b = await readJson(c, NewSandbox);
    const rec = await sb.create(
      { keyId: caller.keyId, tenant: caller.tenant },
      {
        // E2B's create names no shape: the template's default (code-interpreter: 2 vCPU, 1024 MiB).
        template: b.templateID,
        timeoutMs: (b.timeout ?? 300) * 1000,
        envVars: b.envVars ?? {},
        metadata: b.metadata ?? {},
        parentToken: c.req.header("x-firebreak-sandbox-token"),
      },
    );
    return c.json(created(sb, rec), 201);
  };
  e2b.post("/sandboxes", create);
  e2b.post("/v2/sandboxes", create);

  const list = async (c: Context<AppEnv>, v2: boolean) => {
    const caller = c.get("caller");
    const metadata: Record<string, string> = {};
    const m = c.req.query("metadata");
    if (m) for (const [k, v] of new URLSearchParams(m)) metadata[k] = v;
    const wanted =
      c.req.queries("state")?.flatMap((s) => s.split(",")) ?? (v2 ? ["running", "paused"] : ["running"]);
    const states = wanted.flatMap((s) =>
      s === "running"
        ? (["requested", "starting", "running"] as const)
        : s === "paused"
          ? (["paused"] as const)
          : [],
    );
    const limit = Math.min(Math.max(Number(c.req.query("limit") ?? 100) || 100, 1), 1000);
    const cursor = c.req.query("nextToken");
    const page = await sb.list({
      tenantId: caller.tenant.id,
      states: [...states],
      metadata,
      limit,
      ...(cursor && /^[0-9a-z]{1,16}$/.test(cursor) ? { cursor } : {}),
    });
    if (page.nextCursor) c.header("x-next-token", page.nextCursor);
    return c.json(
      page.sandboxes.map((r) => detail(sb, r, false)),
      200,
    );
  };
  e2b.get("/sandboxes", (c) => list(c, false));
  e2b.get("/v2/sandboxes", (c) => list(c, true));

  /** A live sandbox of the caller's tenant, else E2B's 404. */
  const live = async (tenantId: string, id: string) => {
    const rec = await sb.get(tenantId, id);
    if (isFinalState(rec.state)) throw new ApiError("NOT_FOUND", `sandbox ${id} not found`);
    return rec;
  };

  e2b.get("/sandboxes/:id", async (c) => {
    const rec = await live(c.get("caller").tenant.id, c.req.param("id"));
    return c.json(detail(sb, rec, true), 200);
  });

  e2b.delete("/sandboxes/:id", async (c) => {
    const caller = c.get("caller");
    const rec = await live(caller.tenant.id, c.req.param("id"));
    await sb.kill(caller.tenant.id, rec.id, `key:${caller.keyId}`);
    return c.body(null, 204);
  });

  e2b.post("/sandboxes/:id/timeout", async (c) => {
    const caller = c.get("caller");
    const b = await readJson(c, Timeout);
    const rec = await live(caller.tenant.id, c.req.param("id"));
    await sb.setTimeout(caller.tenant.id, rec.id, (b.timeout ?? 300) * 1000);
    return c.body(null, 204);
  });

  e2b.post("/sandboxes/:id/refreshes", async (c) => {
    await live(c.get("caller").tenant.id, c.req.param("id"));
    return c.body(null, 204);
  });

  e2b.post("/sandboxes/:id/pause", async (c) => {
    const caller = c.get("caller");
    const rec = await live(caller.tenant.id, c.req.param("id"));
    await sb.pause(caller.tenant.id, rec.id);
    return c.body(null, 204);
  });

  const connect = async (c: Context<AppEnv>) => {
    const caller = c.get("caller");
    const b = await readJson(c, Timeout);
    let rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    const timeoutMs = b.timeout !== undefined ? b.timeout * 1000 : undefined;
    if (rec.state === "paused") {
      rec = await sb.resume({ keyId: caller.keyId, tenant: caller.tenant }, rec.id, timeoutMs);
      return c.json(created(sb, rec), 201);
    }
    // Connecting never shortens a running sandbox's life.
    if (timeoutMs !== undefined && rec.timeoutAt && Date.parse(rec.timeoutAt) < Date.now() + timeoutMs) {
      rec = await sb.setTimeout(caller.tenant.id, rec.id, timeoutMs);
    }
    return c.json(created(sb, rec), 200);
  };
  e2b.post("/sandboxes/:id/connect", connect);
  e2b.post("/v2/sandboxes/:id/connect", connect);
  e2b.post("/sandboxes/:id/resume", connect);

  e2b.get("/sandboxes/:id/metrics", async (c) => {
    await sb.get(c.get("caller").tenant.id, c.req.param("id"));
    return c.json([], 200);
  });

  app.route("/", e2b);
}
