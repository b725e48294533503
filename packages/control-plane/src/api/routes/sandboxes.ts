// /v1/sandboxes: create, list, get, kill, timeout, pause, resume, fork, events, metrics.

import { type EgressPolicy, normalizePolicy } from "@firebreak/node-agent";
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { actor, hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { IngressTokens } from "../../ingress/ingress-token.ts";
import { isDescendant } from "../../sandboxes/platform.ts";
import type { SandboxService } from "../../sandboxes/service.ts";
import { isFinalState, SANDBOX_STATES, type SandboxRecord, type SandboxState } from "../../store/store.ts";
import type { AppEnv, Deps } from "../context.ts";
import { formatZodError } from "../format-zod-error.ts";
import { body, errors, json, noContent, optionalBody, security } from "../openapi-helpers.ts";
import {
  CreateSandboxBody,
  EventsSchema,
  ForkBody,
  ListSandboxesQuery,
  NetworkSchema,
  PauseBody,
  PutNetworkBody,
  ResumeBody,
  SandboxIdParam,
  SandboxListSchema,
  SandboxMetricsQuery,
  SandboxMetricsSchema,
  SandboxSchema,
  TimeoutBody,
} from "../schemas.ts";

const tags = ["sandboxes"];

/**
 * The wire form of a sandbox. The guest agent's token is included only where
 * `withToken`; the ingress token (derived, see ingress/ingress-token.ts) where
 * `ingress` is given and the sandbox has not ended.
 */
export async function sandboxJson(
  sb: SandboxService,
  r: SandboxRecord,
  withToken: boolean,
  ingress?: IngressTokens,
) {
  const token = withToken ? await sb.accessToken(r) : undefined;
  const ingressToken = ingress && !isFinalState(r.state) ? ingress.tokenFor(r.id) : undefined;
  return {
    id: r.id,
    tenantId: r.tenantId,
    template: r.template,
    state: r.state,
    vcpus: r.vcpus,
    memoryMib: r.memoryMib,
    metadata: r.metadata,
    ...(token ? { envdAccessToken: token } : {}),
    ...(ingressToken ? { ingressToken } : {}),
    createdAt: r.createdAt,
    readyAt: r.readyAt,
    ...(r.endedAt ? { endedAt: r.endedAt } : {}),
    ...(r.endReason ? { endReason: r.endReason } : {}),
    ...(r.endedBy ? { endedBy: r.endedBy } : {}),
    timeoutMs: r.timeoutMs,
    timeoutAt: r.timeoutAt,
    startPath: r.startPath,
    timings: r.timings,
    ...(r.parentId ? { parentId: r.parentId } : {}),
    rootId: r.rootId,
  };
}

/**
 * The policy with who made it. SECURITY: `grantedBy: "admin"` (private ranges
 * may be allowed) comes only from a key with the admin scope; any other key's
 * policy is a tenant's (public addresses only), and asking for "admin" is
 * refused rather than silently narrowed.
 */
export function granted<P extends EgressPolicy>(
  caller: Parameters<typeof hasScope>[0],
  policy: P | undefined,
  field: string,
): P {
  const admin = hasScope(caller, "admin");
  if (policy?.grantedBy === "admin" && !admin) {
    throw new ApiError(
      "FORBIDDEN",
      `${field}.grantedBy: only an admin key makes admin policies (private ranges); leave grantedBy out`,
    );
  }
  return { ...(policy ?? ({} as P)), grantedBy: admin ? (policy?.grantedBy ?? "admin") : "tenant" };
}

function listParam(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(",")).filter(Boolean);
}

export function sandboxRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const sb = deps.sandboxes;

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes",
      tags,
      security,
      summary: "Create a sandbox",
      description:
        "Header X-Firebreak-Sandbox-Token (the FIREBREAK_SANDBOX_TOKEN given to every sandbox) records that sandbox as the parent.",
      request: body(CreateSandboxBody, false),
      responses: { 201: json(SandboxSchema, "Created and running"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = optionalBody(CreateSandboxBody, c.req.valid("json"), formatZodError);
      const rec = await sb.create(actor(caller), {
        template: b.template,
        vcpus: b.vcpus,
        memoryMib: b.memoryMib,
        timeoutMs: b.timeoutMs ?? deps.config.defaultTimeoutMs,
        envVars: b.envVars,
        metadata: b.metadata,
        parentToken: c.req.header("x-firebreak-sandbox-token"),
        networkPolicy: b.network
          ? {
              ...granted(caller, b.network.policy, "network.policy"),
              networks: [...(b.network.policy?.networks ?? []), ...(b.network.networks ?? [])],
            }
          : undefined,
      });
      return c.json(await sandboxJson(sb, rec, true, deps.ingressTokens), 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes",
      tags,
      security,
      summary: "List sandboxes (newest first)",
      request: { query: ListSandboxesQuery },
      responses: { 200: json(SandboxListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const states = listParam(q.state);
      for (const s of states) {
        if (!SANDBOX_STATES.includes(s as SandboxState)) {
          throw new ApiError("VALIDATION_FAILED", `state: ${s} is not one of ${SANDBOX_STATES.join(", ")}`);
        }
      }
      const metadata: Record<string, string> = {};
      for (const kv of Array.isArray(q.metadata) ? q.metadata : q.metadata ? [q.metadata] : []) {
        const i = kv.indexOf(":");
        if (i < 1) throw new ApiError("VALIDATION_FAILED", `metadata: "${kv}" is not key:value`);
        metadata[kv.slice(0, i)] = kv.slice(i + 1);
      }
      const page = await sb.list({
        tenantId: caller.tenant.id,
        states: states as SandboxState[],
        metadata,
        limit: q.limit,
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
      // SECURITY: a sandbox (platform grant) sees only its own descendants; the cursor still walks the tenant's list.
      const from = caller.sandbox;
      if (from) {
        const mine = await Promise.all(page.sandboxes.map((r) => isDescendant(deps.store, from.id, r)));
        page.sandboxes = page.sandboxes.filter((_, i) => mine[i]);
      }
      return c.json(
        {
          sandboxes: await Promise.all(page.sandboxes.map((r) => sandboxJson(sb, r, false))),
          nextCursor: page.nextCursor,
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}",
      tags,
      security,
      summary: "Get a sandbox",
      request: { params: SandboxIdParam },
      responses: { 200: json(SandboxSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const rec = await sb.get(caller.tenant.id, c.req.valid("param").id);
      return c.json(await sandboxJson(sb, rec, true, deps.ingressTokens), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/sandboxes/{id}",
      tags,
      security,
      summary: "Kill a sandbox (idempotent for ended ones)",
      request: { params: SandboxIdParam },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      await sb.kill(caller.tenant.id, c.req.valid("param").id, `key:${caller.keyId}`);
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/timeout",
      tags,
      security,
      summary: "Set the timeout, counted from now",
      request: { params: SandboxIdParam, ...body(TimeoutBody) },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      await sb.setTimeout(caller.tenant.id, c.req.valid("param").id, c.req.valid("json").timeoutMs);
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/pause",
      tags,
      security,
      summary: "Pause to disk (no CPU or memory held; paused sandboxes do not time out)",
      description:
        "Counts against the tenant's maxPausedMib (429 QUOTA_EXCEEDED). A sandbox paused longer than the paused retention (FIREBREAK_PAUSED_RETENTION_MS, default 7 days) is killed (endReason paused_retention). With `memory: false` only the disk is kept: the resume boots the sandbox afresh from it (files kept; processes, memory and the template's start command start over).",
      request: { params: SandboxIdParam, ...body(PauseBody, false) },
      responses: { 200: json(SandboxSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const opts = optionalBody(PauseBody, c.req.valid("json"), formatZodError);
      const rec = await sb.pause(actor(caller), c.req.valid("param").id, {
        ...(opts.memory !== undefined ? { memory: opts.memory } : {}),
      });
      return c.json(await sandboxJson(sb, rec, false), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/resume",
      tags,
      security,
      summary: "Resume a paused sandbox; its timeout restarts",
      request: { params: SandboxIdParam, ...body(ResumeBody, false) },
      responses: { 200: json(SandboxSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const rec = await sb.resume(
        actor(caller),
        c.req.valid("param").id,
        optionalBody(ResumeBody, c.req.valid("json"), formatZodError).timeoutMs,
      );
      return c.json(await sandboxJson(sb, rec, true, deps.ingressTokens), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/fork",
      tags,
      security,
      summary: "Fork a running sandbox into `count` children",
      request: { params: SandboxIdParam, ...body(ForkBody, false) },
      responses: { 201: json(SandboxListSchema.pick({ sandboxes: true }), "Children, running"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const kids = await sb.fork(
        actor(caller),
        c.req.valid("param").id,
        optionalBody(ForkBody, c.req.valid("json"), formatZodError).count,
      );
      return c.json(
        { sandboxes: await Promise.all(kids.map((k) => sandboxJson(sb, k, true, deps.ingressTokens))) },
        201,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/network",
      tags,
      security,
      summary: "The sandbox's egress policy (normalized; default: deny all)",
      request: { params: SandboxIdParam },
      responses: { 200: json(NetworkSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      return c.json({ policy: await sb.networkPolicy(caller.tenant.id, c.req.valid("param").id) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "put",
      path: "/v1/sandboxes/{id}/network",
      tags,
      security,
      summary: "Replace the egress policy of a running sandbox",
      description:
        "In force when the response is sent (one firewall transaction on the node; established flows the new policy forbids are cut). 409 CONFLICT unless the sandbox is running.",
      request: { params: SandboxIdParam, ...body(PutNetworkBody) },
      responses: { 200: json(NetworkSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const policy = await sb.updateNetworkPolicy(
        caller.tenant.id,
        c.req.valid("param").id,
        granted(caller, c.req.valid("json").policy, "policy"),
        caller.sandbox ? (caller.sandbox.networkPolicy ?? normalizePolicy({})) : undefined,
      );
      return c.json({ policy }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/events",
      tags,
      security,
      summary: "The sandbox's event log",
      request: { params: SandboxIdParam },
      responses: { 200: json(EventsSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      return c.json({ events: await sb.events(caller.tenant.id, c.req.valid("param").id) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/metrics",
      tags,
      security,
      summary: "The sandbox's CPU, memory, disk and network over time",
      description:
        "One point per sampler interval (5 s), the last hour at most, kept by the control plane that samples (a restart starts empty). Empty before the second sample and once the sandbox ended.",
      request: { params: SandboxIdParam, query: SandboxMetricsQuery },
      responses: { 200: json(SandboxMetricsSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const rec = await sb.get(caller.tenant.id, c.req.valid("param").id);
      const q = c.req.valid("query");
      const points = sb.metrics
        .range(rec.id, q.start ?? 0, q.end ?? Number.POSITIVE_INFINITY)
        .map((p) => ({ ...p, timestamp: new Date(p.at).toISOString() }));
      return c.json({ sandboxId: rec.id, points }, 200);
    },
  );
}
