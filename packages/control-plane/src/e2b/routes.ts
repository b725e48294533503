// The E2B-compatible control-plane API (shared/e2b-compat.md) on the same port:
// X-API-KEY auth (keys as e2b_<hex>), /sandboxes and /v2/sandboxes, connect,
// timeout, pause, metrics. Errors are E2B's `{code: <status>, message}`.
// The envd traffic proxy lives in envd-proxy.ts (it runs below HTTP routing).
import { ATTR } from "@firebreak/node-agent";
import { ENVD_VERSION } from "@firebreak/protocol";
import { trace } from "@opentelemetry/api";
import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { z } from "zod";
import type { AppEnv, Deps } from "../api/context.ts";
import { actor, authenticate, hasScope, type RateLimiter } from "../auth/middleware.ts";
import { ApiError, toApiError } from "../errors.ts";
import { ingressDomain } from "../ingress/config.ts";
import type { IngressTokens } from "../ingress/ingress-token.ts";
import { readBounded } from "../relay/read-bounded.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import { isFinalState, type SandboxRecord } from "../store/store.ts";
import { e2bMetric } from "../usage/metrics-series.ts";

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
const ListQuery = z.object({
  metadata: z.string().optional(),
  state: z.string().optional(),
  limit: z
    .string()
    .regex(/^\d{1,9}$/, "a whole number")
    .optional(),
  nextToken: z.string().optional(),
});

/**
 * Every E2B route, with what it reads. Not in /openapi.json (E2B's own spec
 * describes them); the API fuzzer (src/api/fuzz.test.ts) takes its cases from
 * this table, and e2bRoutes refuses to start if a handler is missing from it.
 */
export const E2B_ROUTES = [
  { method: "POST", path: "/sandboxes", body: NewSandbox },
  { method: "POST", path: "/v2/sandboxes", body: NewSandbox },
  { method: "GET", path: "/sandboxes", query: ListQuery },
  { method: "GET", path: "/v2/sandboxes", query: ListQuery },
  { method: "GET", path: "/sandboxes/:id" },
  { method: "DELETE", path: "/sandboxes/:id" },
  { method: "POST", path: "/sandboxes/:id/timeout", body: Timeout },
  { method: "POST", path: "/sandboxes/:id/refreshes" },
  { method: "POST", path: "/sandboxes/:id/pause" },
  { method: "POST", path: "/sandboxes/:id/connect", body: Timeout },
  { method: "POST", path: "/v2/sandboxes/:id/connect", body: Timeout },
  { method: "POST", path: "/sandboxes/:id/resume", body: Timeout },
  { method: "GET", path: "/sandboxes/:id/metrics" },
] as const satisfies readonly {
  method: "GET" | "POST" | "DELETE";
  path: string;
  body?: z.ZodType;
  query?: z.ZodType;
}[];

type E2bRouteKey = `${(typeof E2B_ROUTES)[number]["method"]} ${(typeof E2B_ROUTES)[number]["path"]}`;

async function detail(sb: SandboxService, r: SandboxRecord, withToken: boolean, ingress: IngressTokens) {
  const token = withToken ? await sb.accessToken(r) : undefined;
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
    ...(withToken && !isFinalState(r.state) ? { trafficAccessToken: ingress.tokenFor(r.id) } : {}),
    domain: ingressDomain(), // getHost(port) = <port>-<id>.<domain>: the ingress proxy (src/ingress)
  };
}

async function created(sb: SandboxService, r: SandboxRecord, ingress: IngressTokens) {
  const token = await sb.accessToken(r);
  return {
    sandboxID: r.id,
    templateID: r.template,
    alias: r.template,
    clientID: r.nodeId,
    envdVersion: ENVD_VERSION,
    ...(token ? { envdAccessToken: token } : {}),
    // The ingress token, under E2B's name (its header e2b-traffic-access-token works too).
    trafficAccessToken: ingress.tokenFor(r.id),
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
    // The request's span is this tenant's (telemetry/traces.ts).
    trace.getActiveSpan()?.setAttribute(ATTR.tenantId, caller.tenant.id);
    return next();
  };
  // Bodies: at most maxJsonBytes, counted as they arrive (never buffered beyond it).
  const limit = bodyLimit({
    maxSize: deps.config.maxJsonBytes,
    onError: () => {
      throw new ApiError("PAYLOAD_TOO_LARGE", `JSON bodies are limited to ${deps.config.maxJsonBytes} bytes`);
    },
  });
  // Only E2B's paths: a catch-all here would answer 401 for unknown native routes.
  for (const p of ["/sandboxes", "/sandboxes/*", "/v2/sandboxes", "/v2/sandboxes/*"]) {
    e2b.use(p, auth);
    e2b.use(p, limit);
  }

  const readJson = async <T>(c: Context<AppEnv>, schema: z.ZodType<T>): Promise<T> => {
    // Read at most the limit: a larger body is refused without being buffered.
    const { bytes, truncated } = await readBounded(c.req.raw.body, deps.config.maxJsonBytes);
    if (truncated) {
      throw new ApiError("PAYLOAD_TOO_LARGE", `JSON bodies are limited to ${deps.config.maxJsonBytes} bytes`);
    }
    const text = bytes.toString("utf8");
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
    const rec = await sb.create(actor(caller), {
      template: b.templateID,
      vcpus: 1,
      memoryMib: 256,
      timeoutMs: (b.timeout ?? 300) * 1000,
      envVars: b.envVars ?? {},
      metadata: b.metadata ?? {},
      parentToken: c.req.header("x-firebreak-sandbox-token"),
    });
    return c.json(await created(sb, rec, deps.ingressTokens), 201);
  };
  const handlers: Partial<Record<E2bRouteKey, (c: Context<AppEnv>) => Promise<Response>>> = {};
  const on = (key: E2bRouteKey, h: (c: Context<AppEnv>) => Promise<Response>) => {
    handlers[key] = h;
  };
  on("POST /sandboxes", create);
  on("POST /v2/sandboxes", create);

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
    const rawLimit = c.req.query("limit");
    if (rawLimit !== undefined && !ListQuery.shape.limit.safeParse(rawLimit).success) {
      throw new ApiError("VALIDATION_FAILED", `limit: ${JSON.stringify(rawLimit)} is not a whole number`);
    }
    const limit = Math.min(Math.max(Number(rawLimit ?? 100) || 100, 1), 1000);
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
      await Promise.all(page.sandboxes.map((r) => detail(sb, r, false, deps.ingressTokens))),
      200,
    );
  };
  on("GET /sandboxes", (c) => list(c, false));
  on("GET /v2/sandboxes", (c) => list(c, true));

  /** A live sandbox of the caller's tenant, else E2B's 404. */
  const live = async (tenantId: string, id: string) => {
    const rec = await sb.get(tenantId, id);
    if (isFinalState(rec.state)) throw new ApiError("NOT_FOUND", `sandbox ${id} not found`);
    return rec;
  };

  on("GET /sandboxes/:id", async (c) => {
    const rec = await live(c.get("caller").tenant.id, c.req.param("id") ?? "");
    return c.json(await detail(sb, rec, true, deps.ingressTokens), 200);
  });

  on("DELETE /sandboxes/:id", async (c) => {
    const caller = c.get("caller");
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    await sb.kill(caller.tenant.id, rec.id, `key:${caller.keyId}`);
    return c.body(null, 204);
  });

  on("POST /sandboxes/:id/timeout", async (c) => {
    const caller = c.get("caller");
    const b = await readJson(c, Timeout);
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    await sb.setTimeout(caller.tenant.id, rec.id, (b.timeout ?? 300) * 1000);
    return c.body(null, 204);
  });

  on("POST /sandboxes/:id/refreshes", async (c) => {
    await live(c.get("caller").tenant.id, c.req.param("id") ?? "");
    return c.body(null, 204);
  });

  on("POST /sandboxes/:id/pause", async (c) => {
    const caller = c.get("caller");
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    await sb.pause(actor(caller), rec.id);
    return c.body(null, 204);
  });

  const connect = async (c: Context<AppEnv>) => {
    const caller = c.get("caller");
    const b = await readJson(c, Timeout);
    let rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    const timeoutMs = b.timeout !== undefined ? b.timeout * 1000 : undefined;
    if (rec.state === "paused") {
      rec = await sb.resume(actor(caller), rec.id, timeoutMs);
      return c.json(await created(sb, rec, deps.ingressTokens), 201);
    }
    // Connecting never shortens a running sandbox's life.
    if (timeoutMs !== undefined && rec.timeoutAt && Date.parse(rec.timeoutAt) < Date.now() + timeoutMs) {
      rec = await sb.setTimeout(caller.tenant.id, rec.id, timeoutMs);
    }
    return c.json(await created(sb, rec, deps.ingressTokens), 200);
  };
  on("POST /sandboxes/:id/connect", connect);
  on("POST /v2/sandboxes/:id/connect", connect);
  on("POST /sandboxes/:id/resume", connect);

  on("GET /sandboxes/:id/metrics", async (c) => {
    const rec = await sb.get(c.get("caller").tenant.id, c.req.param("id") ?? "");
    // E2B's start and end are unix seconds.
    const sec = (v: string | undefined) => (v && /^\d{1,12}$/.test(v) ? Number(v) * 1000 : undefined);
    const start = sec(c.req.query("start")) ?? 0;
    const end = sec(c.req.query("end"));
    const points = sb.metrics.range(rec.id, start, end === undefined ? Number.POSITIVE_INFINITY : end + 999);
    return c.json(points.map(e2bMetric), 200);
  });

  // INVARIANT: the table and the handlers are the same set of routes.
  for (const r of E2B_ROUTES) {
    const h = handlers[`${r.method} ${r.path}`];
    if (!h) throw new Error(`E2B route ${r.method} ${r.path} has no handler`);
    e2b.on(r.method, r.path, h);
  }
  if (Object.keys(handlers).length !== E2B_ROUTES.length)
    throw new Error("an E2B handler is not in E2B_ROUTES");

  app.route("/", e2b);
}
