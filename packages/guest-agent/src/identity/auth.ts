// node:crypto is loaded on first use: loading it pulls in WebCrypto set-up, which
// costs start-up time under emulation and is not needed until the first request.
const crypto = () => process.getBuiltinModule("node:crypto");

function digest(s: string): Buffer {
  return crypto().createHash("sha256").update(s, "utf8").digest();
}

/**
 * Constant-time token comparison. Both sides are hashed first so neither the
 * content nor the length of the expected token leaks through timing.
 */
export function tokensEqual(presented: string, expected: string): boolean {
  return crypto().timingSafeEqual(digest(presented), digest(expected));
}

/**
 * User named by `Authorization: Basic base64("<user>:")` (E2B's convention: the
 * user name with an empty password). Returns undefined when absent or malformed.
 */
export function userFromAuthorization(header: string | null | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Basic\s+([A-Za-z0-9+/=_-]+)\s*$/i.exec(header);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1]!, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  const user = colon === -1 ? decoded : decoded.slice(0, colon);
  return user === "" ? undefined : user;
}

/**
 * E2B signed file URL: `v1_` + base64(sha256("path:operation:user:token[:expiration]"))
 * without padding. `operation` is "read" or "write".
 */
export function fileSignature(
  path: string,
  operation: "read" | "write",
  user: string,
  token: string,
  expiration?: number,
): string {
  const raw =
    expiration === undefined
      ? `${path}:${operation}:${user}:${token}`
      : `${path}:${operation}:${user}:${token}:${expiration}`;
  return "v1_" + crypto().createHash("sha256").update(raw, "utf8").digest("base64").replace(/=+$/, "");
}
