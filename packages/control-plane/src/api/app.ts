// The HTTP application: request ids and logs, body limits, authentication and
// rate limits, the native /v1 routes, the E2B-compatible routes, /openapi.json,
// and one error renderer. Routes parse and validate, then call typed actions.
import { randomBytes } from "node:crypto";
import { ATTR, PLATFORM_HEADER } from "@firebreak/node-agent";
import { OpenAPIHono } from "@hono/zod-openapi";
import { trace } from "@opentelemetry/api";
import type { Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import type { ZodError } from "zod";
import { authenticate, authenticatePlatform, hasScope, RateLimiter } from "../auth/middleware.ts";
import { e2bRoutes } from "../e2b/routes.ts";
import { ApiError, toApiError } from "../errors.ts";
import { ingressRoutes } from "../ingress/routes.ts";
import { httpMetrics } from "../telemetry/http-metrics.ts";
import { httpTracing } from "../telemetry/http-tracing.ts";
import { PROMETHEUS_CONTENT_TYPE } from "../telemetry/metrics.ts";
import type { AppEnv, AuthedCaller, Deps } from "./context.ts";
import { formatZodError } from "./format-zod-error.ts";
import { adminRoutes } from "./routes/admin.ts";
import { codeRoutes } from "./routes/code.ts";
import { commandRoutes } from "./routes/commands.ts";
import { costRoutes } from "./routes/costs.ts";
import { eventRoutes } from "./routes/events.ts";
import { fileRoutes } from "./routes/files.ts";
import { jobRoutes } from "./routes/jobs.ts";
import { logRoutes } from "./routes/logs.ts";
import { nodeRoutes } from "./routes/nodes.ts";
import { sandboxRoutes } from "./routes/sandboxes.ts";
import { serviceRoutes } from "./routes/services.ts";
import { traceRoutes } from "./routes/traces.ts";
import { webhookRoutes } from "./routes/webhooks.ts";

/** Any error as an ApiError (framework errors included). */
export function asApiError(err: unknown): ApiError {
  if (err instanceof HTTPException) {
    if (err.status === 413) return new ApiError("PAYLOAD_TOO_LARGE", err.message || "body too large");
    if (err.status === 400 || err.status === 415) {
      return new ApiError("VALIDATION_FAILED", `${err.message || "bad request"}: send a JSON body`, {
        cause: err,
      });
    }
  }
  return toApiError(err);
}

function logError(c: Context<AppEnv>, e: ApiError, raw: unknown): void {
  const log = c.get("log");
  if (e.code === "INTERNAL") log?.error({ err: raw }, "internal error");
  else log?.debug({ code: e.code, msg: e.message }, "request failed");
}

const JSON_BODY_EXEMPT = /^\/v1\/(sandboxes\/[^/]+\/files|jobs\/files)$/; // raw uploads (PUT)

export function createApp(deps: Deps): OpenAPIHono<AppEnv> {
  const app = new OpenAPIHono<AppEnv>({
    defaultHook: (result) => {
      if (!result.success) throw new ApiError("VALIDATION_FAILED", formatZodError(result.error as ZodError));
    },
  });
  const limiter = new RateLimiter();

  app.onError((err, c) => {
    const e = asApiError(err);
    logError(c, e, err);
    deps.metrics?.apiErrors.inc({ code: e.code });
    return c.json(
      { error: { code: e.code, message: e.message, requestId: c.get("requestId") ?? "" } },
      e.status,
      e.headers,
    );
  });
  app.notFound((c) =>
    c.json(
      {
        error: {
          code: "NOT_FOUND",
          message: `no route ${c.req.method} ${c.req.path}; the routes are listed at /openapi.json`,
          requestId: c.get("requestId") ?? "",
        },
      },
      404,
    ),
  );

  // Every request is a span (a child of the caller's traceparent); the
  // service's phase spans and the node's spans join it.
  if (deps.traces) app.use("*", httpTracing());

  // Request id and access log, for every route.
  app.use("*", async (c, next) => {
    const incoming = c.req.header("x-request-id");
    const id =
      incoming && /^[\w.-]{1,64}$/.test(incoming) ? incoming : `req_${randomBytes(8).toString("hex")}`;
    c.set("requestId", id);
    const log = deps.log.child({ requestId: id });
    c.set("log", log);
    const t0 = performance.now();
    await next();
    c.header("x-request-id", id);
    log.info(
      {
        method: c.req.method,
        path: c.req.path,
        status: c.res.status,
        ms: Math.round(performance.now() - t0),
      },
      "request",
    );
  });

  // Prometheus: API latency by route and status, and the scrape endpoint
  // (an admin key: it names nodes, templates and their load).
  const metrics = deps.metrics;
  if (metrics) {
    app.use("*", httpMetrics(metrics));
    app.get("/metrics", async (c) => {
      const caller = await authenticate(deps.store, c.req.raw.headers);
      if (!hasScope(caller, "admin")) {
        throw new ApiError("FORBIDDEN", "GET /metrics needs an admin key (Authorization: Bearer fb_...)");
      }
      return c.body(await metrics.text(), 200, { "content-type": PROMETHEUS_CONTENT_TYPE });
    });
  }

  // JSON bodies: at most maxJsonBytes, and only as application/json.
  const limit = bodyLimit({
    maxSize: deps.config.maxJsonBytes,
    onError: () => {
      throw new ApiError("PAYLOAD_TOO_LARGE", `JSON bodies are limited to ${deps.config.maxJsonBytes} bytes`);
    },
  });
  const jsonOnly = async (c: Context<AppEnv>, next: () => Promise<void>) => {
    if (c.req.method === "GET" || c.req.method === "HEAD" || c.req.method === "DELETE") return next();
    if (c.req.method === "PUT" && JSON_BODY_EXEMPT.test(c.req.path)) return next();
    const length = c.req.header("content-length");
    // Over HTTP/1.1 a request has a body only with Content-Length or
    // Transfer-Encoding (the Node adapter gives every POST a body stream,
    // even an empty one); a Request built in-process has one when not null.
    const fromNode = (c.env as { incoming?: unknown } | undefined)?.incoming !== undefined;
    const hasBody =
      length !== undefined
        ? Number(length) > 0
        : fromNode
          ? c.req.header("transfer-encoding") !== undefined
          : c.req.raw.body !== null;
    if (hasBody && !/^application\/(.+\+)?json\b/i.test(c.req.header("content-type") ?? "")) {
      throw new ApiError("VALIDATION_FAILED", "send the body as JSON with Content-Type: application/json");
    }
    if (!hasBody && c.req.header("content-type") !== undefined) {
      // No body at all (`curl -X POST -H 'content-type: application/json'`): a
      // route whose body is optional takes its defaults, as without the header.
      const headers = new Headers(c.req.raw.headers);
      headers.delete("content-type");
      c.req.raw = new Request(c.req.raw.url, { method: c.req.method, headers, signal: c.req.raw.signal });
    }
    return limit(c, next);
  };
  app.use("/v1/*", jsonOnly);

  // Authentication and per-tenant rate limits (health and the document are public).
  app.use("/v1/*", async (c, next) => {
    // Health and the document are public; a node joins with a join token, not an API key.
    if (c.req.path === "/v1/health" || (c.req.path === "/v1/nodes/join" && c.req.method === "POST"))
      return next();
    const platformToken = c.req.header(PLATFORM_HEADER);
    const caller =
      platformToken !== undefined
        ? await authenticatePlatform(deps.store, (t) => deps.sandboxes.verifyPlatformToken(t), platformToken)
        : await authenticate(deps.store, c.req.raw.headers);
    if (caller.sandbox) await platformScope(deps, caller, c.req.path);
    limiter.take(caller.tenant.id, caller.tenant.limits.requestsPerMinute);
    c.set("caller", caller);
    // The request's span is this tenant's (what a tenant may read of a trace: telemetry/traces.ts).
    trace.getActiveSpan()?.setAttribute(ATTR.tenantId, caller.tenant.id);
    c.set("log", c.get("log").child({ tenantId: caller.tenant.id, keyId: caller.keyId }));
    return next();
  });

  sandboxRoutes(app, deps);
  commandRoutes(app, deps);
  codeRoutes(app, deps); // /v1/sandboxes/{id}/code (code-interpreter templates)
  fileRoutes(app, deps);
  adminRoutes(app, deps);
  serviceRoutes(app, deps);
  ingressRoutes(app, deps); // /v1/sandboxes/{id}/ports (src/ingress)
  nodeRoutes(app, deps);
  if (deps.jobs) jobRoutes(app, deps, deps.jobs);
  traceRoutes(app, deps);
  eventRoutes(app, deps);
  logRoutes(app, deps);
  costRoutes(app, deps);
  webhookRoutes(app, deps);

  app.openAPIRegistry.registerComponent("securitySchemes", "bearer", { type: "http", scheme: "bearer" });
  app.openAPIRegistry.registerComponent("securitySchemes", "joinToken", {
    type: "http",
    scheme: "bearer",
    description: "A node's join token (fbj_...), from POST /v1/nodes/join-tokens",
  });
  app.openAPIRegistry.registerComponent("securitySchemes", "apiKey", {
    type: "apiKey",
    in: "header",
    name: "X-API-Key",
  });
  app.doc31("/openapi.json", {
    openapi: "3.1.0",
    info: {
      title: "Firebreak API",
      version: "1.0.0",
      description:
        "Native REST API of the Firebreak control plane. Errors: {error: {code, message, requestId}}.",
    },
  });

  e2bRoutes(app, deps, limiter);
  return app;
}

/**
 * What a sandbox calling through its platform grant may reach: the sandbox
 * routes, and of those only its own descendants (`/v1/sandboxes` itself:
 * create, and a list the route narrows to them).
 * SECURITY: anything else is FORBIDDEN; another sandbox is NOT_FOUND, as
 * another tenant's would be (sandboxes/service.ts getFor).
 */
async function platformScope(deps: Deps, caller: AuthedCaller, path: string): Promise<void> {
  const m = /^\/v1\/sandboxes(?:\/([^/]+))?(?:\/|$)/.exec(path);
  if (!m) {
    throw new ApiError(
      "FORBIDDEN",
      `a sandbox's platform grant reaches only /v1/sandboxes and its own descendants, not ${path}`,
    );
  }
  if (m[1] === undefined) return;
  let id: string;
  try {
    id = decodeURIComponent(m[1]);
  } catch {
    throw new ApiError("NOT_FOUND", `no sandbox ${m[1]}`);
  }
  await deps.sandboxes.getFor(caller, id);
}
