/**
 * A user's file worker: a long-lived process the agent (root) starts for each
 * non-root user that makes file requests. It drops to the user's uid, gid and
 * groups before anything else, then performs the file operations the agent
 * sends over stdin, with the user's own rights, and answers on stdout
 * (`frames.ts`).
 *
 *   node fs-worker.mjs --uid <n> --gid <n> [--groups <gid,gid,...>]
 *
 * SECURITY: a uid change from root clears the process's dumpable flag, so the
 * user's own processes cannot ptrace this worker or read its memory; they can
 * only kill it (the agent then starts a new one on the next request).
 */
import { Socket } from "node:net";
import { Readable } from "node:stream";
import { parseArgs } from "node:util";
import { FsOpError, toFsOpError } from "../filesystem/fs-op-error.ts";
import * as ops from "../filesystem/fs-ops.ts";
import { loadXattr, type Metadata } from "../filesystem/xattr-metadata.ts";
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

/** listDir entries go out in frames of about this many JSON bytes. */
const LIST_BATCH_BYTES = 256 * 1024;

type Active = {
  data?: (chunk: Buffer) => void;
  end?: () => void;
  credit?: (n: number) => void;
  cancel: () => void;
};

function fail(message: string): never {
  process.stderr.write(`fs-worker: ${message}\n`);
  process.exit(70);
}

function dropPrivileges(uid: number, gid: number, groups: number[]): void {
  if (process.getuid!() === 0 && uid !== 0) {
    process.setgroups!(groups.length > 0 ? groups : [gid]);
    process.setgid!(gid);
    process.setuid!(uid);
  }
  // INVARIANT: from here on the process holds only the user's credentials.
  if (process.getuid!() !== uid || process.geteuid!() !== uid) fail(`could not become uid ${uid}`);
  if (process.getgid!() !== gid || process.getegid!() !== gid) fail(`could not become gid ${gid}`);
  if (uid !== 0) {
    let regained = false;
    try {
      process.setuid!(0);
      regained = true;
    } catch {
      // Expected: root is gone for good.
    }
    if (regained) fail("root could be regained after dropping it");
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(req: Record<string, unknown>, key: string): string {
  const v = req[key];
  if (typeof v !== "string") throw new FsOpError("EINVAL", "", `request field '${key}' must be a string`);
  return v;
}

function metadataOf(v: unknown): Metadata | undefined {
  if (!isObject(v)) return undefined;
  const out: Metadata = {};
  for (const [k, val] of Object.entries(v)) if (typeof val === "string") out[k] = val;
  return out;
}

class WorkerServer {
  #active = new Map<number, Active>();
  #out: Socket;

  constructor(out: Socket) {
    this.#out = out;
  }

  send(frame: Buffer): boolean {
    return this.#out.write(frame);
  }

  #error(id: number, err: unknown, path: string): void {
    const e = toFsOpError(err, path);
    this.#active.delete(id);
    this.send(encodeJson(FrameKind.Error, id, { code: e.code, path: e.path, message: e.message }));
  }

  onFrame(kind: number, id: number, payload: Buffer): void {
    switch (kind) {
      case FrameKind.Call:
        void this.#call(id, decodeJson(payload));
        return;
      case FrameKind.Data:
        this.#active.get(id)?.data?.(payload);
        return;
      case FrameKind.End:
        this.#active.get(id)?.end?.();
        return;
      case FrameKind.Credit: {
        const n = decodeCount(payload);
        if (n !== undefined) this.#active.get(id)?.credit?.(n);
        return;
      }
      case FrameKind.Cancel: {
        const a = this.#active.get(id);
        this.#active.delete(id);
        a?.cancel();
        return;
      }
    }
  }

  async #call(id: number, req: unknown): Promise<void> {
    let path = "";
    try {
      if (!isObject(req)) throw new FsOpError("EINVAL", "", "request is not an object");
      const op = req["op"];
      path = typeof req["path"] === "string" ? req["path"] : "";
      switch (op) {
        case "stat":
          this.send(encodeJson(FrameKind.Result, id, { entry: await ops.statEntry(str(req, "path")) }));
          return;
        case "checkEnterable":
          await ops.checkEnterable(str(req, "path"));
          this.send(encodeJson(FrameKind.Result, id, {}));
          return;
        case "makeDir":
          this.send(encodeJson(FrameKind.Result, id, await ops.makeDir(str(req, "path"))));
          return;
        case "move": {
          path = str(req, "destination");
          const entry = await ops.movePath(str(req, "source"), path);
          this.send(encodeJson(FrameKind.Result, id, { entry }));
          return;
        }
        case "remove":
          await ops.removePath(str(req, "path"));
          this.send(encodeJson(FrameKind.Result, id, {}));
          return;
        case "listDir":
          return await this.#listDir(id, str(req, "path"), Number(req["depth"]));
        case "read":
          return await this.#read(id, str(req, "path"));
        case "write":
          return await this.#write(id, str(req, "path"), metadataOf(req["metadata"]));
        case "watch":
          return await this.#watch(id, str(req, "path"), {
            recursive: req["recursive"] === true,
            includeEntry: req["includeEntry"] === true,
            allowNetworkMounts: req["allowNetworkMounts"] === true,
          });
        default:
          throw new FsOpError("EINVAL", path, `unknown operation '${String(op)}'`);
      }
    } catch (err) {
      this.#error(id, err, path);
    }
  }

  async #listDir(id: number, path: string, depth: number): Promise<void> {
    const entries = await ops.listDir(path, depth);
    // Each entry is serialised once; batches are JSON arrays of about LIST_BATCH_BYTES.
    let batch: string[] = [];
    let bytes = 0;
    const flush = () => {
      this.send(encodeFrame(FrameKind.Event, id, Buffer.from(`[${batch.join(",")}]`, "utf8")));
      batch = [];
      bytes = 0;
    };
    for (const e of entries) {
      const json = JSON.stringify(e);
      batch.push(json);
      bytes += json.length;
      if (bytes >= LIST_BATCH_BYTES) flush();
    }
    if (batch.length > 0) flush();
    this.send(encodeJson(FrameKind.Done, id, {}));
  }

  /** Download: sends a chunk only for each credit the agent gave (pull-based). */
  async #read(id: number, path: string): Promise<void> {
    const { size, stream } = await ops.openRead(path);
    let credits = 0;
    let done = false;
    const finish = () => {
      done = true;
      this.#active.delete(id);
    };
    // One frame per credit, at most CHUNK_BYTES each.
    const pump = () => {
      while (!done && credits > 0) {
        const buffered = stream.readableLength;
        const chunk = (
          buffered > 0 ? stream.read(Math.min(buffered, CHUNK_BYTES)) : stream.read()
        ) as Buffer | null;
        if (chunk === null) return;
        credits--;
        writeBulkFrame(this.#out, FrameKind.Chunk, id, chunk);
      }
    };
    stream.on("readable", pump);
    stream.on("end", () => {
      if (done) return;
      finish();
      this.send(encodeJson(FrameKind.Done, id, {}));
    });
    stream.on("error", (err) => {
      if (done) return;
      finish();
      this.#error(id, err, path);
    });
    this.#active.set(id, {
      credit: (n) => {
        credits += n;
        pump();
      },
      cancel: () => {
        done = true;
        stream.destroy();
      },
    });
    this.send(encodeJson(FrameKind.Result, id, { size }));
  }

  /** Upload: acknowledges each chunk as the file writer takes it. */
  async #write(id: number, path: string, metadata: Metadata | undefined): Promise<void> {
    const queue: Buffer[] = [];
    let ended = false;
    let wanting = false;
    const feed = () => {
      while (wanting && queue.length > 0) {
        const chunk = queue.shift()!;
        this.send(encodeCount(FrameKind.Ack, id, 1));
        wanting = body.push(chunk);
      }
      if (wanting && ended && queue.length === 0) {
        wanting = false;
        body.push(null);
      }
    };
    const body = new Readable({
      read() {
        wanting = true;
        feed();
      },
    });
    this.#active.set(id, {
      data: (chunk) => {
        queue.push(chunk);
        feed();
      },
      end: () => {
        ended = true;
        feed();
      },
      cancel: () => body.destroy(new FsOpError("ECANCELED", path, "upload cancelled")),
    });
    const stored = await ops.writeFile(path, body, metadata);
    if (!this.#active.has(id)) return;
    this.#active.delete(id);
    this.send(encodeJson(FrameKind.Done, id, { metadata: stored ?? null }));
  }

  async #watch(id: number, path: string, opts: ops.WatchOptions): Promise<void> {
    let closed = false;
    const handle = await ops.startWatch(
      path,
      opts,
      (ev) => {
        if (!closed) this.send(encodeJson(FrameKind.Event, id, ev));
      },
      (err) => {
        if (closed) return;
        closed = true;
        handle.close();
        this.#error(id, err, path);
      },
    );
    this.#active.set(id, {
      cancel: () => {
        closed = true;
        handle.close();
      },
    });
    this.send(encodeJson(FrameKind.Result, id, {}));
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { uid: { type: "string" }, gid: { type: "string" }, groups: { type: "string", default: "" } },
    strict: true,
  });
  const uid = Number(values.uid);
  const gid = Number(values.gid);
  const groups = values.groups === "" ? [] : values.groups.split(",").map(Number);
  if (!Number.isInteger(uid) || uid < 0 || !Number.isInteger(gid) || gid < 0)
    fail("--uid and --gid are required");
  if (groups.some((g) => !Number.isInteger(g) || g < 0)) fail("--groups must be a list of gids");
  // Every module is loaded while still root (the bundle's directory need not be
  // readable by the user), and before a snapshot is taken of a prestarted worker.
  await loadXattr();
  dropPrivileges(uid, gid, groups);

  // Node writes process.stdout synchronously when it is a pipe: the worker would
  // block in write(2) until the agent reads. A socket on fd 1 writes without blocking.
  const out = new Socket({ fd: 1, readable: false, writable: true });
  const server = new WorkerServer(out);
  const decoder = new FrameDecoder((kind, id, payload) => server.onFrame(kind, id, payload));
  process.stdin.on("data", (chunk: Buffer) => {
    const problem = decoder.push(chunk);
    if (problem) fail(problem);
  });
  // The agent closed the pipe (or died): nothing left to serve.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  out.on("error", () => process.exit(0));
  server.send(
    encodeJson(FrameKind.Hello, 0, {
      pid: process.pid,
      uid: process.getuid!(),
      gid: process.getgid!(),
      groups: process.getgroups!(),
    }),
  );
}

await main();
