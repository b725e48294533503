import type { IncomingMessage } from "node:http";
import type { SandboxIdentity } from "../identity/agent-state.ts";

/** Body of E2B's `POST /init`. */
export type HttpInitBody = {
  accessToken?: string;
  envVars?: Record<string, string>;
  defaultUser?: string;
  defaultWorkdir?: string;
  /** RFC 3339 host time. */
  timestamp?: string;
};

const MAX_INIT_BODY_BYTES = 1 << 20;

export async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_INIT_BODY_BYTES) throw new Error("body too large");
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  return text.trim() === "" ? {} : JSON.parse(text);
}

function stringRecord(v: unknown): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v)) throw new Error("envVars must be an object of strings");
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== "string") throw new Error(`envVars.${k} must be a string`);
    out[k] = val;
  }
  return out;
}

function optString(v: unknown, name: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw new Error(`${name} must be a string`);
  return v;
}

export function parseHttpInit(body: unknown): HttpInitBody {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new Error("body must be a JSON object");
  const b = body as Record<string, unknown>;
  return {
    accessToken: optString(b["accessToken"], "accessToken"),
    envVars: stringRecord(b["envVars"]),
    defaultUser: optString(b["defaultUser"], "defaultUser"),
    defaultWorkdir: optString(b["defaultWorkdir"], "defaultWorkdir"),
    timestamp: optString(b["timestamp"], "timestamp"),
  };
}

/**
 * E2B semantics for HTTP /init: fields that are present replace the current ones,
 * env vars are merged. (The control channel's `init` replaces everything instead.)
 */
export function mergeHttpInit(current: SandboxIdentity | undefined, body: HttpInitBody): SandboxIdentity {
  return {
    sandboxId: current?.sandboxId ?? "",
    accessToken: body.accessToken ?? current?.accessToken ?? "",
    envVars: { ...(current?.envVars ?? {}), ...(body.envVars ?? {}) },
    defaultUser: body.defaultUser || current?.defaultUser || "user",
    defaultWorkdir: body.defaultWorkdir ?? current?.defaultWorkdir ?? "",
  };
}
