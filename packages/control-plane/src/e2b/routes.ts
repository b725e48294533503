// The E2B-compatible control-plane API (shared/e2b-compat.md) on the same port:
// X-API-KEY auth (keys as e2b_<hex>), /sandboxes and /v2/sandboxes, connect,
// timeout, pause, metrics, fork, network, snapshots, template aliases. Errors
// are E2B's `{code: <status>, message}`; E2B features Firebreak does not serve
// answer 501 naming them (docs/E2B.md has the matrix). The envd traffic proxy
// lives in envd-proxy.ts (it runs below HTTP routing).
import { ATTR } from "@firebreak/node-agent";
import { ENVD_VERSION } from "@firebreak/protocol";
import { trace } from "@opentelemetry/api";
import { type Context, Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import type { AppEnv, Deps } from "../api/context.ts";
import { actor, authenticate, hasScope, type RateLimiter } from "../auth/middleware.ts";
import { ApiError, toApiError } from "../errors.ts";
import { ingressDomain } from "../ingress/config.ts";
import type { IngressTokens } from "../ingress/ingress-token.ts";
import { publicPortsOf } from "../ingress/public-ports.ts";
import { readBounded } from "../relay/read-bounded.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import { isFinalState, type SandboxRecord, type SandboxState } from "../store/store.ts";
import { e2bMetric } from "../usage/metrics-series.ts";
import { e2bEgressPolicy, e2bNetworkView } from "./network.ts";
import { E2bSnapshots } from "./snapshots.ts";

const NetworkConfig = z
  .object({
    allowPublicTraffic: z.boolean().optional(),
    allowOut: z.array(z.string().max(253)).max(256).optional(),
    denyOut: z.array(z.string().max(64)).max(256).optional(),
    // SECURITY: it becomes the Host header ingress sends: host characters only
    // (a CR or LF would make the upstream request throw).
    maskRequestHost: z
      .string()
      .max(253)
      .regex(/^[A-Za-z0-9.:_[\]${}-]*$/, "host characters only (letters, digits, . : _ - [ ] and $, { })")
      .optional(),
    egressProxy: z.unknown().optional(),
    rules: z.record(z.string(), z.unknown()).optional(),
    httpsPorts: z.unknown().optional(),
  })
  .loose();
const NewSandbox = z
  .object({
    // A template name, or a snapshot's id or name (`team/name:tag`).
    templateID: z.string().regex(/^[a-z0-9][a-z0-9._:/-]{0,127}$/),
    timeout: z.number().int().min(0).optional(),
    metadata: z.record(z.string().min(1).max(64), z.string().max(512)).optional(),
    envVars: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()).optional(),
    autoPause: z.boolean().optional(),
    autoPauseMemory: z.boolean().optional(),
    autoResume: z.object({ enabled: z.boolean().optional() }).loose().nullable().optional(),
    secure: z.boolean().optional(),
    allow_internet_access: z.boolean().optional(),
    network: NetworkConfig.nullable().optional(),
    mcp: z.unknown().optional(),
    iam: z.unknown().optional(),
    volumeMounts: z.array(z.unknown()).max(64).optional(),
  })
  // Newer E2B clients may send more: accepted and ignored.
  .loose();
const Timeout = z.object({ timeout: z.number().int().min(0).optional() }).loose();
const Connect = z
  .object({ timeout: z.number().int().min(0).optional(), memory: z.boolean().optional() })
  .loose();
const Pause = z.object({ memory: z.boolean().optional() }).loose();
const Fork = z
  .object({ timeout: z.number().int().min(0).optional(), count: z.number().int().min(1).max(100).optional() })
  .loose();
const NetworkUpdate = z
  .object({
    allowOut: z.array(z.string().max(253)).max(256).optional(),
    denyOut: z.array(z.string().max(64)).max(256).optional(),
    allow_internet_access: z.boolean().optional(),
    egressProxy: z.unknown().optional(),
    rules: z.record(z.string(), z.unknown()).optional(),
  })
  .loose();
const SnapshotRequest = z
  .object({
    name: z
      .string()
      .regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,99}$/)
      .optional(),
  })
  .loose();
const whole = z
  .string()
  .regex(/^\d{1,12}$/, "a whole number")
  .optional();
const ListQuery = z.object({
  metadata: z.string().optional(),
  state: z.string().optional(),
  limit: whole,
  nextToken: z.string().optional(),
  order: z.enum(["asc", "desc"]).optional(),
  startedAfter: z.string().optional(),
  template: z.string().optional(),
});
const MetricsQuery = z.object({ start: whole, end: whole });
const SnapshotsQuery = z.object({
  sandboxID: z.string().optional(),
  name: z.string().optional(),
  limit: whole,
  nextToken: z.string().optional(),
});

/** E2B features Firebreak does not serve: every route answers 501 naming the feature. */
const NOT_SERVED: { method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE"; path: string; feature: string }[] = [
  { method: "GET", path: "/sandboxes/metrics", feature: "metrics of many sandboxes at once" },
  { method: "GET", path: "/sandboxes/:id/logs", feature: "sandbox logs" },
  { method: "GET", path: "/v2/sandboxes/:id/logs", feature: "sandbox logs" },
  { method: "GET", path: "/teams", feature: "teams" },
  { method: "GET", path: "/teams/:id/metrics", feature: "team metrics" },
  { method: "GET", path: "/teams/:id/metrics/max", feature: "team metrics" },
  {
    method: "POST",
    path: "/v3/templates",
    feature: "template builds through E2B's build service (use POST /v1/templates)",
  },
  {
    method: "GET",
    path: "/v2/templates",
    feature: "template builds through E2B's build service (use GET /v1/templates)",
  },
  {
    method: "POST",
    path: "/v2/templates",
    feature: "template builds through E2B's build service (use POST /v1/templates)",
  },
  { method: "GET", path: "/templates", feature: "E2B template listing (use GET /v1/templates)" },
  {
    method: "POST",
    path: "/templates",
    feature: "template builds through E2B's build service (use POST /v1/templates)",
  },
  { method: "GET", path: "/templates/:id", feature: "E2B template details (use GET /v1/templates)" },
  { method: "POST", path: "/templates/:id", feature: "template builds through E2B's build service" },
  { method: "PATCH", path: "/templates/:id", feature: "E2B template updates" },
  { method: "PATCH", path: "/v2/templates/:id", feature: "E2B template updates" },
  {
    method: "GET",
    path: "/templates/:id/files/:hash",
    feature: "template builds through E2B's build service",
  },
  {
    method: "POST",
    path: "/templates/:id/builds/:build",
    feature: "template builds through E2B's build service",
  },
  {
    method: "POST",
    path: "/v2/templates/:id/builds/:build",
    feature: "template builds through E2B's build service",
  },
  {
    method: "GET",
    path: "/templates/:id/builds/:build/status",
    feature: "template builds through E2B's build service",
  },
  {
    method: "GET",
    path: "/templates/:id/builds/:build/logs",
    feature: "template builds through E2B's build service",
  },
  { method: "POST", path: "/templates/tags", feature: "template tags" },
  { method: "DELETE", path: "/templates/tags", feature: "template tags" },
  { method: "GET", path: "/templates/:id/tags", feature: "template tags" },
  { method: "GET", path: "/volumes", feature: "volumes" },
  { method: "POST", path: "/volumes", feature: "volumes" },
  { method: "GET", path: "/volumes/:id", feature: "volumes" },
  { method: "DELETE", path: "/volumes/:id", feature: "volumes" },
  { method: "GET", path: "/secrets", feature: "secrets" },
  { method: "POST", path: "/secrets", feature: "secrets" },
  { method: "GET", path: "/secrets/:id", feature: "secrets" },
  { method: "POST", path: "/secrets/:id", feature: "secrets" },
  { method: "DELETE", path: "/secrets/:id", feature: "secrets" },
  { method: "GET", path: "/api-keys", feature: "E2B API key management (use /v1/keys)" },
  { method: "POST", path: "/api-keys", feature: "E2B API key management (use /v1/keys)" },
  { method: "PATCH", path: "/api-keys/:id", feature: "E2B API key management (use /v1/keys)" },
  { method: "DELETE", path: "/api-keys/:id", feature: "E2B API key management (use /v1/keys)" },
  { method: "POST", path: "/access-tokens", feature: "E2B access tokens" },
  { method: "DELETE", path: "/access-tokens/:id", feature: "E2B access tokens" },
  { method: "GET", path: "/nodes", feature: "E2B node administration" },
  { method: "GET", path: "/nodes/:id", feature: "E2B node administration" },
  { method: "POST", path: "/nodes/:id", feature: "E2B node administration" },
];

/** Prefixes of E2B's API: unknown routes under them answer 404 in E2B's shape. */
const E2B_PREFIXES = [
  "/sandboxes",
  "/v2/*",
  "/v3/*",
  "/templates",
  "/snapshots",
  "/volumes",
  "/secrets",
  "/teams",
  "/nodes",
  "/api-keys",
  "/access-tokens",
  "/admin/*",
];

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
  { method: "POST", path: "/sandboxes/:id/pause", body: Pause },
  { method: "POST", path: "/sandboxes/:id/connect", body: Connect },
  { method: "POST", path: "/v2/sandboxes/:id/connect", body: Connect },
  { method: "POST", path: "/sandboxes/:id/resume", body: Connect },
  { method: "GET", path: "/sandboxes/:id/metrics", query: MetricsQuery },
  { method: "POST", path: "/sandboxes/:id/fork", body: Fork },
  { method: "PUT", path: "/sandboxes/:id/network", body: NetworkUpdate },
  { method: "POST", path: "/sandboxes/:id/snapshots", body: SnapshotRequest },
  { method: "GET", path: "/snapshots", query: SnapshotsQuery },
  { method: "DELETE", path: "/templates/:id" },
  { method: "GET", path: "/templates/aliases/:alias" },
] as const satisfies readonly {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  body?: z.ZodType;
  query?: z.ZodType;
}[];

type E2bRouteKey = `${(typeof E2B_ROUTES)[number]["method"]} ${(typeof E2B_ROUTES)[number]["path"]}`;

/** A sandbox as E2B describes it (get, list); with its tokens for get. */
async function detail(
  sb: SandboxService,
  r: SandboxRecord,
  withToken: boolean,
  ingress: IngressTokens,
  extra: Record<string, unknown> = {},
) {
  const token = withToken ? await sb.accessToken(r) : undefined;
  const net = e2bNetworkView(r.networkPolicy);
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
    allowInternetAccess: net.allowInternetAccess,
    ...extra,
    ...(token ? { envdAccessToken: token } : {}),
    ...(withToken && !isFinalState(r.state) ? { trafficAccessToken: ingress.tokenFor(r.id) } : {}),
    domain: ingressDomain(), // getHost(port) = <port>-<id>.<domain>: the ingress proxy (src/ingress)
  };
}

/** The answer to create, connect and fork: how to reach the sandbox. */
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

const notServed = (feature: string) =>
  new ApiError("NOT_IMPLEMENTED", `${feature} is not served by Firebreak (docs/E2B.md lists what is)`);

/**
 * A running sandbox past its timeout whose timeout action is pause: the
 * reaper pauses it (within its interval; saving takes seconds under TCG).
 * E2B reports it paused from its timeout on.
 */
export function pausingOnTimeout(r: SandboxRecord, onTimeout: "pause" | "kill", now = Date.now()): boolean {
  return (
    onTimeout === "pause" && r.state === "running" && r.timeoutAt !== null && Date.parse(r.timeoutAt) <= now
  );
}

/** The state filter of a list: E2B's `running`/`paused` as Firebreak states. */
function statesOf(wanted: string[]): SandboxState[] {
  return wanted.flatMap((s): SandboxState[] =>
    s === "running" ? ["requested", "starting", "running"] : s === "paused" ? ["paused"] : [],
  );
}

export function e2bRoutes(app: Hono<AppEnv>, deps: Deps, limiter: RateLimiter): void {
  const e2b = new Hono<AppEnv>();
  const sb = deps.sandboxes;
  const snapshots = new E2bSnapshots();
  const ports = publicPortsOf(deps.store);

  e2b.onError((err, c) => {
    const e = toApiError(err);
    if (e.code === "INTERNAL") c.get("log")?.error({ err }, "internal error");
    return c.json({ code: e.status, message: e.message }, e.status as ContentfulStatusCode, e.headers);
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
  for (const p of E2B_PREFIXES.flatMap((p) => (p.endsWith("/*") ? [p] : [p, `${p}/*`]))) {
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
  const readQuery = <T>(c: Context<AppEnv>, schema: z.ZodType<T>): T => {
    const r = schema.safeParse(c.req.query());
    if (!r.success)
      throw new ApiError(
        "VALIDATION_FAILED",
        r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "),
      );
    return r.data;
  };
  const seconds = (s: number | undefined, fallback: number) =>
    (s === undefined || s === 0 ? fallback : s) * 1000;

  const create = async (c: Context<AppEnv>) => {
    const caller = c.get("caller");
    const b = await readJson(c, NewSandbox);
    // E2B features without a Firebreak counterpart: refused by name, never silently ignored.
    if (b.volumeMounts?.length) throw notServed("volume mounts");
    // `mcp` needs nothing here: the SDK starts `mcp-gateway` inside the sandbox
    // itself (it fails, and the SDK kills the sandbox, on templates without it).
    if (b.iam !== undefined && b.iam !== null) throw notServed("IAM tokens");
    if (b.network?.egressProxy !== undefined && b.network.egressProxy !== null)
      throw notServed("egress proxies");
    if (b.network?.rules && Object.keys(b.network.rules).length) throw notServed("egress transform rules");
    if (b.autoPause && b.autoPauseMemory === false && b.autoResume?.enabled === true) {
      throw new ApiError(
        "VALIDATION_FAILED",
        "autoResume cannot be combined with autoPauseMemory: false: a filesystem-only pause is resumed explicitly (connect), not by traffic",
      );
    }
    const policy = e2bEgressPolicy(
      {
        allowInternetAccess: b.allow_internet_access,
        allowOut: b.network?.allowOut,
        denyOut: b.network?.denyOut,
      },
      deps.config.e2bInternetDefault,
    );
    const snap = snapshots.find(caller.tenant.id, b.templateID);
    const template = snap?.template ?? b.templateID.replace(/:default$/, "");
    if (!snap && !/^[a-z0-9][a-z0-9-]{0,39}$/.test(template)) {
      throw new ApiError(
        "VALIDATION_FAILED",
        `templateID: ${JSON.stringify(b.templateID)} is neither a template name (1-40 lowercase letters, digits or dashes) nor one of this tenant's snapshots`,
      );
    }
    const rec = await sb.create(actor(caller), {
      template,
      // A snapshot keeps its source's shape; else the template's default
      // (code-interpreter: 2 vCPU, 1024 MiB), as E2B's create names none.
      ...(snap ? { vcpus: snap.vcpus, memoryMib: snap.memoryMib } : {}),
      timeoutMs: seconds(b.timeout, 300),
      envVars: b.envVars ?? {},
      metadata: b.metadata ?? {},
      parentToken: c.req.header("x-firebreak-sandbox-token"),
      networkPolicy: policy,
      onTimeout: b.autoPause ? "pause" : "kill",
      ...(b.autoPause && b.autoPauseMemory === false ? { pauseMemory: false } : {}),
      ...(snap ? { fromSnapshot: { nodeId: snap.nodeId, snapshotId: snap.nodeSnapshotId } } : {}),
    });
    // E2B's port semantics: every port public unless allowPublicTraffic is false (server default).
    await ports.setE2b(
      rec.id,
      b.network?.allowPublicTraffic ?? deps.config.e2bPublicPortsDefault,
      b.network?.maskRequestHost,
      b.autoPause === true && b.autoResume?.enabled === true,
    );
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
    const q = readQuery(c, ListQuery);
    const metadata: Record<string, string> = {};
    if (q.metadata) for (const [k, v] of new URLSearchParams(q.metadata)) metadata[k] = v;
    const wanted =
      c.req.queries("state")?.flatMap((s) => s.split(",")) ?? (v2 ? ["running", "paused"] : ["running"]);
    const limit = Math.min(Math.max(Number(q.limit ?? 100) || 100, 1), 1000);
    let startedAfter: number | undefined;
    if (q.startedAfter !== undefined) {
      startedAfter = Date.parse(q.startedAfter);
      if (Number.isNaN(startedAfter))
        throw new ApiError(
          "VALIDATION_FAILED",
          `startedAfter: ${JSON.stringify(q.startedAfter)} is not a date-time`,
        );
    }
    // A tenant's live sandboxes are bounded by its quotas: filter and order them here.
    const all: SandboxRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await sb.list({
        tenantId: caller.tenant.id,
        states: statesOf(wanted),
        metadata,
        limit: 1000,
        ...(cursor ? { cursor } : {}),
      });
      all.push(...page.sandboxes);
      cursor = page.nextCursor ?? undefined;
    } while (cursor && all.length < 100_000);
    const started = (r: SandboxRecord) => Date.parse(r.readyAt ?? r.createdAt);
    const template = q.template?.replace(/:default$/, "");
    const matching = all
      .filter((r) => template === undefined || r.template === template)
      .filter((r) => startedAfter === undefined || started(r) >= startedAfter)
      .sort(
        (a, b) =>
          (q.order === "asc" ? started(a) - started(b) : started(b) - started(a)) || a.id.localeCompare(b.id),
      );
    // The next token is the id of the last sandbox sent; the next page starts after it.
    let from = 0;
    if (q.nextToken) {
      const i = matching.findIndex((r) => r.id === q.nextToken);
      from = i >= 0 ? i + 1 : matching.length;
    }
    const page = matching.slice(from, from + limit);
    if (from + limit < matching.length && page.length) c.header("x-next-token", page.at(-1)!.id);
    return c.json(await Promise.all(page.map((r) => detail(sb, r, false, deps.ingressTokens))), 200);
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
    const p = await ports.settings(rec.id);
    const net = e2bNetworkView(rec.networkPolicy);
    const onTimeout = await sb.timeoutAction(rec.id);
    return c.json(
      await detail(sb, rec, true, deps.ingressTokens, {
        // Past its timeout with autoPause, it is paused (the reaper's pause may still be saving it).
        ...(pausingOnTimeout(rec, onTimeout) ? { state: "paused" } : {}),
        network: {
          allowOut: net.allowOut,
          denyOut: net.denyOut,
          allowPublicTraffic: p.allPublic,
          ...(p.maskRequestHost !== undefined ? { maskRequestHost: p.maskRequestHost } : {}),
        },
        lifecycle: { onTimeout: onTimeout === "pause" ? "pause" : "kill", autoResume: p.autoResume },
      }),
      200,
    );
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
    await sb.setTimeout(caller.tenant.id, rec.id, seconds(b.timeout, 300));
    return c.body(null, 204);
  });

  on("POST /sandboxes/:id/refreshes", async (c) => {
    await live(c.get("caller").tenant.id, c.req.param("id") ?? "");
    return c.body(null, 204);
  });

  on("POST /sandboxes/:id/pause", async (c) => {
    const caller = c.get("caller");
    // `memory: false`: a filesystem-only pause; the resume (connect) boots afresh from the disk.
    const b = await readJson(c, Pause);
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    await sb.pause(actor(caller), rec.id, { memory: b.memory !== false });
    return c.body(null, 204);
  });

  const connect = async (c: Context<AppEnv>) => {
    const caller = c.get("caller");
    const b = await readJson(c, Connect);
    let rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    const timeoutMs = b.timeout ? b.timeout * 1000 : undefined;
    // One being paused on its timeout is resumed once saved (the pause holds the sandbox's lock).
    if (rec.state === "paused" || pausingOnTimeout(rec, await sb.timeoutAction(rec.id))) {
      try {
        rec = await sb.resume(actor(caller), rec.id, timeoutMs);
        return c.json(await created(sb, rec, deps.ingressTokens), 201);
      } catch (e) {
        // The reaper had not begun its pause: still running, connected as any running one.
        rec = await live(caller.tenant.id, rec.id);
        if (rec.state !== "running" || toApiError(e).code !== "CONFLICT") throw e;
      }
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
    const q = readQuery(c, MetricsQuery);
    const points = sb.metrics.range(
      rec.id,
      q.start !== undefined ? Number(q.start) * 1000 : 0,
      q.end !== undefined ? Number(q.end) * 1000 + 999 : Number.POSITIVE_INFINITY,
    );
    return c.json(points.map(e2bMetric), 200);
  });

  on("POST /sandboxes/:id/fork", async (c) => {
    const caller = c.get("caller");
    const b = await readJson(c, Fork);
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    const children = await sb.fork(actor(caller), rec.id, b.count ?? 1);
    const out = [];
    for (let child of children) {
      if (b.timeout) child = await sb.setTimeout(caller.tenant.id, child.id, b.timeout * 1000);
      const p = await ports.settings(rec.id);
      await ports.setE2b(
        child.id,
        p.e2b ? p.allPublic : deps.config.e2bPublicPortsDefault,
        p.maskRequestHost,
        p.autoResume,
      );
      out.push({ sandbox: await created(sb, child, deps.ingressTokens) });
    }
    return c.json(out, 201);
  });

  on("PUT /sandboxes/:id/network", async (c) => {
    const caller = c.get("caller");
    const b = await readJson(c, NetworkUpdate);
    if (b.egressProxy !== undefined && b.egressProxy !== null) throw notServed("egress proxies");
    if (b.rules && Object.keys(b.rules).length) throw notServed("egress transform rules");
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    const egress = e2bEgressPolicy(
      { allowInternetAccess: b.allow_internet_access, allowOut: b.allowOut, denyOut: b.denyOut },
      deps.config.e2bInternetDefault,
    );
    // E2B replaces its egress lists; Firebreak's own parts of the policy (services, networks, bandwidth) stay.
    const cur = rec.networkPolicy;
    await sb.updateNetworkPolicy(caller.tenant.id, rec.id, {
      ...egress,
      ...(cur?.services.length ? { services: cur.services } : {}),
      ...(cur?.networks.length ? { networks: cur.networks } : {}),
      ...(cur?.bandwidthKBps !== undefined ? { bandwidthKBps: cur.bandwidthKBps } : {}),
    });
    return c.body(null, 204);
  });

  on("POST /sandboxes/:id/snapshots", async (c) => {
    const caller = c.get("caller");
    const b = await readJson(c, SnapshotRequest);
    const rec = await live(caller.tenant.id, c.req.param("id") ?? "");
    const taken = await sb.snapshot(actor(caller), rec.id);
    const snap = snapshots.add(
      {
        tenantId: caller.tenant.id,
        name: b.name,
        nodeId: taken.nodeId,
        nodeSnapshotId: taken.snapshotId,
        sandboxId: rec.id,
        template: rec.template,
        vcpus: rec.vcpus,
        memoryMib: rec.memoryMib,
      },
      caller.tenant.name,
    );
    return c.json({ snapshotID: snap.id, names: snap.names }, 201);
  });

  on("GET /snapshots", async (c) => {
    const caller = c.get("caller");
    const q = readQuery(c, SnapshotsQuery);
    const all = snapshots.list(caller.tenant.id, {
      ...(q.sandboxID ? { sandboxId: q.sandboxID } : {}),
      ...(q.name ? { name: q.name } : {}),
    });
    const limit = Math.min(Math.max(Number(q.limit ?? 100) || 100, 1), 1000);
    let from = 0;
    if (q.nextToken) {
      const i = all.findIndex((s) => s.id === q.nextToken);
      from = i >= 0 ? i + 1 : all.length;
    }
    const page = all.slice(from, from + limit);
    if (from + limit < all.length && page.length) c.header("x-next-token", page.at(-1)!.id);
    return c.json(
      page.map((s) => ({ snapshotID: s.id, names: s.names })),
      200,
    );
  });

  on("DELETE /templates/:id", async (c) => {
    const caller = c.get("caller");
    const id = c.req.param("id") ?? "";
    const snap = snapshots.find(caller.tenant.id, id);
    if (!snap) {
      if (await sb.templates.readable(id, actor(caller))) {
        throw notServed("deleting templates through E2B's API (use DELETE /v1/templates/{name})");
      }
      throw new ApiError("NOT_FOUND", `no snapshot or template ${id}`);
    }
    snapshots.remove(snap.id);
    await sb.deleteSnapshot(snap.nodeId, snap.nodeSnapshotId);
    return c.body(null, 204);
  });

  on("GET /templates/aliases/:alias", async (c) => {
    const caller = c.get("caller");
    const alias = (c.req.param("alias") ?? "").replace(/:default$/, "");
    const snap = snapshots.find(caller.tenant.id, alias);
    if (snap) return c.json({ templateID: snap.id, public: false }, 200);
    if (/^[a-z0-9][a-z0-9-]{0,39}$/.test(alias) && (await sb.templates.readable(alias, actor(caller)))) {
      return c.json({ templateID: alias, public: true }, 200);
    }
    throw new ApiError("NOT_FOUND", `no template with alias ${alias}`);
  });

  // INVARIANT: the table and the handlers are the same set of routes.
  for (const r of E2B_ROUTES) {
    const h = handlers[`${r.method} ${r.path}`];
    if (!h) throw new Error(`E2B route ${r.method} ${r.path} has no handler`);
    e2b.on(r.method, r.path, h);
  }
  if (Object.keys(handlers).length !== E2B_ROUTES.length)
    throw new Error("an E2B handler is not in E2B_ROUTES");
  // What E2B has and Firebreak does not: 501 naming the feature.
  for (const r of NOT_SERVED) {
    e2b.on(r.method, r.path, () => {
      throw notServed(r.feature);
    });
  }
  // Anything else under E2B's prefixes: E2B's 404 shape (the SDK prints its message).
  for (const p of E2B_PREFIXES.flatMap((p) => (p.endsWith("/*") ? [p] : [p, `${p}/*`]))) {
    e2b.all(p, (c) => {
      throw new ApiError("NOT_FOUND", `no E2B route ${c.req.method} ${c.req.path}`);
    });
  }

  app.route("/", e2b);
}
