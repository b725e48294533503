// Test support: a hostile stand-in for a sandbox on a loopback address of its
// own (127.x.y.z), so the control plane's proxies and routes can be attacked
// in-process: raw TCP servers that answer whatever bytes a test wants, and a
// minimal Connect (JSON) agent whose answers a test scripts.
import { randomInt } from "node:crypto";
import http from "node:http";
import net from "node:net";

/** Connect server-streaming frame: 1 flag byte, 4-byte big-endian length, JSON. */
export function frame(msg: unknown, flags = 0): Buffer {
  const body = Buffer.from(JSON.stringify(msg));
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

export const startEvent = (pid = 7) => frame({ event: { start: { pid } } });
export const stdoutEvent = (data: Buffer) => frame({ event: { data: { stdout: data.toString("base64") } } });
export const endEvent = (exitCode = 0) =>
  frame({ event: { end: { exitCode, exited: true, status: `exit status ${exitCode}` } } });
export const endOfStream = () => frame({}, 0x02);

/**
 * Writes `chunk` for as long as the peer takes it, as fast as it takes it,
 * counting the bytes; stops at `capBytes` (so a test without backpressure
 * fails instead of eating the machine's memory).
 */
export class Flood {
  written = 0;
  #lastProgress = Date.now();
  readonly closed: Promise<void>;

  constructor(out: NodeJS.WritableStream & { destroyed?: boolean }, chunk: Buffer, capBytes = 512 * 2 ** 20) {
    this.closed = new Promise((r) => out.once("close", () => r()));
    const pump = () => {
      while (!out.destroyed && this.written < capBytes) {
        this.written += chunk.length;
        this.#lastProgress = Date.now();
        if (!out.write(chunk)) {
          out.once("drain", pump);
          return;
        }
      }
    };
    out.on("error", () => {});
    pump();
  }

  /** Resolves once more than `bytes` have been written (false if not within `maxMs`): the peer reads again. */
  async wroteMoreThan(bytes: number, maxMs = 30_000): Promise<boolean> {
    const t0 = Date.now();
    while (this.written <= bytes && Date.now() - t0 < maxMs) {
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.written > bytes;
  }

  /** Resolves once the writer has been blocked for `quietMs` (or after `maxMs`): the peer stopped reading. */
  async stalled(quietMs = 300, maxMs = 10_000): Promise<void> {
    const t0 = Date.now();
    while (Date.now() - this.#lastProgress < quietMs && Date.now() - t0 < maxMs) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export type RawHandler = (sock: net.Socket, requestHead: string) => void;
export type HttpHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

export class FakeGuest {
  readonly address: string;
  readonly #servers: net.Server[] = [];
  readonly #sockets = new Set<net.Socket>();
  /** Sockets the fake guest accepted that are still open. */
  get openSockets(): number {
    return [...this.#sockets].filter((s) => !s.destroyed).length;
  }

  private constructor(address: string) {
    this.address = address;
  }

  /** A guest on a fresh 127.x.y.z (Linux routes all of 127/8 to lo). */
  static create(): FakeGuest {
    return new FakeGuest(`127.${randomInt(1, 255)}.${randomInt(0, 256)}.${randomInt(1, 255)}`);
  }

  async #listen(server: net.Server, port = 0): Promise<number> {
    server.on("connection", (s: net.Socket) => {
      this.#sockets.add(s);
      s.on("close", () => this.#sockets.delete(s));
      s.on("error", () => {});
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, this.address, () => resolve());
    });
    this.#servers.push(server);
    return (server.address() as net.AddressInfo).port;
  }

  /** A TCP server that reads a request head, then hands the socket over. Returns its port. */
  raw(handler: RawHandler): Promise<number> {
    return this.#listen(
      net.createServer((sock) => {
        let head = "";
        const onData = (b: Buffer) => {
          head += b.toString("latin1");
          const end = head.indexOf("\r\n\r\n");
          if (end < 0) return;
          sock.off("data", onData);
          handler(sock, head.slice(0, end));
        };
        sock.on("data", onData);
      }),
    );
  }

  /** An HTTP server (a well-formed transport with hostile content). Returns its port. */
  http(handler: HttpHandler): Promise<number> {
    const server = http.createServer(handler);
    server.requestTimeout = 0;
    return this.#listen(server);
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }
}
