// Where the server is and who we are: options shared by every entry point,
// resolved once against the environment.
import { FirebreakApiError } from "./errors.ts";

export interface ConnectionOptions {
  /**
   * API key (`fb_` followed by 64 hex digits).
   * @default process.env.FIREBREAK_API_KEY
   */
  apiKey?: string;
  /**
   * Base URL of the Firebreak server, e.g. `http://127.0.0.1:3000`.
   * @default process.env.FIREBREAK_URL
   */
  baseUrl?: string;
  /**
   * Token a sandbox receives from the platform; when set, sandboxes created
   * with these options record that sandbox as their parent (usage rolls up).
   * @default process.env.FIREBREAK_SANDBOX_TOKEN
   */
  sandboxToken?: string;
  /**
   * Time limit for each request that does not stream (streams end when the
   * command or build ends).
   * @default 300_000 (creating a sandbox can boot a VM from cold)
   */
  requestTimeoutMs?: number;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
  /**
   * The fetch implementation.
   * @default globalThis.fetch
   */
  fetch?: typeof fetch;
}

export interface Connection {
  apiKey: string;
  baseUrl: string;
  sandboxToken: string | undefined;
  requestTimeoutMs: number;
  headers: Record<string, string>;
  fetch: typeof fetch;
}

const env = (name: string): string | undefined => {
  const v = globalThis.process?.env?.[name];
  return v === undefined || v === "" ? undefined : v;
};

/** Fills defaults from the environment; fails with CONFIG_MISSING saying what to set. */
export function resolveConnection(opts: ConnectionOptions = {}): Connection {
  const baseUrl = opts.baseUrl ?? env("FIREBREAK_URL");
  if (!baseUrl) {
    throw new FirebreakApiError({
      code: "CONFIG_MISSING",
      message:
        "no Firebreak server URL: set FIREBREAK_URL (e.g. http://127.0.0.1:3000) or pass { baseUrl }; start a server with `firebreak up`",
    });
  }
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    throw new FirebreakApiError({
      code: "CONFIG_MISSING",
      message: `FIREBREAK_URL / baseUrl is not a URL: ${JSON.stringify(baseUrl)}; use e.g. http://127.0.0.1:3000`,
    });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new FirebreakApiError({
      code: "CONFIG_MISSING",
      message: `FIREBREAK_URL / baseUrl must be http:// or https://, got ${url.protocol}`,
    });
  }
  const apiKey = opts.apiKey ?? env("FIREBREAK_API_KEY");
  if (!apiKey) {
    throw new FirebreakApiError({
      code: "CONFIG_MISSING",
      message:
        "no Firebreak API key: set FIREBREAK_API_KEY or pass { apiKey }; `firebreak up` prints the admin key on first start, and `firebreak keys create NAME` makes more",
    });
  }
  const sandboxToken = opts.sandboxToken ?? env("FIREBREAK_SANDBOX_TOKEN");
  return {
    apiKey,
    baseUrl: url.href.replace(/\/+$/, ""),
    sandboxToken,
    requestTimeoutMs: opts.requestTimeoutMs ?? 300_000,
    headers: opts.headers ?? {},
    fetch: opts.fetch ?? globalThis.fetch.bind(globalThis),
  };
}
