// /v1/sandboxes/{id}/files: read, write (raw bytes, streamed), list, stat, remove, move, mkdir.

import { filesystemPb } from "@firebreak/protocol";
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import { MAX_GUEST_JSON_BYTES, readJsonBounded } from "../../relay/read-bounded.ts";
import type { AppEnv, Deps } from "../context.ts";
import { fromEnvd, fromEnvdResponse } from "../envd-errors.ts";
import { body, errors, json, noContent, security } from "../openapi-helpers.ts";
import {
  EntryListSchema,
  EntrySchema,
  ListQuery,
  MkdirBody,
  MoveBody,
  PathQuery,
  SandboxIdParam,
  UserQuery,
  WrittenSchema,
} from "../schemas.ts";

const tags = ["files"];

/** A time the guest reported, or null when it is not a representable date (toISOString would throw). */
function isoTime(ms: number): string | null {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

function entryJson(e: filesystemPb.EntryInfo | undefined) {
  if (!e) throw new ApiError("AGENT_ERROR", "the agent answered without an entry");
  const type =
    e.type === filesystemPb.FileType.DIRECTORY
      ? "dir"
      : e.type === filesystemPb.FileType.SYMLINK
        ? "symlink"
        : "file";
  const mt = e.modifiedTime;
  return {
    name: e.name,
    path: e.path,
    type: type as "file" | "dir" | "symlink",
    size: Number(e.size),
    mode: e.mode,
    modifiedAt: mt ? isoTime(Number(mt.seconds) * 1000 + Math.floor(mt.nanos / 1e6)) : null,
    ...(e.symlinkTarget ? { symlinkTarget: e.symlinkTarget } : {}),
  };
}

export function fileRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const sb = deps.sandboxes;

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/files",
      tags,
      security,
      summary: "Read a file",
      request: { params: SandboxIdParam, query: PathQuery },
      responses: {
        200: {
          description: "The file's bytes",
          content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, q.user);
      // The client's disconnect cancels the read from the guest.
      const res = await envd
        .fetch(`/files?path=${encodeURIComponent(q.path)}`, { signal: c.req.raw.signal })
        .catch((e) => {
          throw fromEnvd(e, "reading the file failed");
        });
      if (!res.ok) throw await fromEnvdResponse(res, `reading ${q.path} failed`);
      // SECURITY: streamed, never buffered: the response pulls from the guest's
      // body only as fast as the client reads (Hono waits for drain).
      return new Response(res.body, {
        status: 200,
        headers: { "content-type": "application/octet-stream" },
      }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: "put",
      path: "/v1/sandboxes/{id}/files",
      tags,
      security,
      summary: "Write a file (raw body; parents are created)",
      request: {
        params: SandboxIdParam,
        query: PathQuery,
        body: { content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } } },
      },
      responses: { 200: json(WrittenSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, q.user);
      let bytes = 0;
      const counted = (c.req.raw.body ?? new Blob([]).stream()).pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, ctl) {
            bytes += chunk.byteLength;
            ctl.enqueue(chunk);
          },
        }),
      );
      const res = await envd
        .fetch(`/files?path=${encodeURIComponent(q.path)}`, {
          method: "POST",
          headers: { "content-type": "application/octet-stream" },
          body: counted,
          duplex: "half",
          signal: c.req.raw.signal,
        } as RequestInit)
        .catch((e) => {
          throw fromEnvd(e, "writing the file failed");
        });
      if (!res.ok) throw await fromEnvdResponse(res, `writing ${q.path} failed`);
      // SECURITY: the agent's reply is read whole, so it is bounded and checked.
      const written = await readJsonBounded(res, MAX_GUEST_JSON_BYTES, `writing ${q.path}`);
      const first: unknown = Array.isArray(written) ? written[0] : undefined;
      const path =
        typeof first === "object" && first !== null && typeof (first as { path?: unknown }).path === "string"
          ? (first as { path: string }).path
          : q.path;
      return c.json({ path, bytes }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/sandboxes/{id}/files",
      tags,
      security,
      summary: "Remove a file or directory (recursively)",
      request: { params: SandboxIdParam, query: PathQuery },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, q.user);
      await envd.filesystem.remove({ path: q.path }).catch((e) => {
        throw fromEnvd(e, `removing ${q.path} failed`);
      });
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/files/list",
      tags,
      security,
      summary: "List a directory",
      request: { params: SandboxIdParam, query: ListQuery },
      responses: { 200: json(EntryListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, q.user);
      const res = await envd.filesystem.listDir({ path: q.path, depth: q.depth }).catch((e) => {
        throw fromEnvd(e, `listing ${q.path} failed`);
      });
      return c.json({ entries: res.entries.map(entryJson) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/files/stat",
      tags,
      security,
      summary: "Stat a path",
      request: { params: SandboxIdParam, query: PathQuery },
      responses: { 200: json(EntrySchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, q.user);
      const res = await envd.filesystem.stat({ path: q.path }).catch((e) => {
        throw fromEnvd(e, `stat ${q.path} failed`);
      });
      return c.json(entryJson(res.entry), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/files/move",
      tags,
      security,
      summary: "Move or rename",
      request: { params: SandboxIdParam, query: UserQuery, ...body(MoveBody) },
      responses: { 200: json(EntrySchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = c.req.valid("json");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, c.req.valid("query").user);
      const res = await envd.filesystem.move({ source: b.from, destination: b.to }).catch((e) => {
        throw fromEnvd(e, `moving ${b.from} failed`);
      });
      return c.json(entryJson(res.entry), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/files/mkdir",
      tags,
      security,
      summary: "Make a directory (and its parents)",
      request: { params: SandboxIdParam, query: UserQuery, ...body(MkdirBody) },
      responses: { 201: json(EntrySchema, "Created"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = c.req.valid("json");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, c.req.valid("query").user);
      const res = await envd.filesystem.makeDir({ path: b.path }).catch((e) => {
        throw fromEnvd(e, `making ${b.path} failed`);
      });
      return c.json(entryJson(res.entry), 201);
    },
  );
}
