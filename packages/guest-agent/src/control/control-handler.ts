import type { GuestToHostMessage, InitMessage } from "@firebreak/protocol/control";
import type { AgentState } from "../identity/agent-state.ts";

export type SystemOps = {
  syncClock: (hostEpochMs: number) => Promise<boolean>;
  mixEntropy: (base64: string) => Promise<void>;
  /** Both at once with one privileged helper (reseeds the CRNG); used when given. */
  applyClockAndEntropy?: (hostEpochMs: number, base64: string) => Promise<void>;
};

function validateInit(m: Record<string, unknown>): InitMessage {
  const str = (k: string) => {
    const v = m[k];
    if (typeof v !== "string") throw new Error(`init.${k} must be a string`);
    return v;
  };
  const envVars = m["envVars"] ?? {};
  if (typeof envVars !== "object" || envVars === null || Array.isArray(envVars)) {
    throw new Error("init.envVars must be an object");
  }
  for (const [k, v] of Object.entries(envVars)) {
    if (typeof v !== "string") throw new Error(`init.envVars.${k} must be a string`);
  }
  const accessToken = str("accessToken");
  // SECURITY: an empty token would turn request authentication off.
  if (accessToken === "") throw new Error("init.accessToken must not be empty");
  if (m["wallClockMs"] !== undefined && typeof m["wallClockMs"] !== "number") {
    throw new Error("init.wallClockMs must be a number");
  }
  if (m["entropy"] !== undefined && typeof m["entropy"] !== "string")
    throw new Error("init.entropy must be a string");
  return {
    type: "init",
    id: m["id"] as number,
    sandboxId: str("sandboxId"),
    accessToken,
    envVars: envVars as Record<string, string>,
    defaultUser: typeof m["defaultUser"] === "string" ? m["defaultUser"] : "user",
    defaultWorkdir: typeof m["defaultWorkdir"] === "string" ? m["defaultWorkdir"] : "",
    ...(typeof m["wallClockMs"] === "number" ? { wallClockMs: m["wallClockMs"] } : {}),
    ...(typeof m["entropy"] === "string" ? { entropy: m["entropy"] } : {}),
  };
}

/**
 * Handles one control-channel line and returns the reply (undefined: no reply).
 * Parse, then act: nothing here knows about the transport.
 */
export async function handleControlLine(
  line: string,
  state: AgentState,
  ops: SystemOps,
): Promise<GuestToHostMessage | undefined> {
  if (line.trim() === "") return undefined;
  let msg: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(line);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
      throw new Error("not an object");
    msg = parsed as Record<string, unknown>;
  } catch {
    return { type: "error", id: 0, message: "control message is not a JSON object" };
  }
  const id = typeof msg["id"] === "number" ? msg["id"] : 0;
  switch (msg["type"]) {
    case "ping":
      return { type: "pong", id };
    case "init": {
      try {
        const init = validateInit(msg);
        // INVARIANT: the identity is replaced before the ack, so once the host sees
        // the ack the old token is refused. Clock and entropy follow; a failure there
        // is reported as an error but the new identity stays (the old one is gone).
        state.init({
          sandboxId: init.sandboxId,
          accessToken: init.accessToken,
          envVars: init.envVars,
          defaultUser: init.defaultUser,
          defaultWorkdir: init.defaultWorkdir,
        });
        const { wallClockMs, entropy } = init;
        if (wallClockMs !== undefined && entropy !== undefined && ops.applyClockAndEntropy) {
          await ops.applyClockAndEntropy(wallClockMs, entropy);
        } else {
          if (entropy !== undefined) await ops.mixEntropy(entropy);
          if (wallClockMs !== undefined) await ops.syncClock(wallClockMs);
        }
        return { type: "ack", id };
      } catch (err) {
        return { type: "error", id, message: (err as Error).message };
      }
    }
    default:
      return { type: "error", id, message: `unknown control message type '${String(msg["type"])}'` };
  }
}
