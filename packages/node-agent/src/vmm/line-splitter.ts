// Newline-delimited lines from an untrusted byte stream (QMP from QEMU, the
// control channel from the guest), with a hard cap on the bytes held.
// SECURITY: a peer that never sends a newline cannot make the host buffer
// more than maxLineBytes: an overlong line is dropped whole (up to and
// including its newline), and its tail is never mistaken for a new line.

export class LineSplitter {
  readonly #maxLineBytes: number;
  readonly #onLine: (line: string) => void;
  #parts: Buffer[] = [];
  #bytes = 0;
  /** Inside an overlong line: drop everything up to the next newline. */
  #discarding = false;
  /** Lines dropped because they were longer than maxLineBytes. */
  droppedLines = 0;

  constructor(maxLineBytes: number, onLine: (line: string) => void) {
    this.#maxLineBytes = maxLineBytes;
    this.#onLine = onLine;
  }

  /** Feeds bytes; calls onLine for every complete line (without its `\n` or `\r\n`). */
  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) {
        this.#append(chunk.subarray(start));
        return;
      }
      this.#append(chunk.subarray(start, nl));
      start = nl + 1;
      if (this.#discarding) {
        this.#discarding = false;
        continue;
      }
      const line = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts);
      this.#parts = [];
      this.#bytes = 0;
      const end = line.length > 0 && line[line.length - 1] === 0x0d ? line.length - 1 : line.length;
      this.#onLine(line.toString("utf8", 0, end));
    }
  }

  /** Bytes held for the current, unfinished line. */
  get bufferedBytes(): number {
    return this.#bytes;
  }

  #append(b: Buffer): void {
    if (this.#discarding || b.length === 0) return;
    if (this.#bytes + b.length > this.#maxLineBytes) {
      this.#parts = [];
      this.#bytes = 0;
      this.#discarding = true;
      this.droppedLines++;
      return;
    }
    // Copy: the caller's chunk may be reused (and a subarray would pin it whole).
    this.#parts.push(Buffer.from(b));
    this.#bytes += b.length;
  }
}

/** A parsed JSON line when it is a plain object (not null, an array, a number...), else undefined. */
export function parseObjectLine(line: string): Record<string, unknown> | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
}
