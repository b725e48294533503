// What a sandbox printed, for GET .../logs: its serial console (console.log
// in its directory, capped at 1 MiB by the VM driver) and the output of its
// template's start command (kept here, in a bounded ring). Everything in both
// is written by the guest: reads are bounded, nothing is parsed.
//
// Offsets are absolute byte positions in a stream that only grows, so a
// reader that follows asks for "from my last offset" and never sees a byte
// twice; bytes that fell out of the ring are reported as skipped.
import type fs from "node:fs/promises";
import path from "node:path";
import { openReadNoFollow } from "../host/safe-fs.ts";

export type LogSource = "console" | "start";
export const LOG_SOURCES: readonly LogSource[] = ["console", "start"];

/** A chunk of a log: `data` starts at `offset`; `skipped` bytes before it are gone. */
export interface LogChunk {
  offset: number;
  data: Buffer;
  skipped: number;
}

/** Largest chunk one read returns. */
export const MAX_LOG_CHUNK = 64 * 1024;

/** A byte stream that keeps its last `capacity` bytes, with absolute offsets and waiters. */
export class ByteRing {
  readonly capacity: number;
  #buf: Buffer[] = [];
  #size = 0;
  /** Absolute offset of the first byte still held. */
  #start = 0;
  #waiters = new Set<() => void>();
  closed = false;

  constructor(capacity = 256 * 1024) {
    this.capacity = capacity;
  }

  /** Bytes written so far (the end offset). */
  get end(): number {
    return this.#start + this.#size;
  }

  append(b: Uint8Array): void {
    if (!b.length || this.closed) return;
    this.#buf.push(Buffer.from(b));
    this.#size += b.length;
    // INVARIANT: at most `capacity` bytes are held, whatever the guest prints.
    while (this.#size > this.capacity) {
      const first = this.#buf[0]!;
      const over = this.#size - this.capacity;
      if (first.length <= over) {
        this.#buf.shift();
        this.#size -= first.length;
        this.#start += first.length;
      } else {
        this.#buf[0] = first.subarray(over);
        this.#size -= over;
        this.#start += over;
      }
    }
    this.#wake();
  }

  /** Up to `max` bytes from `offset` (clamped to what is held). */
  read(offset: number, max = MAX_LOG_CHUNK): LogChunk {
    const from = Math.max(offset, this.#start);
    const skipped = from - Math.max(0, offset);
    const all = Buffer.concat(this.#buf);
    const data = all.subarray(from - this.#start, from - this.#start + max);
    return { offset: from, data: Buffer.from(data), skipped: Math.max(0, skipped) };
  }

  /** Resolves when bytes arrive past `offset`, the ring closes, or `ms` pass. */
  wait(offset: number, ms: number): Promise<void> {
    if (this.end > offset || this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.#waiters.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.#waiters.add(done);
    });
  }

  close(): void {
    this.closed = true;
    this.#wake();
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }
}

/** Reads up to `max` bytes of a sandbox's console file from `offset`. */
export async function readConsole(dir: string, offset: number, max = MAX_LOG_CHUNK): Promise<LogChunk> {
  const file = path.join(dir, "console.log");
  let fh: fs.FileHandle;
  try {
    // SECURITY: the sandbox directory is root's (0710); the file is opened
    // without following links all the same.
    fh = await openReadNoFollow(file);
  } catch {
    return { offset, data: Buffer.alloc(0), skipped: 0 };
  }
  try {
    const size = (await fh.stat()).size;
    const from = Math.min(Math.max(0, offset), size);
    const want = Math.min(max, size - from);
    const data = Buffer.alloc(want);
    const { bytesRead } = want > 0 ? await fh.read(data, 0, want, from) : { bytesRead: 0 };
    return { offset: from, data: data.subarray(0, bytesRead), skipped: 0 };
  } finally {
    await fh.close();
  }
}

/** The last bytes of an ended sandbox's logs, kept a while after its files are gone. */
export interface EndedLogs {
  console: { offset: number; data: Buffer };
  start: { offset: number; data: Buffer };
  endedAt: number;
}

/** Ended sandboxes' log tails: the newest `max` sandboxes. */
export class EndedLogStore {
  readonly #max: number;
  readonly #logs = new Map<string, EndedLogs>();

  constructor(max = 256) {
    this.#max = max;
  }

  put(id: string, logs: EndedLogs): void {
    this.#logs.delete(id);
    this.#logs.set(id, logs);
    // INVARIANT: bounded: the oldest go first.
    while (this.#logs.size > this.#max) this.#logs.delete(this.#logs.keys().next().value!);
  }

  get(id: string): EndedLogs | undefined {
    return this.#logs.get(id);
  }
}

/** How much of each log an ended sandbox keeps. */
export const ENDED_LOG_TAIL = 64 * 1024;

/** The tail of a console file (for EndedLogStore). */
export async function consoleTail(dir: string): Promise<{ offset: number; data: Buffer }> {
  const file = path.join(dir, "console.log");
  try {
    const fh = await openReadNoFollow(file);
    try {
      const size = (await fh.stat()).size;
      const from = Math.max(0, size - ENDED_LOG_TAIL);
      const data = Buffer.alloc(size - from);
      await fh.read(data, 0, data.length, from);
      return { offset: from, data };
    } finally {
      await fh.close();
    }
  } catch {
    return { offset: 0, data: Buffer.alloc(0) };
  }
}
