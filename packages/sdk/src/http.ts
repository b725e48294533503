// The one place that speaks HTTP: auth headers, timeouts, and turning error
// responses (`{ error: { code, message, requestId } }`) into typed errors.
import type { Connection } from "./connection.ts";
import { apiError, codeForStatus, FirebreakApiError } from "./errors.ts";
import { ndjson } from "./ndjson.ts";

export type Query = Record<string, string | number | boolean | readonly string[] | undefined>;

export interface RequestOptions {
  query?: Query;
  /** A JSON body (serialized here) ... */
  json?: unknown;
  /** ... or raw bytes. */
  bytes?: Uint8Array | ReadableStream<Uint8Array>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** The response body is a stream read by the caller: no request time limit. */
  stream?: boolean;
}

export class HttpClient {
  readonly conn: Connection;

  constructor(conn: Connection) {
    this.conn = conn;
  }

  url(path: string, query?: Query): string {
    const u = new URL(this.conn.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v === undefined) continue;
      if (Array.isArray(v)) for (const item of v) u.searchParams.append(k, item);
      else u.searchParams.set(k, String(v));
    }
    return u.href;
  }

  /** Sends a request; resolves with a 2xx response, throws a typed error otherwise. */
  async request(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = {
      ...this.conn.headers,
      authorization: `Bearer ${this.conn.apiKey}`,
      ...opts.headers,
    };
    let body: RequestInit["body"] | undefined;
    if (opts.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.bytes !== undefined) {
      headers["content-type"] = "application/octet-stream";
      body = opts.bytes as RequestInit["body"];
    }
    const signals: AbortSignal[] = [];
    const timeout = opts.stream ? undefined : AbortSignal.timeout(this.conn.requestTimeoutMs);
    if (timeout) signals.push(timeout);
    if (opts.signal) signals.push(opts.signal);
    const url = this.url(path, opts.query);
    let res: Response;
    try {
      res = await this.conn.fetch(url, {
        method,
        headers,
        ...(body !== undefined ? { body } : {}),
        ...(body instanceof ReadableStream ? { duplex: "half" } : {}),
        ...(signals.length ? { signal: AbortSignal.any(signals) } : {}),
      } as RequestInit);
    } catch (e) {
      throw transportError(e, method, url, this.conn, timeout, opts.signal);
    }
    if (res.ok) return res;
    throw await errorFrom(res, method, path);
  }

  async json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(method, path, opts);
    const text = await res.text();
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new FirebreakApiError({
        code: "BAD_RESPONSE",
        status: res.status,
        requestId: res.headers.get("x-request-id") ?? undefined,
        message: `${method} ${path} answered ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`,
        cause: e,
      });
    }
  }

  /** Sends a request whose answer has no body we need (204 and friends). */
  async empty(method: string, path: string, opts: RequestOptions = {}): Promise<void> {
    const res = await this.request(method, path, opts);
    await res.body?.cancel();
  }

  /** Sends a request and yields each NDJSON line of the streamed answer. */
  async *stream<T>(method: string, path: string, opts: RequestOptions = {}): AsyncGenerator<T> {
    const res = await this.request(method, path, { ...opts, stream: true });
    if (!res.body) return;
    try {
      yield* ndjson<T>(res.body);
    } catch (e) {
      if (e instanceof FirebreakApiError) throw e;
      throw transportError(e, method, this.url(path), this.conn, undefined, opts.signal);
    }
  }
}

async function errorFrom(res: Response, method: string, path: string): Promise<FirebreakApiError> {
  const headerId = res.headers.get("x-request-id") ?? undefined;
  const text = await res.text().catch(() => "");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {}
  const err = (parsed as { error?: { code?: unknown; message?: unknown; requestId?: unknown } } | undefined)
    ?.error;
  if (err && typeof err.code === "string" && typeof err.message === "string") {
    return apiError({
      code: err.code,
      status: res.status,
      message: err.message,
      requestId: typeof err.requestId === "string" ? err.requestId : headerId,
    });
  }
  return apiError({
    code: codeForStatus(res.status),
    status: res.status,
    requestId: headerId,
    message: `${method} ${path} answered ${res.status} ${res.statusText}${text ? `: ${text.slice(0, 200)}` : ""}; is FIREBREAK_URL pointing at a Firebreak server?`,
  });
}

function transportError(
  e: unknown,
  method: string,
  url: string,
  conn: Connection,
  timeout: AbortSignal | undefined,
  signal: AbortSignal | undefined,
): FirebreakApiError {
  if (signal?.aborted) {
    return new FirebreakApiError({ code: "ABORTED", message: `${method} ${url} was aborted`, cause: e });
  }
  if (timeout?.aborted) {
    return new FirebreakApiError({
      code: "REQUEST_TIMEOUT",
      message: `${method} ${url} took longer than ${conn.requestTimeoutMs} ms; raise requestTimeoutMs or check the server's load`,
      cause: e,
    });
  }
  const cause = (e as { cause?: { code?: string; cause?: { code?: string } } }).cause;
  if (cause?.code === "UND_ERR_BODY_TIMEOUT" || cause?.cause?.code === "UND_ERR_BODY_TIMEOUT") {
    return new FirebreakApiError({
      code: "CONNECTION_FAILED",
      message: `${method} ${url}: the stream sent nothing for 300 s and Node's fetch gave up on it; a silent command may still be running (see commands.list())`,
      cause: e,
    });
  }
  return new FirebreakApiError({
    code: "CONNECTION_FAILED",
    message: `cannot reach the Firebreak server at ${conn.baseUrl} (${cause?.code ?? (e as Error).message}); start one with \`firebreak up\` or fix FIREBREAK_URL`,
    cause: e,
  });
}
