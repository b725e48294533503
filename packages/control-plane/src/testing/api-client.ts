// Test support: calls the API (in-process or over HTTP) and checks every
// response against /openapi.json, so each test doubles as a contract test.
import { OpenApiValidator } from "./openapi-validator.ts";

export interface ApiResponse {
  status: number;
  headers: Headers;
  /** Parsed JSON (or the NDJSON lines as an array); undefined for other bodies. */
  json: any;
  text: string;
}

export interface CallOptions {
  key?: string | undefined;
  json?: unknown;
  /** A raw body (sent as is, with the given headers). */
  body?: RequestInit["body"];
  headers?: Record<string, string>;
}

export type Fetcher = (url: string, init: RequestInit) => Promise<Response>;

export class ApiClient {
  readonly #fetch: Fetcher;
  readonly base: string;
  validator: OpenApiValidator | undefined;
  key: string | undefined;

  constructor(base: string, fetcher: Fetcher = fetch, key?: string) {
    this.base = base;
    this.#fetch = fetcher;
    this.key = key;
  }

  async init(): Promise<this> {
    const res = await this.#fetch(`${this.base}/openapi.json`, {});
    this.validator = new OpenApiValidator(await res.json());
    return this;
  }

  withKey(key: string | undefined): ApiClient {
    const c = new ApiClient(this.base, this.#fetch, key);
    c.validator = this.validator;
    return c;
  }

  async call(method: string, path: string, opts: CallOptions = {}): Promise<ApiResponse> {
    const headers: Record<string, string> = { ...opts.headers };
    const key = "key" in opts ? opts.key : this.key;
    if (key) headers["authorization"] ??= `Bearer ${key}`;
    let body: RequestInit["body"] | undefined = opts.body;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers["content-type"] ??= "application/json";
    }
    const res = await this.#fetch(`${this.base}${path}`, {
      method,
      headers,
      ...(body !== undefined ? { body } : {}),
    });
    const text = await res.text();
    const ct = res.headers.get("content-type") ?? "";
    let json: unknown;
    if (ct.startsWith("application/json")) json = JSON.parse(text);
    else if (ct.startsWith("application/x-ndjson"))
      json = text
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l));
    const url = new URL(`${this.base}${path}`);
    const documented = this.validator?.route(url.pathname) !== undefined;
    // Unknown routes (404) are the only /v1 responses outside the document.
    if (this.validator && url.pathname.startsWith("/v1/") && (documented || res.status !== 404)) {
      this.validator.validate(method, url.pathname, res.status, ct, json);
    }
    return { status: res.status, headers: res.headers, json, text };
  }

  get = (path: string, opts?: CallOptions) => this.call("GET", path, opts);
  post = (path: string, json?: unknown, opts: CallOptions = {}) =>
    this.call("POST", path, { ...opts, ...(json !== undefined ? { json } : {}) });
  put = (path: string, opts?: CallOptions) => this.call("PUT", path, opts);
  delete = (path: string, opts?: CallOptions) => this.call("DELETE", path, opts);
}
