// A QMP client over a connected socket. QEMU connects to a unix socket the
// node listens on (QEMU is the client: no polling for a socket to appear).
import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { LineSplitter, parseObjectLine } from "./line-splitter.ts";

/** QMP answers are small; the largest the node asks for is a few KiB. */
export const MAX_QMP_LINE_BYTES = 1024 * 1024;

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
  #greet!: () => void;
  #ignored = 0;

  constructor(sock: Socket) {
    super();
    this.#sock = sock;
    this.#greeted = new Promise((r) => {
      this.#greet = r;
    });
    // SECURITY: QMP output is produced by a process the guest may control
    // (QEMU translates guest code under TCG). Lines are capped in bytes, and a
    // message is used only when it has the shape QMP documents: anything else
    // is dropped and counted, never thrown from this callback.
    const lines = new LineSplitter(MAX_QMP_LINE_BYTES, (line) => this.#onLine(line));
    sock.on("data", (chunk: Buffer) => lines.push(chunk));
    sock.on("close", () => this.#onClose());
    sock.on("error", () => this.#onClose());
  }

  /** Messages dropped because they were not JSON objects of a known shape. */
  get ignoredMessages(): number {
    return this.#ignored;
  }

  #onLine(line: string): void {
    const msg = parseObjectLine(line);
    if (!msg) {
      this.#ignored++;
      return;
    }
    if ("QMP" in msg) {
      this.#greet();
      return;
    }
    if ("event" in msg) {
      if (typeof msg["event"] !== "string") {
        this.#ignored++;
        return;
      }
      const data = msg["data"];
      const ts = msg["timestamp"];
      const event: QmpEvent = {
        event: msg["event"],
        ...(isObject(data) ? { data } : {}),
        ...(isObject(ts) && typeof ts["seconds"] === "number" && typeof ts["microseconds"] === "number"
          ? { timestamp: { seconds: ts["seconds"], microseconds: ts["microseconds"] } }
          : {}),
      };
      this.emit("event", event);
      return;
    }
    const id = msg["id"];
    const p = typeof id === "number" ? this.#pending.get(id) : undefined;
    if (!p) {
      this.#ignored++;
      return;
    }
    this.#pending.delete(id as number);
    if ("error" in msg) {
      const e = msg["error"];
      const cls = isObject(e) && typeof e["class"] === "string" ? e["class"].slice(0, 100) : "GenericError";
      const desc =
        isObject(e) && typeof e["desc"] === "string" ? e["desc"].slice(0, 1000) : "malformed error";
      p.reject(new QmpError(cls, desc));
    } else p.resolve(msg["return"]);
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

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
