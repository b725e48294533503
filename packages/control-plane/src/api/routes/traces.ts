// /v1/traces/{traceId} and /v1/sandboxes/{id}/trace: the traces this control
// plane kept (the last N, in memory) with the nodes' spans of them, so a
// single-machine user needs no collector. A tenant sees its own spans only
// (telemetry/traces.ts, TraceReader.forTenant); admin keys see whole traces.
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import { TraceReader } from "../../telemetry/traces.ts";
import type { AppEnv, Deps } from "../context.ts";
import { errors, json, security } from "../openapi-helpers.ts";
import { SandboxIdParam, SandboxTracesSchema, TraceIdParam, TraceSchema } from "../schemas.ts";

/** Traces listed per sandbox at most (the newest). */
const MAX_SANDBOX_TRACES = 50;

export function traceRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const reader = deps.traces;
  if (!reader) return;
  const tags = ["traces"];

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/traces/{traceId}",
      tags,
      security,
      summary: "A trace: its spans in this control plane and on the nodes",
      description:
        "Kept in memory for the last FIREBREAK_TRACE_KEEP (500) traces; the trace id is in every answer's X-Trace-Id and traceparent headers. A tenant sees its own spans only.",
      request: { params: TraceIdParam },
      responses: { 200: json(TraceSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { traceId } = c.req.valid("param");
      const whole = await reader.trace(traceId);
      const t = whole && (hasScope(caller, "admin") ? whole : TraceReader.forTenant(whole, caller.tenant.id));
      if (!t) {
        throw new ApiError(
          "NOT_FOUND",
          `no trace ${traceId} here: only the last traces are kept, by the control plane that served them; export them with OTEL_EXPORTER_OTLP_ENDPOINT to keep them all`,
        );
      }
      return c.json(t, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/trace",
      tags,
      security,
      summary: "The traces of a sandbox's create, pause, resume, fork, kill and requests, oldest first",
      request: { params: SandboxIdParam },
      responses: { 200: json(SandboxTracesSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const rec = await deps.sandboxes.get(caller.tenant.id, c.req.valid("param").id);
      const ids = (await reader.traceIdsOf(rec)).slice(-MAX_SANDBOX_TRACES);
      const nodes = rec.nodeId ? [rec.nodeId] : [];
      const traces = [];
      for (const id of ids) {
        const whole = await reader.trace(id, nodes);
        const t =
          whole && (hasScope(caller, "admin") ? whole : TraceReader.forTenant(whole, caller.tenant.id));
        if (t) traces.push(t);
      }
      traces.sort((a, b) => a.startTime.localeCompare(b.startTime));
      return c.json({ sandboxId: rec.id, traces }, 200);
    },
  );
}
