// API keys and sandbox tokens: random secrets shown once, stored as sha256.
//
// A key is `fb_<64 hex>`. The same secret is also accepted as `e2b_<64 hex>`,
// because E2B SDKs refuse keys not shaped `e2b_<hex>`: E2B clients use the
// alias of their Firebreak key. Only the hex secret is hashed.
import { createHash, randomBytes } from "node:crypto";

const KEY_RE = /^(?:fb|e2b)_([0-9a-f]{64})$/;

export function newApiKey(): { key: string; hash: string } {
  const secret = randomBytes(32).toString("hex");
  return { key: `fb_${secret}`, hash: sha256(secret) };
}

/** The hash to look a presented key up by, or undefined when it is not shaped like a key. */
export function hashApiKey(presented: string): string | undefined {
  const m = KEY_RE.exec(presented.trim());
  return m ? sha256(m[1]!) : undefined;
}

/** The per-sandbox token (X-Firebreak-Sandbox-Token), given to the guest as FIREBREAK_SANDBOX_TOKEN. */
export function newSandboxToken(): { token: string; hash: string } {
  const token = `fbs_${randomBytes(32).toString("hex")}`;
  return { token, hash: sha256(token) };
}

export function sha256(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** A public id: `prefix` + 20 chars of [a-z0-9] (~103 bits); DNS-label safe (E2B host names). */
export function newId(prefix = ""): string {
  let id = prefix;
  for (const b of randomBytes(20)) id += ALPHABET[b % 36];
  return id;
}
