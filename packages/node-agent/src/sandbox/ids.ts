import { randomBytes } from "node:crypto";

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";

/** A sandbox id: 16 characters of [a-z0-9] (~82 bits), valid in interface and namespace names. */
export function newSandboxId(): string {
  const bytes = randomBytes(16);
  let id = "";
  for (const b of bytes) id += ALPHABET[b % 36];
  return id;
}

/** An access token: 256 bits, hex. */
export function newAccessToken(): string {
  return randomBytes(32).toString("hex");
}
