// A task attempt's stdout and stderr on their way to the store: kept up to a
// limit (the head), then only the last bytes (the tail) are held; at the end
// a truncation marker and the tail are written, so the reader sees how the
// output began, that something was cut and how much, and how it ended.
//
// SECURITY: the guest writes as fast as it likes. The sink holds at most
// flushBytes of head and tailBytes of tail in memory; write() waits while a
// flush is in progress, so a slow store slows the reading of the guest's
// stream (backpressure reaches the guest), never the other way round.
import type { JobStore, LogChunk, LogStream } from "../store/job-store.ts";

export interface LogSinkOptions {
  /** Output kept from the start (both streams together). */
  headBytes: number;
  /** Output kept from the end once the head is full. */
  tailBytes: number;
  /** Buffered output is written once it reaches this ... */
  flushBytes: number;
  /** ... or this long after the first unwritten byte. */
  flushMs: number;
}

export function truncationMarker(omittedBytes: number, tailBytes: number): string {
  return `\n[firebreak: output truncated: ${omittedBytes} bytes omitted here; the last ${tailBytes} bytes follow]\n`;
}

export class LogSink {
  readonly #store: JobStore;
  readonly #key: { jobId: string; index: number; attempt: number };
  readonly #opts: LogSinkOptions;
  #pending: LogChunk[] = [];
  #pendingBytes = 0;
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();
  #failed: unknown;
  /** Bytes the command wrote. */
  total = 0;
  /** Bytes kept in the head. */
  #head = 0;
  /** The tail: the last bytes written after the head filled up. */
  #tail: { stream: "stdout" | "stderr"; data: Uint8Array }[] = [];
  #tailBytes = 0;
  /** Bytes neither in the head nor in the tail. */
  omitted = 0;

  constructor(store: JobStore, key: { jobId: string; index: number; attempt: number }, opts: LogSinkOptions) {
    this.#store = store;
    this.#key = key;
    this.#opts = opts;
  }

  #chunk(stream: LogStream, data: Uint8Array): LogChunk {
    return { seq: 0, ...this.#key, stream, data, at: new Date().toISOString() };
  }

  /** Takes output; resolves once it may take more (after a flush when the buffer is full). */
  async write(stream: "stdout" | "stderr", data: Uint8Array): Promise<void> {
    if (!data.byteLength) return;
    this.total += data.byteLength;
    const room = Math.max(0, this.#opts.headBytes - this.#head);
    if (room > 0) {
      const head = data.byteLength <= room ? data : data.subarray(0, room);
      this.#head += head.byteLength;
      // Copied: the caller's buffer may be reused.
      this.#pending.push(this.#chunk(stream, Uint8Array.from(head)));
      this.#pendingBytes += head.byteLength;
      data = data.subarray(head.byteLength);
    }
    if (data.byteLength) this.#keepTail(stream, data);
    if (this.#pendingBytes >= this.#opts.flushBytes) await this.flush();
    else if (this.#pending.length && !this.#timer) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.flush().catch(() => {});
      }, this.#opts.flushMs);
      this.#timer.unref?.();
    }
  }

  #keepTail(stream: "stdout" | "stderr", data: Uint8Array): void {
    const max = this.#opts.tailBytes;
    if (data.byteLength >= max) {
      this.omitted += this.#tailBytes + data.byteLength - max;
      this.#tail = [{ stream, data: Uint8Array.from(data.subarray(data.byteLength - max)) }];
      this.#tailBytes = max;
      return;
    }
    this.#tail.push({ stream, data: Uint8Array.from(data) });
    this.#tailBytes += data.byteLength;
    while (this.#tailBytes > max) {
      const first = this.#tail[0]!;
      const over = this.#tailBytes - max;
      if (first.data.byteLength <= over) {
        this.#tail.shift();
        this.#tailBytes -= first.data.byteLength;
        this.omitted += first.data.byteLength;
      } else {
        first.data = first.data.subarray(over);
        this.#tailBytes -= over;
        this.omitted += over;
      }
    }
  }

  /** Writes what is buffered (one store call at a time, in order). */
  flush(): Promise<void> {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const batch = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#flushing = this.#flushing.then(async () => {
      if (!batch.length || this.#failed) return;
      try {
        await this.#store.appendLogs(batch);
      } catch (e) {
        this.#failed = e; // later output is dropped; the attempt still ends
      }
    });
    return this.#flushing;
  }

  /** The end of the output: the marker and the tail when output was cut, then everything is written. */
  async close(): Promise<{ logBytes: number; logDroppedBytes: number }> {
    if (this.#tailBytes) {
      if (this.omitted > 0) {
        this.#pending.push(
          this.#chunk("truncated", new TextEncoder().encode(truncationMarker(this.omitted, this.#tailBytes))),
        );
      }
      for (const t of this.#tail) this.#pending.push(this.#chunk(t.stream, t.data));
      this.#tail = [];
      this.#tailBytes = 0;
    }
    await this.flush();
    return { logBytes: this.total, logDroppedBytes: this.omitted };
  }
}
