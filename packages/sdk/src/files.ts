// sandbox.files: read, write, list, stat, remove, move and make directories
// inside the sandbox.
import { toBytes } from "./bytes.ts";
import { NotFoundError } from "./errors.ts";
import type { HttpClient } from "./http.ts";
import type { EntryInfo } from "./types.ts";

export type ReadFormat = "bytes" | "text" | "stream";

export interface WriteInfo {
  path: string;
  bytes: number;
}

export class Files {
  readonly #http: HttpClient;
  readonly #base: string;

  /** @internal */
  constructor(http: HttpClient, sandboxId: string) {
    this.#http = http;
    this.#base = `/v1/sandboxes/${encodeURIComponent(sandboxId)}/files`;
  }

  /** Reads a file as bytes (the default), text (UTF-8) or a stream. */
  read(path: string, opts?: { format?: "bytes"; signal?: AbortSignal }): Promise<Uint8Array>;
  read(path: string, opts: { format: "text"; signal?: AbortSignal }): Promise<string>;
  read(path: string, opts: { format: "stream"; signal?: AbortSignal }): Promise<ReadableStream<Uint8Array>>;
  async read(
    path: string,
    opts: { format?: ReadFormat; signal?: AbortSignal } = {},
  ): Promise<Uint8Array | string | ReadableStream<Uint8Array>> {
    const format = opts.format ?? "bytes";
    const res = await this.#http.request("GET", this.#base, {
      query: { path },
      ...(opts.signal ? { signal: opts.signal } : {}),
      stream: format === "stream",
    });
    if (format === "stream") return res.body ?? new Blob([]).stream();
    if (format === "text") return res.text();
    return new Uint8Array(await res.arrayBuffer());
  }

  /** Writes a file (creating parent directories), replacing what was there. */
  async write(
    path: string,
    data: string | Uint8Array | ArrayBuffer | ReadableStream<Uint8Array>,
    opts: { signal?: AbortSignal } = {},
  ): Promise<WriteInfo> {
    return this.#http.json<WriteInfo>("PUT", this.#base, {
      query: { path },
      bytes: data instanceof ReadableStream ? data : toBytes(data),
      ...(opts.signal ? { signal: opts.signal } : {}),
      stream: data instanceof ReadableStream,
    });
  }

  /** Entries of a directory, recursing `depth` levels. */
  async list(path: string, opts: { depth?: number } = {}): Promise<EntryInfo[]> {
    const r = await this.#http.json<{ entries: EntryInfo[] }>("GET", `${this.#base}/list`, {
      query: { path, depth: opts.depth ?? 1 },
    });
    return r.entries;
  }

  /** Information about one file or directory. */
  stat(path: string): Promise<EntryInfo> {
    return this.#http.json<EntryInfo>("GET", `${this.#base}/stat`, { query: { path } });
  }

  /** Whether a path exists (false, not an error, when it does not). */
  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError && e.code === "NOT_FOUND") return false;
      throw e;
    }
  }

  /** Removes a file or directory (recursively). */
  async remove(path: string): Promise<void> {
    await this.#http.empty("DELETE", this.#base, { query: { path } });
  }

  /** Moves (renames) a file or directory. */
  move(from: string, to: string): Promise<EntryInfo> {
    return this.#http.json<EntryInfo>("POST", `${this.#base}/move`, { json: { from, to } });
  }

  /** Makes a directory and its parents. */
  makeDir(path: string): Promise<EntryInfo> {
    return this.#http.json<EntryInfo>("POST", `${this.#base}/mkdir`, { json: { path } });
  }
}
