// DNS over TCP framing (RFC 1035 4.2.2, RFC 7766): every message is preceded
// by its length as two bytes, big-endian. The reader takes chunks as they
// arrive and hands out whole messages one at a time, so the caller decides
// when to take the next one (backpressure). It never throws.

/** A DNS message over TCP is at most 65,535 bytes (the length prefix is 16 bits). */
export const MAX_DNS_MESSAGE_BYTES = 65_535;

export class DnsFrameReader {
  #chunks: Buffer[] = [];
  #buffered = 0;
  /** Length of the message at the head (prefix included), once its prefix has arrived. */
  #need: number | undefined;

  /** Bytes held: at most one partial message plus what arrived after it. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /** The next whole message, or undefined until more bytes arrive. Constant time while waiting. */
  next(): Buffer | undefined {
    if (this.#need === undefined) {
      if (this.#buffered < 2) return undefined;
      const a = this.#chunks[0]!;
      const head = a.length >= 2 ? a : Buffer.concat([a, this.#chunks[1]!]);
      this.#need = 2 + head.readUInt16BE(0);
    }
    if (this.#buffered < this.#need) return undefined;
    const msg = this.#take(this.#need).subarray(2);
    this.#need = undefined;
    return msg;
  }

  #take(n: number): Buffer {
    const first = this.#chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.#chunks);
      out = all.subarray(0, n);
      this.#chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.#buffered -= n;
    return out;
  }
}

/** `msg` with its two-byte length prefix. Preconditions: msg.length <= MAX_DNS_MESSAGE_BYTES. */
export function frame(msg: Buffer): Buffer {
  const head = Buffer.alloc(2);
  head.writeUInt16BE(msg.length);
  return Buffer.concat([head, msg]);
}
