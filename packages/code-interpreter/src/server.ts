// The HTTP side of the service (port 49999), E2B's code-interpreter API:
//
//   GET    /health                  200 "OK" once the preloaded kernels answer (503 before)
//   POST   /execute                 {code, context_id?, language?, env_vars?} -> NDJSON stream
//   POST   /contexts                {language?, cwd?} -> {id, language, cwd}
//   GET    /contexts                [{id, language, cwd}]
//   DELETE /contexts/{id}           204
//   POST   /contexts/{id}/restart   204
//
// Errors before the stream starts are plain text with a status (404 unknown
// context, 400 bad request), as E2B's server answers them.
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import { ContextError, type Contexts } from "./contexts.ts";
import type { OutputEvent } from "./outputs.ts";

const MAX_BODY_BYTES = 8 * 1024 * 1024;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

class BadRequest extends ContextError {
  constructor(message: string) {
    super(400, message);
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new ContextError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(c as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (!text.trim()) return {};
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new BadRequest("the body is not valid JSON");
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new BadRequest("the body must be a JSON object");
  return v as Record<string, unknown>;
}

function optString(body: Record<string, unknown>, key: string): string | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new BadRequest(`${key} must be a string`);
  return v;
}

function envVars(body: Record<string, unknown>): Record<string, string> | undefined {
  const v = body["env_vars"];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v))
    throw new BadRequest("env_vars must be an object of strings");
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v as Record<string, unknown>)) {
    if (!ENV_NAME.test(k)) throw new BadRequest(`env_vars: ${k} is not an environment variable name`);
    if (typeof val !== "string") throw new BadRequest(`env_vars.${k} must be a string`);
    out[k] = val;
  }
  return out;
}

function send(res: ServerResponse, status: number, body?: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": typeof body === "string" ? "text/plain; charset=utf-8" : "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

/** Writes one NDJSON line, waiting while the client is behind. */
function writeLine(res: ServerResponse, event: OutputEvent): Promise<void> {
  if (res.destroyed || res.writableEnded) return Promise.resolve();
  const ok = res.write(`${JSON.stringify(event)}\n`);
  if (ok) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

export interface ServiceState {
  contexts: Contexts;
  /** Set once the preloaded contexts answer. */
  ready: boolean;
  /** Why start-up failed, when it did. */
  failed?: string;
}

export function createServer(state: ServiceState, log: (line: string) => void): http.Server {
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const p = url.pathname;
    const m = req.method ?? "GET";
    if (p === "/health" && (m === "GET" || m === "HEAD")) {
      if (state.failed) return send(res, 500, `kernels failed to start: ${state.failed}`);
      return state.ready ? send(res, 200, "OK") : send(res, 503, "starting");
    }
    if (!state.ready) return send(res, 503, state.failed ?? "the code interpreter is starting");
    const contexts = state.contexts;

    if (p === "/execute" && m === "POST") {
      const body = await readJson(req);
      const code = body["code"];
      if (typeof code !== "string") throw new BadRequest("code must be a string");
      const ex = {
        code,
        contextId: optString(body, "context_id"),
        language: optString(body, "language"),
        envVars: envVars(body),
        accessToken: req.headers["x-access-token"] ? String(req.headers["x-access-token"]) : undefined,
      };
      const ctx = await contexts.resolve(ex);
      const abort = new AbortController();
      res.on("close", () => {
        if (!res.writableFinished) abort.abort();
      });
      res.writeHead(200, { "content-type": "application/x-ndjson", "cache-control": "no-store" });
      res.flushHeaders();
      try {
        await contexts.execute(ctx, ex, (e) => writeLine(res, e), abort.signal);
      } catch (e) {
        const message = e instanceof ContextError ? e.message : "internal error";
        if (!(e instanceof ContextError)) log(`execute failed: ${(e as Error).stack ?? e}`);
        await writeLine(res, { type: "error", name: "ExecutionFailed", value: message, traceback: "" });
      }
      await writeLine(res, { type: "end_of_execution" });
      res.end();
      return;
    }
    if (p === "/contexts" && m === "POST") {
      const body = await readJson(req);
      return send(res, 200, await contexts.create(optString(body, "language"), optString(body, "cwd")));
    }
    if (p === "/contexts" && m === "GET") return send(res, 200, contexts.list());
    const one = /^\/contexts\/([A-Za-z0-9-]{1,64})(\/restart)?$/.exec(p);
    if (one && m === "DELETE" && !one[2]) {
      await contexts.remove(one[1]!);
      return send(res, 204);
    }
    if (one && m === "POST" && one[2]) {
      await contexts.restart(one[1]!);
      return send(res, 204);
    }
    return send(res, 404, `no route ${m} ${p}`);
  };

  return http.createServer((req, res) => {
    route(req, res).catch((e: unknown) => {
      if (e instanceof ContextError) return send(res, e.status, e.message);
      log(`request ${req.method} ${req.url} failed: ${(e as Error)?.stack ?? e}`);
      send(res, 500, "internal error");
    });
  });
}
