// A QMP client over a connected socket. QEMU connects to a unix socket the
// node listens on (QEMU is the client: no polling for a socket to appear).
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { createInterface } from "node:readline";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  readonly qmpClass: string;
  constructor(cls: string, desc: string) {
    super(`QMP ${cls}: ${desc}`);
    this.name = "QmpError";
    this.qmpClass = cls;
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  readonly #sock: Socket;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed = false;
  readonly #greeted: Promise<void>;

  constructor(sock: Socket) {
    super();
    this.#sock = sock;
    let greet!: () => void;
    this.#greeted = new Promise((r) => {
      greet = r;
    });
    const lines = createInterface({ input: sock });
    lines.on("error", () => this.#onClose());
    lines.on("line", (line) => {
      // SECURITY: QMP output is produced by a process the guest may control.
      if (line.length > 1024 * 1024) return;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if ("QMP" in msg) greet();
      else if ("event" in msg) this.emit("event", msg as unknown as QmpEvent);
      else if ("id" in msg) {
        const p = this.#pending.get(msg["id"] as number);
        if (!p) return;
        this.#pending.delete(msg["id"] as number);
        if ("error" in msg) {
          const e = msg["error"] as { class: string; desc: string };
          p.reject(new QmpError(e.class, e.desc));
        } else p.resolve(msg["return"]);
      }
    });
    sock.on("close", () => this.#onClose());
    sock.on("error", () => this.#onClose());
  }

  /** Waits for QEMU's greeting and negotiates capabilities. */
  async handshake(): Promise<void> {
    await this.#greeted;
    await this.execute("qmp_capabilities");
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.#closed) return Promise.reject(new Error(`QMP connection closed (${command})`));
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#sock.write(`${JSON.stringify({ execute: command, arguments: args, id })}\n`);
    });
  }

  /** Resolves with the first event of that name (optionally matching a predicate). */
  waitEvent(
    name: string,
    timeoutMs: number,
    match: (e: QmpEvent) => boolean = () => true,
  ): Promise<QmpEvent> {
    const waiting = new Promise<QmpEvent>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off("event", on);
        this.off("close", onClose);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for QMP event ${name}`));
      }, timeoutMs);
      const on = (e: QmpEvent) => {
        if (e.event === name && match(e)) {
          cleanup();
          resolve(e);
        }
      };
      // QEMU gone: the event will never come.
      const onClose = () => {
        cleanup();
        reject(new Error(`QMP connection closed while waiting for ${name}`));
      };
      if (this.#closed) return onClose();
      this.on("event", on);
      this.on("close", onClose);
    });
    // Callers may never await it (an earlier step failed): never unhandled.
    waiting.catch(() => {});
    return waiting;
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    this.#sock.destroy();
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#pending.values()) p.reject(new Error("QMP connection closed"));
    this.#pending.clear();
    this.emit("close");
  }
}
