// Host side of the host-guest control channel: newline-delimited JSON over a
// virtio-serial port. It works before (and without) the guest network, so the
// node learns the agent is ready and hands it its identity over it.
// SECURITY: everything read here comes from the guest and is untrusted: lines
// are capped in bytes (line-splitter.ts), parsed defensively, and only known
// message types with well-typed fields are used.
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { LineSplitter, parseObjectLine } from "./line-splitter.ts";

/** The longest line the host reads from the guest; longer ones are dropped whole. */
export const MAX_CONTROL_LINE_BYTES = 64 * 1024;
/** Error text from the guest is cut to this many characters. */
const MAX_ERROR_CHARS = 500;

export type GuestMessage =
  | { type: "ready"; agentVersion: string; uptimeMs: number }
  | { type: "ack"; id: number }
  | { type: "pong"; id: number }
  | { type: "error"; id: number; message: string };

export class ControlChannel extends EventEmitter<{ ready: [GuestMessage & { type: "ready" }]; close: [] }> {
  readonly #sock: Socket;
  readonly #lines: LineSplitter;
  #ignored = 0;
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  #closed = false;
  /** The last ready message, if one arrived. */
  lastReady: (GuestMessage & { type: "ready" }) | undefined;

  constructor(sock: Socket) {
    super();
    this.#sock = sock;
    this.#lines = new LineSplitter(MAX_CONTROL_LINE_BYTES, (line) => this.#handle(line));
    sock.on("data", (chunk: Buffer) => this.#lines.push(chunk));
    sock.on("close", () => this.#onClose());
    sock.on("error", () => this.#onClose());
  }

  /** Resolves when the guest agent reports ready (or already has). */
  waitReady(timeoutMs: number): Promise<GuestMessage & { type: "ready" }> {
    if (this.lastReady) return Promise.resolve(this.lastReady);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`guest agent not ready after ${timeoutMs} ms`));
      }, timeoutMs);
      const onReady = (m: GuestMessage & { type: "ready" }) => {
        cleanup();
        resolve(m);
      };
      const onClose = () => {
        cleanup();
        reject(new Error("control channel closed before the guest agent was ready"));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off("ready", onReady);
        this.off("close", onClose);
      };
      this.on("ready", onReady);
      this.on("close", onClose);
    });
  }

  /** Sends a request and resolves on the guest's ack (or pong). */
  request(msg: Record<string, unknown>, timeoutMs = 10_000): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("control channel closed"));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`guest agent did not answer ${String(msg["type"])} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#sock.write(`${JSON.stringify({ ...msg, id })}\n`);
    });
  }

  close(): void {
    this.#sock.destroy();
  }

  /** Lines dropped: too long, not JSON objects, or not a message of a known shape. */
  get ignoredMessages(): number {
    return this.#ignored + this.#lines.droppedLines;
  }

  // SECURITY: a line is acted on only when every field has the type the
  // protocol gives it; anything else is counted and dropped. Nothing here
  // throws, whatever the guest sends.
  #handle(line: string): void {
    const msg = parseGuestMessage(line);
    if (!msg) {
      this.#ignored++;
      return;
    }
    switch (msg.type) {
      case "ready":
        this.lastReady = msg;
        this.emit("ready", msg);
        break;
      case "ack":
      case "pong": {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        p?.resolve();
        break;
      }
      case "error": {
        const p = this.#pending.get(msg.id);
        this.#pending.delete(msg.id);
        p?.reject(new Error(`guest agent: ${msg.message}`));
        break;
      }
    }
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#pending.values()) p.reject(new Error("control channel closed"));
    this.#pending.clear();
    this.emit("close");
  }
}

/** One guest line as a message, or undefined when it is not one of the four the host uses. */
export function parseGuestMessage(line: string): GuestMessage | undefined {
  const m = parseObjectLine(line);
  if (!m) return undefined;
  switch (m["type"]) {
    case "ready": {
      const uptimeMs = m["uptimeMs"];
      const version = m["agentVersion"];
      if (typeof uptimeMs !== "number" || !Number.isFinite(uptimeMs) || uptimeMs < 0) return undefined;
      return {
        type: "ready",
        agentVersion: typeof version === "string" ? version.slice(0, 64) : "",
        uptimeMs,
      };
    }
    case "ack":
    case "pong":
    case "error": {
      const id = m["id"];
      if (typeof id !== "number" || !Number.isSafeInteger(id)) return undefined;
      if (m["type"] !== "error") return { type: m["type"], id };
      const message = m["message"];
      return {
        type: "error",
        id,
        message: typeof message === "string" ? message.slice(0, MAX_ERROR_CHARS) : "(no message)",
      };
    }
    default:
      return undefined;
  }
}
