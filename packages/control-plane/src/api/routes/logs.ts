// GET /v1/sandboxes/{id}/logs: a sandbox's serial console or start-command
// output, as the node keeps it (the last bytes of each). Without `follow`:
// what is there now, at most MAX_LOG_BYTES, with its offsets in headers
// (resume from X-Log-Next-Offset). With `follow`: a stream that stays open
// until the sandbox ends or the client goes.
//
// SECURITY: the bytes are the guest's: served as text/plain with nosniff,
// never interpreted; the stream is pulled from the node chunk by chunk as the
// client reads (no buffering beyond a chunk).
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { stream } from "hono/streaming";
import { z } from "zod";
import { requireScope } from "../../auth/middleware.ts";
import type { LogChunk } from "../../node/node-client.ts";
import type { AppEnv, Deps } from "../context.ts";
import { errors, security } from "../openapi-helpers.ts";
import { SandboxIdParam } from "../schemas.ts";

/** At most this many bytes in one answer without follow. */
export const MAX_LOG_BYTES = 1024 * 1024;

export const LogsQuery = z.object({
  source: z.enum(["console", "start"]).default("console").openapi({
    description:
      "console: the VM's serial console (kernel, init, agent); start: the template's start command",
  }),
  offset: z.coerce.number().int().min(0).default(0).openapi({
    description: "Byte offset to read from (bytes before the oldest one kept are skipped: X-Log-Skipped)",
  }),
  follow: z
    .enum(["true", "false", "1", "0"])
    .default("false")
    .transform((v) => v === "true" || v === "1"),
});

const TEXT_HEADERS = {
  "content-type": "text/plain; charset=utf-8",
  "x-content-type-options": "nosniff",
  "cache-control": "no-store",
};

export function logRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/logs",
      tags: ["sandboxes"],
      security,
      summary: "The sandbox's console or start-command output",
      request: { params: SandboxIdParam, query: LogsQuery },
      responses: {
        200: {
          description:
            "The bytes (text/plain); without follow, X-Log-Offset (where they start), X-Log-Next-Offset, X-Log-Skipped and X-Log-Ended",
          content: { "text/plain": { schema: z.string() } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id } = c.req.valid("param");
      const q = c.req.valid("query");
      const abort = new AbortController();
      const chunks = await deps.sandboxes.logs(
        caller.tenant.id,
        id,
        q.source,
        q.offset,
        q.follow,
        abort.signal,
      );
      if (!q.follow) {
        const parts: Uint8Array[] = [];
        let size = 0;
        let first: LogChunk | undefined;
        let next = q.offset;
        let skipped = 0;
        let ended = false;
        for await (const ch of chunks) {
          first ??= ch;
          skipped += ch.skipped;
          ended = ch.ended;
          // INVARIANT: one answer holds at most MAX_LOG_BYTES; the rest is read from X-Log-Next-Offset.
          const take = ch.data.subarray(0, Math.max(0, MAX_LOG_BYTES - size));
          parts.push(take);
          size += take.length;
          next = ch.offset + take.length;
          if (size >= MAX_LOG_BYTES) {
            ended = false;
            break;
          }
        }
        abort.abort();
        return c.body(Buffer.concat(parts), 200, {
          ...TEXT_HEADERS,
          "x-log-offset": String(first?.offset ?? q.offset),
          "x-log-next-offset": String(next),
          "x-log-skipped": String(skipped),
          "x-log-ended": String(ended),
        }) as never;
      }
      for (const [k, v] of Object.entries(TEXT_HEADERS)) c.header(k, v);
      c.header("x-accel-buffering", "no");
      return stream(c, async (s) => {
        s.onAbort(() => abort.abort());
        try {
          for await (const ch of chunks) {
            if (s.aborted) break;
            if (ch.data.length) await s.write(ch.data);
            if (ch.ended) break;
          }
        } finally {
          abort.abort();
        }
      }) as never;
    },
  );
}
