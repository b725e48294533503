/**
 * Framing of the pipe between the agent and a user's file worker:
 *
 *   u32be payloadBytes | u32be callId | u8 kind | payload
 *
 * Agent to worker: Call (JSON request), Data (upload bytes), End (upload done),
 * Cancel, Credit (u32be: how many more download chunks the agent will take).
 * Worker to agent: Hello (JSON, once, after dropping privileges), Result (JSON;
 * ends a unary call, opens a stream), Error (JSON {code, path, message}; ends a
 * call), Chunk (download bytes), Event (JSON), Ack (u32be: upload chunks
 * written), Done (JSON; ends a stream).
 */
export const FrameKind = {
  Call: 1,
  Data: 2,
  End: 3,
  Cancel: 4,
  Credit: 5,
  Result: 10,
  Error: 11,
  Chunk: 12,
  Event: 13,
  Ack: 14,
  Done: 15,
  Hello: 16,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

export const HEADER_BYTES = 9;
/** Largest payload either side accepts. */
export const MAX_PAYLOAD_BYTES = 1 << 20;
/** Largest download or upload chunk. Big chunks mean fewer round trips on an emulated CPU. */
export const CHUNK_BYTES = 256 * 1024;

export function encodeHeader(kind: FrameKind, id: number, payloadBytes: number): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES);
  out.writeUInt32BE(payloadBytes, 0);
  out.writeUInt32BE(id >>> 0, 4);
  out.writeUInt8(kind, 8);
  return out;
}

export function encodeFrame(kind: FrameKind, id: number, payload?: Uint8Array): Buffer {
  const len = payload?.byteLength ?? 0;
  const out = Buffer.allocUnsafe(HEADER_BYTES + len);
  encodeHeader(kind, id, len).copy(out, 0);
  if (payload && len > 0) out.set(payload, HEADER_BYTES);
  return out;
}

/** Writes a bulk frame without copying its payload (header and payload as one corked write). */
export function writeBulkFrame(
  out: NodeJS.WritableStream & { cork(): void; uncork(): void },
  kind: FrameKind,
  id: number,
  payload: Uint8Array,
): boolean {
  out.cork();
  out.write(encodeHeader(kind, id, payload.byteLength));
  const ok = out.write(payload);
  out.uncork();
  return ok;
}

export function encodeJson(kind: FrameKind, id: number, value: unknown): Buffer {
  return encodeFrame(kind, id, Buffer.from(JSON.stringify(value ?? null), "utf8"));
}

export function encodeCount(kind: FrameKind, id: number, n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n >>> 0, 0);
  return encodeFrame(kind, id, b);
}

/** Reads a Credit or Ack payload; undefined when malformed. */
export function decodeCount(payload: Buffer): number | undefined {
  return payload.length === 4 ? payload.readUInt32BE(0) : undefined;
}

/** Parses a JSON payload; undefined when malformed. Never throws. */
export function decodeJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString("utf8"));
  } catch {
    return undefined;
  }
}

/**
 * Incremental decoder. SECURITY: a frame announcing more than `maxPayloadBytes`
 * is a protocol violation: decoding stops and `push` returns the reason. Memory
 * held is at most one header plus one bounded payload.
 */
export class FrameDecoder {
  #onFrame: (kind: number, id: number, payload: Buffer) => void;
  #maxPayloadBytes: number;
  #header = Buffer.alloc(HEADER_BYTES);
  #headerFill = 0;
  #payload: Buffer | undefined;
  #payloadFill = 0;
  #kind = 0;
  #id = 0;
  #failed: string | undefined;

  constructor(
    onFrame: (kind: number, id: number, payload: Buffer) => void,
    maxPayloadBytes = MAX_PAYLOAD_BYTES,
  ) {
    this.#onFrame = onFrame;
    this.#maxPayloadBytes = maxPayloadBytes;
  }

  /** Feeds bytes; returns an error message on a protocol violation (then and after). */
  push(chunk: Buffer): string | undefined {
    let off = 0;
    while (!this.#failed && off < chunk.length) {
      if (this.#payload === undefined) {
        const n = Math.min(HEADER_BYTES - this.#headerFill, chunk.length - off);
        chunk.copy(this.#header, this.#headerFill, off, off + n);
        this.#headerFill += n;
        off += n;
        if (this.#headerFill < HEADER_BYTES) break;
        const len = this.#header.readUInt32BE(0);
        this.#id = this.#header.readUInt32BE(4);
        this.#kind = this.#header.readUInt8(8);
        this.#headerFill = 0;
        if (len > this.#maxPayloadBytes) {
          this.#failed = `frame of ${len} bytes exceeds the ${this.#maxPayloadBytes}-byte limit`;
          break;
        }
        this.#payload = Buffer.allocUnsafe(len);
        this.#payloadFill = 0;
      }
      const p = this.#payload;
      const n = Math.min(p.length - this.#payloadFill, chunk.length - off);
      chunk.copy(p, this.#payloadFill, off, off + n);
      this.#payloadFill += n;
      off += n;
      if (this.#payloadFill === p.length) {
        this.#payload = undefined;
        this.#onFrame(this.#kind, this.#id, p);
      }
    }
    return this.#failed;
  }
}
