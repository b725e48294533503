// /v1/sandboxes/{id}/code: the native face of the sandbox's code interpreter
// (the service on port 49999 of code-interpreter templates, the one
// @e2b/code-interpreter talks to). Executions stream the service's NDJSON
// through unchanged; context calls answer JSON the route validates.
import type http from "node:http";
import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";
import { CODE_INTERPRETER_PORT } from "@firebreak/code-interpreter";
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import type { z } from "zod";
import { requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { SandboxService } from "../../sandboxes/service.ts";
import type { SandboxRecord } from "../../store/store.ts";
import type { AppEnv, Deps } from "../context.ts";
import { formatZodError } from "../format-zod-error.ts";
import { body, errors, json, noContent, optionalBody, security } from "../openapi-helpers.ts";
import {
  CodeContextBody,
  CodeContextListSchema,
  CodeContextParams,
  CodeContextSchema,
  CodeEventSchema,
  CodeExecuteBody,
  SandboxIdParam,
} from "../schemas.ts";

const tags = ["code"];
/** Largest JSON answer read from the guest for a context call. */
const MAX_ANSWER_BYTES = 1024 * 1024;

/**
 * Opens a request to the sandbox's code interpreter, through its node's
 * tunnel; resolves with its response head. It carries the agent's token, as an
 * E2B SDK's request does: the service reads the sandbox's env vars from the
 * agent (/envs) with it. (Not a secret from the guest: it is the guest's own.)
 */
async function request(
  sb: SandboxService,
  rec: SandboxRecord,
  method: string,
  path: string,
  payload?: unknown,
): Promise<{ res: IncomingMessage; req: http.ClientRequest }> {
  const data = payload === undefined ? undefined : Buffer.from(JSON.stringify(payload));
  const token = await sb.accessToken(rec);
  const req = sb.portRequest(rec, CODE_INTERPRETER_PORT, path, {
    method,
    headers: {
      ...(data ? { "content-type": "application/json", "content-length": data.length } : {}),
      ...(token ? { "x-access-token": token } : {}),
    },
  });
  if (!req) throw new ApiError("CONFLICT", `sandbox ${rec.id} is ${rec.state}, not running`);
  return new Promise((resolve, reject) => {
    req.on("response", (res) => {
      // The node answers 502 when nothing listens on the port.
      if (res.statusCode === 502) {
        res.resume();
        reject(
          new ApiError(
            "CONFLICT",
            `sandbox ${rec.id} serves no code interpreter on port ${CODE_INTERPRETER_PORT}; create it from the code-interpreter template`,
          ),
        );
        return;
      }
      resolve({ res, req });
    });
    req.on("error", (e: NodeJS.ErrnoException) => {
      // Nothing listens on 49999: the sandbox's template has no code interpreter.
      reject(
        e.code === "ECONNREFUSED"
          ? new ApiError(
              "CONFLICT",
              `sandbox ${rec.id} serves no code interpreter on port ${CODE_INTERPRETER_PORT}; create it from the code-interpreter template`,
            )
          : new ApiError("AGENT_ERROR", `the sandbox's code interpreter did not answer: ${e.message}`),
      );
    });
    req.end(data);
  });
}

/** Reads a guest answer. SECURITY: at most MAX_ANSWER_BYTES, then the connection is cut. */
async function readBounded(res: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res) {
    size += (c as Buffer).length;
    if (size > MAX_ANSWER_BYTES) {
      res.destroy();
      throw new ApiError("AGENT_ERROR", "the code interpreter's answer is too large");
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** The service's error answers (plain text with a status) as API errors. */
async function fail(res: IncomingMessage): Promise<never> {
  const text = (await readBounded(res).catch(() => Buffer.alloc(0))).toString("utf8").slice(0, 500).trim();
  const status = res.statusCode ?? 502;
  if (status === 404) throw new ApiError("NOT_FOUND", text || "no such code context");
  if (status === 400 || status === 413) throw new ApiError("VALIDATION_FAILED", text || "bad request");
  if (status === 429) throw new ApiError("CONFLICT", text || "the code context is busy");
  if (status === 503) throw new ApiError("AGENT_ERROR", `the code interpreter is not ready: ${text}`);
  throw new ApiError("AGENT_ERROR", `the code interpreter answered ${status}: ${text}`);
}

async function callJson<T extends z.ZodType>(
  sb: SandboxService,
  rec: SandboxRecord,
  method: string,
  path: string,
  schema: T,
  payload?: unknown,
): Promise<z.infer<T>> {
  const { res } = await request(sb, rec, method, path, payload);
  if ((res.statusCode ?? 500) >= 300) return fail(res);
  const answer = await readBounded(res);
  let parsed: unknown;
  try {
    parsed = JSON.parse(answer.toString("utf8"));
  } catch {
    throw new ApiError("AGENT_ERROR", "the code interpreter answered something that is not JSON");
  }
  const r = schema.safeParse(parsed);
  if (!r.success) throw new ApiError("AGENT_ERROR", "the code interpreter's answer has the wrong shape");
  return r.data;
}

async function noBody(sb: SandboxService, rec: SandboxRecord, method: string, path: string): Promise<void> {
  const { res } = await request(sb, rec, method, path);
  if ((res.statusCode ?? 500) >= 300) return fail(res);
  res.resume();
}

const enc = new TextEncoder();
const line = (o: unknown) => enc.encode(`${JSON.stringify(o)}\n`);

export function codeRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const sb = deps.sandboxes;
  const running = async (tenantId: string, id: string) => {
    const rec = await sb.get(tenantId, id);
    if (rec.state !== "running") {
      throw new ApiError("CONFLICT", `sandbox ${rec.id} is ${rec.state}; running code needs it running`);
    }
    return rec;
  };

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/code/execute",
      tags,
      security,
      summary: "Run code in a code context",
      description:
        "Streams application/x-ndjson, one CodeEvent per line, in E2B's code-interpreter format: number_of_executions, stdout/stderr, result (text, html, png, svg, json, data, chart, ...), error (name, value, traceback), keepalive, and end_of_execution last. Without contextId the language's default context runs it (state is kept between calls). Needs a code-interpreter template.",
      request: { params: SandboxIdParam, ...body(CodeExecuteBody) },
      responses: {
        200: {
          description: "NDJSON stream of CodeEvent",
          content: { "application/x-ndjson": { schema: CodeEventSchema } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = c.req.valid("json");
      if (b.language && b.contextId) {
        throw new ApiError("VALIDATION_FAILED", "give language or contextId, not both");
      }
      const rec = await running(caller.tenant.id, c.req.valid("param").id);
      const { res, req } = await request(sb, rec, "POST", "/execute", {
        code: b.code,
        ...(b.contextId ? { context_id: b.contextId } : {}),
        ...(b.language ? { language: b.language } : {}),
        ...(b.envVars ? { env_vars: b.envVars } : {}),
      });
      if ((res.statusCode ?? 500) >= 300) return fail(res);

      // Pull-based pass-through: the guest's bytes are never buffered here.
      const reader = (Readable.toWeb(res) as ReadableStream<Uint8Array>).getReader();
      let lastByte = 10;
      let timedOut = false;
      let onTimeout: () => void = () => {};
      const timeout = new Promise<"timeout">((resolve) => {
        onTimeout = () => resolve("timeout");
      });
      const timer =
        b.timeoutMs !== undefined
          ? setTimeout(() => {
              timedOut = true;
              onTimeout();
            }, b.timeoutMs)
          : undefined;
      const stop = () => {
        clearTimeout(timer);
        // Closing the connection makes the service interrupt the cell.
        req.destroy();
        res.destroy();
      };
      const out = new ReadableStream<Uint8Array>(
        {
          async pull(controller) {
            const read = reader.read();
            read.catch(() => {});
            const r = await Promise.race([read, timeout]).catch(() => ({ done: true, value: undefined }));
            if (r === "timeout" || timedOut) {
              stop();
              if (lastByte !== 10) controller.enqueue(enc.encode("\n"));
              controller.enqueue(
                line({
                  type: "error",
                  name: "TimeoutError",
                  value: `the execution was interrupted after ${b.timeoutMs} ms (timeoutMs)`,
                  traceback: "",
                }),
              );
              controller.enqueue(line({ type: "end_of_execution" }));
              controller.close();
              return;
            }
            if (r.done || !r.value) {
              clearTimeout(timer);
              controller.close();
              return;
            }
            if (r.value.length) lastByte = r.value[r.value.length - 1]!;
            controller.enqueue(r.value);
          },
          cancel() {
            stop();
          },
        },
        { highWaterMark: 0 },
      );
      return new Response(out, {
        status: 200,
        headers: { "content-type": "application/x-ndjson", "cache-control": "no-store" },
      }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/code/contexts",
      tags,
      security,
      summary: "Create a code context",
      description: "A new kernel with its own state, language and working directory.",
      request: { params: SandboxIdParam, ...body(CodeContextBody, false) },
      responses: { 201: json(CodeContextSchema, "Created"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = optionalBody(CodeContextBody, c.req.valid("json"), formatZodError);
      const rec = await running(caller.tenant.id, c.req.valid("param").id);
      const ctx = await callJson(sb, rec, "POST", "/contexts", CodeContextSchema, {
        ...(b.language ? { language: b.language } : {}),
        ...(b.cwd ? { cwd: b.cwd } : {}),
      });
      return c.json(ctx, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/code/contexts",
      tags,
      security,
      summary: "List code contexts",
      request: { params: SandboxIdParam },
      responses: { 200: json(CodeContextListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const rec = await running(caller.tenant.id, c.req.valid("param").id);
      const contexts = await callJson(sb, rec, "GET", "/contexts", CodeContextSchema.array().max(1000));
      return c.json({ contexts }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/sandboxes/{id}/code/contexts/{contextId}",
      tags,
      security,
      summary: "Remove a code context (its kernel stops)",
      request: { params: CodeContextParams },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const p = c.req.valid("param");
      const rec = await running(caller.tenant.id, p.id);
      await noBody(sb, rec, "DELETE", `/contexts/${encodeURIComponent(p.contextId)}`);
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/code/contexts/{contextId}/restart",
      tags,
      security,
      summary: "Restart a code context (its state is lost)",
      request: { params: CodeContextParams },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const p = c.req.valid("param");
      const rec = await running(caller.tenant.id, p.id);
      await noBody(sb, rec, "POST", `/contexts/${encodeURIComponent(p.contextId)}/restart`);
      return c.body(null, 204);
    },
  );
}
