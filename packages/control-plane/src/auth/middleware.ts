// Authentication (API key -> tenant), scopes, and per-tenant request rate limits.
import type { Context } from "hono";
import type { AppEnv, AuthedCaller } from "../api/context.ts";
import { ApiError } from "../errors.ts";
import type { SandboxRecord, Scope, Store } from "../store/store.ts";
import { hashApiKey } from "./keys.ts";

/** The key a request presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`. */
export function presentedKey(headers: Headers): string | undefined {
  const auth = headers.get("authorization");
  if (auth) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  return headers.get("x-api-key") ?? undefined;
}

export async function authenticate(store: Store, headers: Headers): Promise<AuthedCaller> {
  const key = presentedKey(headers);
  if (!key) {
    throw new ApiError(
      "UNAUTHENTICATED",
      "no API key: send Authorization: Bearer <key> (or X-API-Key: <key>); `firebreak up` printed the admin key on first start",
    );
  }
  const hash = hashApiKey(key);
  const rec = hash ? await store.findKeyByHash(hash) : undefined;
  if (!rec)
    throw new ApiError(
      "UNAUTHENTICATED",
      "unknown API key: check for typos, or create one with POST /v1/keys",
    );
  if (rec.revokedAt)
    throw new ApiError(
      "UNAUTHENTICATED",
      `API key ${rec.id} was revoked at ${rec.revokedAt}; use another key`,
    );
  const tenant = await store.getTenant(rec.tenantId);
  if (!tenant) throw new ApiError("UNAUTHENTICATED", "the key's tenant no longer exists");
  return { keyId: rec.id, tenant, scopes: rec.scopes };
}

/**
 * A sandbox calling as itself through its platform grant: the node's proxy
 * put its credential in `x-firebreak-platform-token` (the guest never sees
 * it). `verify` gives the sandbox id the credential is for.
 * SECURITY: only while the sandbox runs and its policy still has the grant;
 * the caller gets the `sandboxes` scope and nothing else.
 */
export async function authenticatePlatform(
  store: Store,
  verify: (token: string) => string | undefined,
  token: string,
): Promise<AuthedCaller> {
  const id = verify(token);
  if (!id) {
    throw new ApiError(
      "UNAUTHENTICATED",
      "the platform credential is not valid: call the API from inside a sandbox at $FIREBREAK_URL, or use an API key",
    );
  }
  const rec = await store.getSandbox(id);
  if (rec?.state !== "running" || !rec.networkPolicy?.platform) {
    throw new ApiError(
      "UNAUTHENTICATED",
      `sandbox ${id} may call the API only while it runs with network.policy.platform: true`,
    );
  }
  const tenant = await store.getTenant(rec.tenantId);
  if (!tenant) throw new ApiError("UNAUTHENTICATED", "the sandbox's tenant no longer exists");
  return { keyId: `sandbox:${id}`, tenant, scopes: ["sandboxes"], sandbox: rec };
}

/** The caller as the services take it: key, tenant, whether it is an admin key, the calling sandbox. */
export function actor(caller: AuthedCaller): {
  keyId: string;
  tenant: AuthedCaller["tenant"];
  admin: boolean;
  sandbox?: SandboxRecord;
} {
  return {
    keyId: caller.keyId,
    tenant: caller.tenant,
    admin: hasScope(caller, "admin"),
    ...(caller.sandbox ? { sandbox: caller.sandbox } : {}),
  };
}

/** INVARIANT: `admin` implies every scope. */
export function hasScope(caller: AuthedCaller, scope: Scope): boolean {
  return caller.scopes.includes("admin") || caller.scopes.includes(scope);
}

export function requireScope(c: Context<AppEnv>, scope: Scope): AuthedCaller {
  const caller = c.get("caller");
  if (!hasScope(caller, scope)) {
    throw new ApiError(
      "FORBIDDEN",
      `this key lacks the "${scope}" scope; create a key with it (POST /v1/keys)`,
    );
  }
  return caller;
}

/** Token buckets per tenant: `requestsPerMinute` tokens, refilled continuously. */
export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();

  /** Takes one token, or throws RATE_LIMITED with Retry-After. */
  take(tenantId: string, perMinute: number, now = Date.now()): void {
    const b = this.#buckets.get(tenantId) ?? { tokens: perMinute, at: now };
    b.tokens = Math.min(perMinute, b.tokens + ((now - b.at) / 60_000) * perMinute);
    b.at = now;
    this.#buckets.set(tenantId, b);
    if (b.tokens < 1) {
      const retry = Math.max(1, Math.ceil(((1 - b.tokens) / perMinute) * 60));
      throw new ApiError(
        "RATE_LIMITED",
        `rate limit: this tenant may send ${perMinute} requests per minute; retry after ${retry} s`,
        { headers: { "retry-after": String(retry) } },
      );
    }
    b.tokens -= 1;
  }
}
