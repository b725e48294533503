// GET /v1/events: the tenant's lifecycle events as a Server-Sent Events
// stream, in the store's global order (each event's `id` is its seq; a client
// resumes with Last-Event-ID or ?after=). Read from the store, so any replica
// serves every replica's events. Tenant-scoped: a key sees its own tenant's
// events (an admin key every tenant's).
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { streamSSE } from "hono/streaming";
import { z } from "zod";
import { hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { StoredEvent } from "../../store/store.ts";
import type { AppEnv, Deps } from "../context.ts";
import { errors, security } from "../openapi-helpers.ts";

/** How often an idle stream asks the store for new events. */
const POLL_MS = 500;
/** A comment line this often keeps proxies from closing an idle stream. */
const HEARTBEAT_MS = 15_000;
/** Events read from the store per query. */
const BATCH = 200;
/** Open streams per tenant on one replica (a client that wants more reconnects with Last-Event-ID). */
export const MAX_STREAMS_PER_TENANT = 16;

export const EventsStreamQuery = z.object({
  after: z.coerce.number().int().min(0).optional().openapi({
    description: "Send events after this seq (default: only new ones). Last-Event-ID takes precedence.",
  }),
  sandboxId: z.string().max(64).optional(),
});

/** An event as the stream's `data` (JSON). */
export function eventData(e: StoredEvent) {
  return {
    seq: e.seq,
    sandboxId: e.sandboxId,
    tenantId: e.tenantId,
    at: e.at,
    type: e.type,
    detail: e.detail,
  };
}

export function eventRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const open = new Map<string, number>();

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/events",
      tags: ["sandboxes"],
      security,
      summary: "Lifecycle events as a Server-Sent Events stream",
      description:
        "Every sandbox event of the tenant (requested, scheduled, started, state, ready, kill, ended, ...) as `event: <type>`, `id: <seq>`, `data: {seq, sandboxId, tenantId, at, type, detail}`. Resume with Last-Event-ID.",
      request: { query: EventsStreamQuery },
      responses: {
        200: {
          description: "text/event-stream",
          content: { "text/event-stream": { schema: z.string() } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const lastId = c.req.header("last-event-id");
      let cursor: number;
      if (lastId !== undefined && /^\d{1,15}$/.test(lastId)) cursor = Number(lastId);
      else if (q.after !== undefined) cursor = q.after;
      else cursor = await deps.store.latestEventSeq();
      const tenantId = hasScope(caller, "admin") ? null : caller.tenant.id;
      // INVARIANT: a tenant holds at most MAX_STREAMS_PER_TENANT streams on this replica.
      const key = caller.tenant.id;
      const n = open.get(key) ?? 0;
      if (n >= MAX_STREAMS_PER_TENANT) {
        throw new ApiError(
          "RATE_LIMITED",
          `at most ${MAX_STREAMS_PER_TENANT} event streams per tenant at once; close one, or share one stream`,
          { headers: { "retry-after": "5" } },
        );
      }
      open.set(key, n + 1);
      c.header("x-accel-buffering", "no");
      return streamSSE(c, async (stream) => {
        let lastWrite = Date.now();
        try {
          while (!stream.aborted) {
            const batch = await deps.store.listTenantEvents({
              tenantId,
              afterSeq: cursor,
              limit: BATCH,
              ...(q.sandboxId ? { sandboxId: q.sandboxId } : {}),
            });
            for (const e of batch) {
              // Backpressure: each write waits for the client to take it.
              await stream.writeSSE({ id: String(e.seq), event: e.type, data: JSON.stringify(eventData(e)) });
              cursor = e.seq;
              lastWrite = Date.now();
            }
            if (batch.length === BATCH) continue;
            if (Date.now() - lastWrite >= HEARTBEAT_MS) {
              await stream.write(": keep-alive\n\n");
              lastWrite = Date.now();
            }
            await stream.sleep(POLL_MS);
          }
        } finally {
          const left = (open.get(key) ?? 1) - 1;
          if (left > 0) open.set(key, left);
          else open.delete(key);
        }
      });
    },
  );
}
