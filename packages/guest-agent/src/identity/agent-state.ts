import { tokensEqual } from "./auth.ts";

/** Identity the host gives a sandbox through `init` (control channel or POST /init). */
export type SandboxIdentity = {
  sandboxId: string;
  /** Empty string: no token required (only reachable through HTTP /init in standalone mode). */
  accessToken: string;
  envVars: Record<string, string>;
  defaultUser: string;
  /** Empty: the user's home. */
  defaultWorkdir: string;
};

export type AgentPhase = "awaiting-init" | "ready";

export type AuthResult =
  | { ok: true }
  | { ok: false; reason: "not-initialised" | "missing-token" | "bad-token" };

/**
 * The agent's one piece of mutable global state. A state machine with two phases:
 * `awaiting-init` (every request but /health is refused) and `ready`. `init`
 * moves to `ready` and may be repeated (snapshot restore): each call replaces the
 * whole identity, so the previous token stops working at once.
 */
export class AgentState {
  #identity: SandboxIdentity | undefined;

  get phase(): AgentPhase {
    return this.#identity ? "ready" : "awaiting-init";
  }

  get identity(): SandboxIdentity | undefined {
    return this.#identity;
  }

  /** Replaces the identity wholesale. */
  init(identity: SandboxIdentity): void {
    this.#identity = {
      ...identity,
      envVars: { ...identity.envVars },
      defaultUser: identity.defaultUser || "user",
    };
  }

  /** SECURITY: the single place a request's access token is checked. */
  authorise(presentedToken: string | null | undefined): AuthResult {
    const id = this.#identity;
    if (!id) return { ok: false, reason: "not-initialised" };
    if (id.accessToken === "") return { ok: true };
    if (presentedToken === null || presentedToken === undefined || presentedToken === "") {
      return { ok: false, reason: "missing-token" };
    }
    return tokensEqual(presentedToken, id.accessToken) ? { ok: true } : { ok: false, reason: "bad-token" };
  }
}

export function authFailureMessage(reason: "not-initialised" | "missing-token" | "bad-token"): string {
  switch (reason) {
    case "not-initialised":
      return "sandbox agent is not initialised yet: the host must send init before any request";
    case "missing-token":
      return "missing X-Access-Token header: pass the sandbox's envdAccessToken";
    case "bad-token":
      return "invalid X-Access-Token: it does not match this sandbox's envdAccessToken";
  }
}
