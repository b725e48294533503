import { type ChildProcess, spawn } from "node:child_process";
import { Readable } from "node:stream";
import { type EntryRecord, parseEntryRecord } from "../filesystem/entry-record.ts";
import type { FsExecutor } from "../filesystem/fs-executor.ts";
import { FsCode, FsOpError, toFsOpError } from "../filesystem/fs-op-error.ts";
import type { WatchEvent, WatchHandle, WatchOptions } from "../filesystem/fs-ops.ts";
import type { Metadata } from "../filesystem/xattr-metadata.ts";
import type { UserInfo } from "../identity/users.ts";
import {
  CHUNK_BYTES,
  decodeCount,
  decodeJson,
  encodeCount,
  encodeFrame,
  encodeJson,
  FrameDecoder,
  FrameKind,
  writeBulkFrame,
} from "./frames.ts";

/** Download chunks the agent lets a worker send ahead of the consumer. */
export const READ_WINDOW_CHUNKS = 4;
/** Upload chunks the agent sends before the worker acknowledges them. */
export const WRITE_WINDOW_CHUNKS = 8;
/** Most entries a worker may send for one listDir (the worker itself stops at MAX_LIST_ENTRIES). */
const MAX_LIST_ENTRIES_ACCEPTED = 20_001;

type Sink = {
  result?: (v: unknown) => void;
  event?: (v: unknown) => void;
  chunk?: (b: Buffer) => void;
  ack?: (n: number) => void;
  done?: (v: unknown) => void;
  fail: (err: FsOpError) => void;
};

export type WorkerSpawnOptions = {
  /** Script to run (fs-worker.mjs in the bundle, worker-main.ts from source). */
  entry: string;
  execArgv?: string[];
  env?: NodeJS.ProcessEnv;
  /** How long the worker may take to start and drop privileges. */
  startTimeoutMs?: number;
};

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

function parseError(v: unknown): FsOpError | undefined {
  if (!isObject(v) || typeof v["code"] !== "string") return undefined;
  const path = typeof v["path"] === "string" ? v["path"] : "";
  const message = typeof v["message"] === "string" ? v["message"].slice(0, 1000) : v["code"];
  return new FsOpError(v["code"].slice(0, 64), path, message);
}

function parseMetadata(v: unknown): Metadata | undefined {
  if (!isObject(v)) return undefined;
  const out: Metadata = {};
  for (const [k, val] of Object.entries(v)) if (typeof val === "string") out[k] = val;
  return Object.keys(out).length > 0 ? out : undefined;
}

function parseWatchEvent(v: unknown): WatchEvent | undefined {
  if (!isObject(v) || typeof v["name"] !== "string") return undefined;
  const type = v["type"];
  if (type !== 1 && type !== 2 && type !== 3 && type !== 4 && type !== 5) return undefined;
  const ev: WatchEvent = { name: v["name"], type };
  if (v["entry"] !== undefined) {
    const entry = parseEntryRecord(v["entry"]);
    if (!entry) return undefined;
    ev.entry = entry;
  }
  return ev;
}

/**
 * The agent's side of one user's file worker: an FsExecutor whose operations
 * run in that process, multiplexed over its stdin/stdout.
 * SECURITY: the worker runs as the user, so everything it sends is untrusted:
 * frames are bounded (FrameDecoder), every payload is validated, downloads are
 * pull-based (a chunk is accepted only against a credit the agent gave) and
 * uploads wait for acknowledgements. A violation kills the worker; its calls
 * fail with an error and the next request starts a new one.
 */
export class FsWorker implements FsExecutor {
  readonly user: UserInfo;
  #child: ChildProcess;
  #calls = new Map<number, Sink>();
  #nextId = 1;
  #exited: FsOpError | undefined;
  #ready: Promise<void>;
  #onExit: () => void;
  /** Calls in progress; the pool stops idle workers. */
  get activeCalls(): number {
    return this.#calls.size;
  }
  lastActiveMs = Date.now();
  pid: number | undefined;

  constructor(user: UserInfo, groups: number[], opts: WorkerSpawnOptions, onExit: () => void) {
    this.user = user;
    this.#onExit = onExit;
    this.#child = spawn(
      process.execPath,
      [
        ...(opts.execArgv ?? []),
        opts.entry,
        "--uid",
        String(user.uid),
        "--gid",
        String(user.gid),
        "--groups",
        groups.join(","),
      ],
      // The worker starts as root and drops to the user itself (it must set the
      // supplementary groups too), from a root-owned cwd, with an env we choose.
      { stdio: ["pipe", "pipe", "inherit"], cwd: "/", env: opts.env ?? {} },
    );
    this.pid = this.#child.pid;
    let hello: ((v: unknown) => void) | undefined;
    this.#ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#violation(`did not start within ${opts.startTimeoutMs ?? 60_000} ms`);
      }, opts.startTimeoutMs ?? 60_000);
      timer.unref();
      hello = (v) => {
        clearTimeout(timer);
        if (!isObject(v) || v["uid"] !== user.uid || v["gid"] !== user.gid || typeof v["pid"] !== "number") {
          reject(this.#violation("its hello does not show the expected uid and gid"));
          return;
        }
        resolve();
      };
      this.#calls.set(0, {
        result: () => {},
        fail: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
    });
    this.#ready.then(
      () => this.#calls.delete(0),
      () => {},
    );
    const decoder = new FrameDecoder((kind, id, payload) => {
      if (kind === FrameKind.Hello && id === 0 && hello) {
        const h = hello;
        hello = undefined;
        h(decodeJson(payload));
        return;
      }
      this.#onFrame(kind, id, payload);
    });
    this.#child.stdout!.on("data", (chunk: Buffer) => {
      const problem = decoder.push(chunk);
      if (problem) this.#violation(problem);
    });
    this.#child.stdout!.on("error", () => {});
    this.#child.stdin!.on("error", () => {});
    this.#child.on("error", (err) => this.#exit(`could not be started: ${err.message}`));
    this.#child.on("exit", (code, signal) =>
      this.#exit(signal ? `was killed by ${signal}` : `exited with code ${code}`),
    );
  }

  /** Resolves once the worker runs as the user; rejects if it could not start. */
  ready(): Promise<void> {
    return this.#ready;
  }

  get exited(): boolean {
    return this.#exited !== undefined;
  }

  /** Ends the worker (closing its stdin lets it exit; SIGKILL if it lingers). */
  stop(): void {
    if (this.#exited) return;
    this.#child.stdin!.end();
    setTimeout(() => {
      if (!this.#exited) this.#child.kill("SIGKILL");
    }, 2000).unref();
  }

  #exit(reason: string): void {
    if (this.#exited) return;
    this.#exited = new FsOpError(
      FsCode.WORKER,
      "",
      `the file worker of user '${this.user.name}' ${reason}; retry the request`,
    );
    const calls = [...this.#calls.values()];
    this.#calls.clear();
    for (const c of calls) c.fail(this.#exited);
    this.#onExit();
  }

  #violation(reason: string): FsOpError {
    console.error(`guest-agent: file worker of '${this.user.name}' broke protocol (${reason}); stopping it`);
    this.#child.kill("SIGKILL");
    this.#exit(`broke protocol (${reason})`);
    return this.#exited!;
  }

  #send(frame: Buffer): void {
    if (!this.#exited) this.#child.stdin!.write(frame);
  }

  #open(sink: Sink): number {
    if (this.#exited) throw this.#exited;
    let id = this.#nextId;
    this.#nextId = this.#nextId >= 0xfffffffe ? 1 : this.#nextId + 1;
    while (this.#calls.has(id)) id++;
    this.#calls.set(id, sink);
    this.lastActiveMs = Date.now();
    return id;
  }

  #close(id: number): void {
    this.#calls.delete(id);
    this.lastActiveMs = Date.now();
  }

  #onFrame(kind: number, id: number, payload: Buffer): void {
    // Frames for calls the agent already gave up on are dropped.
    const sink = this.#calls.get(id);
    if (!sink || id === 0) return;
    if (kind === FrameKind.Error) {
      this.#close(id);
      const err = parseError(decodeJson(payload));
      if (err) sink.fail(err);
      else this.#violation("malformed error");
      return;
    }
    if (kind === FrameKind.Result && sink.result) sink.result(decodeJson(payload));
    else if (kind === FrameKind.Done && sink.done) sink.done(decodeJson(payload));
    else if (kind === FrameKind.Event && sink.event) sink.event(decodeJson(payload));
    else if (kind === FrameKind.Chunk && sink.chunk) sink.chunk(payload);
    else if (kind === FrameKind.Ack && sink.ack) {
      const n = decodeCount(payload);
      if (n === undefined) this.#violation("malformed ack");
      else sink.ack(n);
    } else this.#violation(`unexpected frame kind ${kind}`);
  }

  #unary<T>(req: Record<string, unknown>, parse: (v: unknown) => T | undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = this.#open({
        result: (v) => {
          this.#close(id);
          const r = parse(v);
          if (r === undefined) reject(this.#violation(`malformed answer to ${String(req["op"])}`));
          else resolve(r);
        },
        fail: reject,
      });
      this.#send(encodeJson(FrameKind.Call, id, req));
    });
  }

  async stat(path: string): Promise<EntryRecord> {
    await this.#ready;
    return this.#unary({ op: "stat", path }, (v) => (isObject(v) ? parseEntryRecord(v["entry"]) : undefined));
  }

  async checkEnterable(path: string): Promise<void> {
    await this.#ready;
    await this.#unary({ op: "checkEnterable", path }, (v) => (isObject(v) ? true : undefined));
  }

  async makeDir(path: string): Promise<{ created: boolean; entry?: EntryRecord }> {
    await this.#ready;
    return this.#unary({ op: "makeDir", path }, (v) => {
      if (!isObject(v) || typeof v["created"] !== "boolean") return undefined;
      if (!v["created"]) return { created: false };
      const entry = parseEntryRecord(v["entry"]);
      return entry ? { created: true, entry } : undefined;
    });
  }

  async move(source: string, destination: string): Promise<EntryRecord> {
    await this.#ready;
    return this.#unary({ op: "move", source, destination }, (v) =>
      isObject(v) ? parseEntryRecord(v["entry"]) : undefined,
    );
  }

  async remove(path: string): Promise<void> {
    await this.#ready;
    await this.#unary({ op: "remove", path }, (v) => (isObject(v) ? true : undefined));
  }

  async listDir(path: string, depth: number): Promise<EntryRecord[]> {
    await this.#ready;
    return new Promise<EntryRecord[]>((resolve, reject) => {
      const entries: EntryRecord[] = [];
      const id = this.#open({
        event: (v) => {
          // A violation fails every call, this one included.
          if (!Array.isArray(v) || entries.length + v.length > MAX_LIST_ENTRIES_ACCEPTED) {
            this.#violation("malformed or oversized listing");
            return;
          }
          for (const raw of v) {
            const e = parseEntryRecord(raw);
            if (!e) {
              this.#violation("malformed entry in a listing");
              return;
            }
            entries.push(e);
          }
        },
        done: () => {
          this.#close(id);
          resolve(entries);
        },
        fail: reject,
      });
      this.#send(encodeJson(FrameKind.Call, id, { op: "listDir", path, depth }));
    });
  }

  async openRead(path: string): Promise<{ size: number; stream: Readable }> {
    await this.#ready;
    return new Promise((resolve, reject) => {
      let stream: Readable | undefined;
      let credited = 0;
      let finished = false;
      const id = this.#open({
        result: (v) => {
          const size = isObject(v) ? v["size"] : undefined;
          if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
            finished = true;
            this.#close(id);
            reject(this.#violation("malformed download answer"));
            return;
          }
          stream = new Readable({
            highWaterMark: CHUNK_BYTES,
            read: () => {
              // Pull: top the worker's credit up to the window, never beyond.
              if (finished || credited >= READ_WINDOW_CHUNKS) return;
              const more = READ_WINDOW_CHUNKS - credited;
              credited += more;
              this.#send(encodeCount(FrameKind.Credit, id, more));
            },
            destroy: (err, cb) => {
              if (!finished) {
                finished = true;
                this.#close(id);
                this.#send(encodeFrame(FrameKind.Cancel, id));
              }
              cb(err);
            },
          });
          resolve({ size, stream });
        },
        chunk: (b) => {
          if (!stream || credited <= 0) {
            this.#violation("sent a chunk it had no credit for");
            return;
          }
          credited--;
          stream.push(b);
        },
        done: () => {
          finished = true;
          this.#close(id);
          stream?.push(null);
        },
        fail: (err) => {
          finished = true;
          if (stream) stream.destroy(err);
          else reject(err);
        },
      });
      this.#send(encodeJson(FrameKind.Call, id, { op: "read", path }));
    });
  }

  /**
   * Streams `body` to the worker, at most WRITE_WINDOW_CHUNKS frames ahead of its
   * acknowledgements (the body is paused meanwhile). On failure the body is left
   * paused and unconsumed, so the caller can still answer on the same connection.
   */
  async writeFile(
    path: string,
    body: Readable,
    metadata: Metadata | undefined,
  ): Promise<Metadata | undefined> {
    await this.#ready;
    return new Promise((resolve, reject) => {
      let unacked = 0;
      let finished = false;
      const detach = () => {
        finished = true;
        body.off("data", onData);
        body.off("end", onEnd);
        body.off("error", onBodyError);
        body.pause();
      };
      // Small body chunks (TCP reads) are gathered into frames of up to CHUNK_BYTES:
      // fewer frames, fewer acknowledgements, fewer wake-ups of the worker.
      let pending: Buffer[] = [];
      let pendingBytes = 0;
      const flush = () => {
        if (pendingBytes === 0 || this.#exited) return;
        const data = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
        for (let off = 0; off < data.length; off += CHUNK_BYTES) {
          unacked++;
          writeBulkFrame(this.#child.stdin!, FrameKind.Data, id, data.subarray(off, off + CHUNK_BYTES));
        }
      };
      const onData = (data: Buffer) => {
        pending.push(data);
        pendingBytes += data.length;
        if (pendingBytes >= CHUNK_BYTES) flush();
        if (unacked >= WRITE_WINDOW_CHUNKS) body.pause();
      };
      const onEnd = () => {
        if (finished) return;
        flush();
        this.#send(encodeFrame(FrameKind.End, id));
      };
      const onBodyError = (err: Error) => {
        if (finished) return;
        detach();
        this.#close(id);
        this.#send(encodeFrame(FrameKind.Cancel, id));
        reject(toFsOpError(err, path));
      };
      const id = this.#open({
        ack: (n) => {
          unacked -= n;
          if (unacked < 0) {
            this.#violation("acknowledged more than it was sent");
            return;
          }
          if (!finished && unacked < WRITE_WINDOW_CHUNKS) body.resume();
        },
        done: (v) => {
          this.#close(id);
          detach();
          resolve(isObject(v) ? parseMetadata(v["metadata"]) : undefined);
        },
        fail: (err) => {
          detach();
          reject(err);
        },
      });
      this.#send(encodeJson(FrameKind.Call, id, { op: "write", path, metadata: metadata ?? null }));
      body.on("data", onData);
      body.on("end", onEnd);
      body.on("error", onBodyError);
      body.resume();
    });
  }

  async watch(
    path: string,
    opts: WatchOptions,
    onEvent: (ev: WatchEvent) => void,
    onError: (err: Error) => void,
  ): Promise<WatchHandle> {
    await this.#ready;
    return new Promise((resolve, reject) => {
      let started = false;
      let closed = false;
      const id = this.#open({
        result: () => {
          started = true;
          resolve({
            close: () => {
              if (closed) return;
              closed = true;
              this.#close(id);
              this.#send(encodeFrame(FrameKind.Cancel, id));
            },
          });
        },
        event: (v) => {
          const ev = parseWatchEvent(v);
          if (!ev) {
            this.#violation("malformed watch event");
            return;
          }
          if (!closed) onEvent(ev);
        },
        fail: (err) => {
          if (!started) return reject(err);
          if (closed) return;
          closed = true;
          onError(err);
        },
      });
      this.#send(encodeJson(FrameKind.Call, id, { op: "watch", path, ...opts }));
    });
  }
}
