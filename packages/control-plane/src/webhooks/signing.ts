// Webhook secrets and signatures, the Standard Webhooks way: the secret is
// `whsec_` + base64 of 32 random bytes; a delivery carries `webhook-id`,
// `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64
// HMAC-SHA256 over "<id>.<timestamp>.<body>" keyed with the secret's bytes>`.
// Receivers verify with @firebreak/sdk's verifyWebhook or any Standard
// Webhooks library.
import { createHmac, randomBytes } from "node:crypto";

export const SECRET_PREFIX = "whsec_";

/** A new signing secret (256 bits). */
export function newWebhookSecret(): string {
  return `${SECRET_PREFIX}${randomBytes(32).toString("base64")}`;
}

/** The key bytes of a `whsec_...` secret. */
export function secretBytes(secret: string): Buffer {
  return Buffer.from(
    secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret,
    "base64",
  );
}

/** The `webhook-signature` header value for one delivery attempt. */
export function signWebhook(secret: string, id: string, timestampSeconds: number, body: string): string {
  const mac = createHmac("sha256", secretBytes(secret))
    .update(`${id}.${timestampSeconds}.${body}`)
    .digest("base64");
  return `v1,${mac}`;
}
