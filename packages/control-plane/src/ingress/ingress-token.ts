// Ingress tokens: what opens a sandbox's private ports through ingress. They
// are derived, not stored: HMAC-SHA256(secret, sandbox id), with a 32-byte
// random secret kept beside the control plane's database (root, 0600, made at
// the first start). So every sandbox has one without a store migration, the
// owner can read it again at any time (GET /v1/sandboxes/{id}), and deleting
// the secret file changes every ingress token at the next start.
//
// SECURITY: the ingress token is not the envd access token. The envd token
// runs commands as root in the guest; the ingress token ends up in browsers
// (a cookie, a `?token=` link, history, Referer headers), so it opens the
// sandbox's served ports and nothing else.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import fs from "node:fs";
import path from "node:path";

/** The secret's file name, beside the database (default: the state dir). */
export const INGRESS_SECRET_FILE = "ingress-secret";
const PREFIX = "fbi_";
const SECRET_BYTES = 32;

export class IngressTokens {
  readonly #secret: Buffer;

  private constructor(secret: Buffer) {
    this.#secret = secret;
  }

  /** Tokens from a given secret (tests). */
  static fromSecret(secret: Buffer): IngressTokens {
    if (secret.length < SECRET_BYTES) throw new Error(`the ingress secret needs ${SECRET_BYTES} bytes`);
    return new IngressTokens(secret);
  }

  /**
   * Reads the secret file, creating it (0600) when it does not exist. Two
   * processes starting at once agree on one secret: it is written to a
   * temporary file and linked into place, which fails if another won.
   */
  static open(file: string): IngressTokens {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    if (!fs.existsSync(file)) {
      const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
      fs.writeFileSync(tmp, `${randomBytes(SECRET_BYTES).toString("hex")}\n`, { mode: 0o600, flag: "wx" });
      try {
        fs.linkSync(tmp, file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      } finally {
        fs.rmSync(tmp, { force: true });
      }
    }
    const st = fs.statSync(file);
    // SECURITY: whoever reads the secret can open every sandbox's private ports.
    if (st.mode & 0o077) {
      throw new Error(
        `the ingress secret ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 ${file}`,
      );
    }
    const hex = fs.readFileSync(file, "utf8").trim();
    if (!/^[0-9a-f]{64,}$/.test(hex)) {
      throw new Error(
        `the ingress secret ${file} is malformed; delete it to make a new one (every ingress token changes)`,
      );
    }
    return new IngressTokens(Buffer.from(hex, "hex"));
  }

  /** The ingress token of a sandbox: `fbi_<64 hex>`. */
  tokenFor(sandboxId: string): string {
    return PREFIX + createHmac("sha256", this.#secret).update(`ingress:${sandboxId}`).digest("hex");
  }

  /**
   * Another credential derived from the same secret for another purpose
   * (`label` separates them: the platform grant's credential, sandboxes/platform.ts).
   */
  derive(label: string, sandboxId: string): string {
    if (label === "ingress") throw new Error("the ingress label is the ingress token's own");
    return createHmac("sha256", this.#secret).update(`${label}:${sandboxId}`).digest("hex");
  }

  /** Whether `token` is this sandbox's ingress token (constant time in the token's content). */
  verify(sandboxId: string, token: string | undefined): boolean {
    if (!token) return false;
    const want = Buffer.from(this.tokenFor(sandboxId));
    const got = Buffer.from(token);
    return got.length === want.length && timingSafeEqual(got, want);
  }
}
