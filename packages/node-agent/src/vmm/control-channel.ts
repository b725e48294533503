// Host side of the host-guest control channel: newline-delimited JSON over a
// virtio-serial port. It works before (and without) the guest network, so the
// node learns the agent is ready and hands it its identity over it.
// SECURITY: everything read here comes from the guest and is untrusted: lines
// are size-capped, parsed defensively, and only known message types are used.
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";

const MAX_LINE_BYTES = 64 * 1024;

export type GuestMessage =
  | { type: "ready"; agentVersion: string; uptimeMs: number }
  | { type: "ack"; id: number }
  | { type: "pong"; id: number }
  | { type: "error"; id: number; message: string };

export class ControlChannel extends EventEmitter<{ ready: [GuestMessage & { type: "ready" }]; close: [] }> {
  readonly #sock: Socket;
  #buf = "";
  #nextId = 1;
  readonly #pending = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  #closed = false;
  /** The last ready message, if one arrived. */
  lastReady: (GuestMessage & { type: "ready" }) | undefined;

  constructor(sock: Socket) {
    super();
    this.#sock = sock;
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => this.#onData(chunk));
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

  #onData(chunk: string): void {
    this.#buf += chunk;
    if (this.#buf.length > MAX_LINE_BYTES && !this.#buf.includes("\n")) {
      this.#buf = ""; // SECURITY: a guest cannot make the host buffer without bound.
      return;
    }
    let nl = this.#buf.indexOf("\n");
    while (nl >= 0) {
      const line = this.#buf.slice(0, nl);
      this.#buf = this.#buf.slice(nl + 1);
      this.#handle(line);
      nl = this.#buf.indexOf("\n");
    }
  }

  #handle(line: string): void {
    let msg: GuestMessage;
    try {
      msg = JSON.parse(line);
    } catch {
      return;
    }
    if (typeof msg !== "object" || msg === null) return;
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
        p?.reject(new Error(`guest agent: ${String(msg.message).slice(0, 500)}`));
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
