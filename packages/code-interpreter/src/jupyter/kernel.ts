// One Jupyter kernel process and the client side of its sockets: shell
// (DEALER: requests and replies), control (DEALER: shutdown, interrupt),
// iopub (SUB: outputs and status). We launch the kernel ourselves, like
// jupyter_client's KernelManager: free ports and a random key go into a
// connection file (0600, in a 0700 directory), the kernel binds them on
// 127.0.0.1, and every message is signed with the key.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import fs from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { Channel } from "./channel.ts";
import { decodeMessage, encodeMessage, type JupyterMessage, newMessage, WireError } from "./wire.ts";

type Zmq = typeof import("zeromq");
let zmq: Promise<Zmq> | undefined;
/** zeromq loads a native addon: only on first use, so importing this file is cheap. */
function loadZmq(): Promise<Zmq> {
  zmq ??= import("zeromq");
  return zmq;
}

export interface KernelLaunch {
  /** Command line; `{connection_file}` is replaced by the connection file's path. */
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  /** How to interrupt a running cell: SIGINT to the process, or interrupt_request on control. */
  interruptMode: "signal" | "message";
  /**
   * The kernel may publish a cell's outputs after it reported idle for it
   * (Deno 2.9 sends a cell's execute_result that way, now and then: seen 2 of
   * 75 cells on a loaded host). An execution then ends only when a barrier
   * request sent after the idle (kernel_info_request) is idle too.
   */
  lateOutputs?: boolean;
}

export interface KernelExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The messages of one execute request: iopub messages until the kernel is idle again. */
export interface KernelExecution {
  msgId: string;
  messages: AsyncIterable<JupyterMessage>;
  /** The shell reply (execute_reply), when one came. */
  reply: Promise<JupyterMessage | undefined>;
  /** Why the stream ended: idle (done), died (the kernel exited), closed (shut down). */
  readonly endedBy: "idle" | "died" | "closed" | undefined;
}

interface Pending {
  channel: Channel<JupyterMessage>;
  busySeen: boolean;
  /** The kernel reported idle for it; only its barrier is outstanding (lateOutputs). */
  idleSeen: boolean;
  endedBy: "idle" | "died" | "closed" | undefined;
  resolveReply: (m: JupyterMessage | undefined) => void;
}

async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<net.Server>((resolve, reject) => {
          const s = net.createServer();
          s.once("error", reject);
          s.listen(0, "127.0.0.1", () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

const TAIL_BYTES = 4096;

export class Kernel {
  readonly session = randomUUID();
  readonly #key: Buffer;
  readonly #proc: ChildProcess;
  readonly #dir: string;
  readonly #launch: KernelLaunch;
  readonly #shell: import("zeromq").Dealer;
  readonly #control: import("zeromq").Dealer;
  readonly #iopub: import("zeromq").Subscriber;
  readonly #pending = new Map<string, Pending>();
  readonly #replies = new Map<string, (m: JupyterMessage | undefined) => void>();
  /** Barrier request id -> the execution it closes (lateOutputs kernels). */
  readonly #barriers = new Map<string, string>();
  readonly exited: Promise<KernelExit>;
  #exit: KernelExit | undefined;
  #closed = false;
  #stderrTail = "";
  /** iopub messages seen (any parent): tells the start-up handshake the subscription is live. */
  #iopubSeen = 0;
  /** kernel_info replies seen (any request): the kernel answers on shell. */
  #kernelInfoReplies = 0;

  private constructor(
    z: Zmq,
    proc: ChildProcess,
    dir: string,
    key: Buffer,
    ports: { shell: number; control: number; iopub: number },
    launch: KernelLaunch,
  ) {
    this.#proc = proc;
    this.#dir = dir;
    this.#key = key;
    this.#launch = launch;
    this.exited = new Promise((resolve) => {
      proc.once("exit", (code, signal) => {
        this.#exit = { code, signal };
        this.#onExit();
        resolve(this.#exit);
      });
      proc.once("error", () => {
        if (this.#exit) return;
        this.#exit = { code: null, signal: null };
        this.#onExit();
        resolve(this.#exit);
      });
    });
    proc.stderr?.on("data", (b: Buffer) => {
      this.#stderrTail = (this.#stderrTail + b.toString("utf8")).slice(-TAIL_BYTES);
    });
    // Linger 0: closing never waits for undelivered messages to a dead kernel.
    this.#shell = new z.Dealer({ linger: 0 });
    this.#control = new z.Dealer({ linger: 0 });
    this.#iopub = new z.Subscriber({ linger: 0 });
    this.#shell.connect(`tcp://127.0.0.1:${ports.shell}`);
    this.#control.connect(`tcp://127.0.0.1:${ports.control}`);
    this.#iopub.connect(`tcp://127.0.0.1:${ports.iopub}`);
    this.#iopub.subscribe();
    void this.#readReplies(this.#shell);
    void this.#readReplies(this.#control);
    void this.#readIopub();
  }

  /** Spawns the kernel and waits until it answers on shell and publishes on iopub. */
  static async start(launch: KernelLaunch, opts: { startTimeoutMs: number }): Promise<Kernel> {
    const z = await loadZmq();
    const dir = await fs.mkdtemp(path.join(launch.env["TMPDIR"] ?? "/tmp", "fb-kernel-"));
    await fs.chmod(dir, 0o700);
    const [shell, iopub, stdin, control, hb] = await freePorts(5);
    const keyText = randomBytes(32).toString("hex");
    const connFile = path.join(dir, "connection.json");
    await fs.writeFile(
      connFile,
      JSON.stringify({
        shell_port: shell,
        iopub_port: iopub,
        stdin_port: stdin,
        control_port: control,
        hb_port: hb,
        ip: "127.0.0.1",
        key: keyText,
        transport: "tcp",
        signature_scheme: "hmac-sha256",
        kernel_name: "",
      }),
      { mode: 0o600 },
    );
    const argv = launch.argv.map((a) => a.replaceAll("{connection_file}", connFile));
    const proc = spawn(argv[0]!, argv.slice(1), {
      cwd: launch.cwd,
      env: launch.env,
      stdio: ["ignore", "ignore", "pipe"],
      // Its own process group: an interrupt or a kill reaches the kernel's children too.
      detached: true,
    });
    const kernel = new Kernel(
      z,
      proc,
      dir,
      Buffer.from(keyText),
      { shell: shell!, control: control!, iopub: iopub! },
      launch,
    );
    try {
      await kernel.#handshake(opts.startTimeoutMs);
    } catch (e) {
      await kernel.shutdown();
      throw e;
    }
    return kernel;
  }

  get pid(): number | undefined {
    return this.#proc.pid;
  }

  get alive(): boolean {
    return !this.#exit && !this.#closed;
  }

  /** The last lines the kernel wrote to stderr (for error messages). */
  get stderrTail(): string {
    return this.#stderrTail.trim().split("\n").slice(-10).join("\n");
  }

  async #handshake(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    // kernel_info_request until a reply (to any of them) arrives AND iopub
    // has delivered a message: a SUB socket misses what is published before
    // it has joined. Requests are resent rarely: a kernel still importing
    // answers its backlog in order, and a flood would keep it busy forever.
    let lastSent = 0;
    while (!(this.#kernelInfoReplies > 0 && this.#iopubSeen > 0)) {
      if (this.#exit) {
        throw new Error(
          `kernel exited during start-up (${this.#exit.signal ?? `exit code ${this.#exit.code}`})${this.stderrTail ? `: ${this.stderrTail}` : ""}`,
        );
      }
      if (Date.now() > deadline) throw new Error(`kernel did not answer within ${timeoutMs} ms`);
      const every = this.#kernelInfoReplies > 0 ? 2000 : 15_000;
      if (Date.now() - lastSent >= every) {
        lastSent = Date.now();
        const msg = newMessage("kernel_info_request", {}, this.session);
        await this.#shell.send(encodeMessage(msg, this.#key)).catch(() => {});
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Sends a request; resolves with its reply, or undefined after `timeoutMs` or when the kernel ends. */
  async request(
    socket: "shell" | "control",
    msgType: string,
    content: Record<string, unknown>,
    timeoutMs: number,
  ): Promise<JupyterMessage | undefined> {
    if (!this.alive) return undefined;
    const msg = newMessage(msgType, content, this.session);
    const reply = new Promise<JupyterMessage | undefined>((resolve) => {
      const timer = setTimeout(() => {
        this.#replies.delete(msg.header.msg_id);
        resolve(undefined);
      }, timeoutMs);
      this.#replies.set(msg.header.msg_id, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
    });
    try {
      await (socket === "shell" ? this.#shell : this.#control).send(encodeMessage(msg, this.#key));
    } catch {
      this.#replies.get(msg.header.msg_id)?.(undefined);
      this.#replies.delete(msg.header.msg_id);
    }
    return reply;
  }

  /**
   * Runs code. At most one execution should run at a time (the caller
   * queues); iopub messages of this request are delivered in order until the
   * kernel reports idle for it.
   */
  execute(code: string, opts: { silent?: boolean } = {}): KernelExecution {
    const msg = newMessage(
      "execute_request",
      {
        code,
        silent: opts.silent ?? false,
        store_history: !opts.silent,
        user_expressions: {},
        allow_stdin: false,
        // We never queue a second request in the kernel (contexts serialize),
        // so stop_on_error would abort nothing of ours on purpose; but
        // ipykernel also aborts a request that arrives just after an error
        // (an interrupted cell, and the next one sent at its idle), which
        // then ends with no output at all.
        stop_on_error: false,
      },
      this.session,
    );
    const id = msg.header.msg_id;
    let resolveReply!: (m: JupyterMessage | undefined) => void;
    const reply = new Promise<JupyterMessage | undefined>((r) => {
      resolveReply = r;
    });
    const pending: Pending = {
      channel: new Channel(64),
      busySeen: false,
      idleSeen: false,
      endedBy: undefined,
      resolveReply,
    };
    this.#pending.set(id, pending);
    this.#replies.set(id, (m) => resolveReply(m));
    if (!this.alive) {
      this.#end(id, this.#closed ? "closed" : "died");
    } else {
      this.#shell.send(encodeMessage(msg, this.#key)).catch(() => this.#end(id, "died"));
    }
    return {
      msgId: id,
      messages: pending.channel,
      reply,
      get endedBy() {
        return pending.endedBy;
      },
    };
  }

  /** Interrupts the running cell (KeyboardInterrupt in Python). */
  async interrupt(): Promise<void> {
    if (!this.alive) return;
    if (this.#launch.interruptMode === "message") {
      await this.request("control", "interrupt_request", {}, 2000);
      return;
    }
    try {
      process.kill(this.#proc.pid!, "SIGINT");
    } catch {
      // already gone
    }
  }

  /** Asks the kernel to exit, kills its process group after a grace period, closes the sockets. */
  async shutdown(graceMs = 1000): Promise<void> {
    if (this.#closed) return;
    if (!this.#exit) {
      await this.request("control", "shutdown_request", { restart: false }, graceMs);
      const exited = await Promise.race([
        this.exited.then(() => true),
        new Promise<false>((r) => setTimeout(() => r(false), graceMs)),
      ]);
      if (!exited) {
        try {
          process.kill(-this.#proc.pid!, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    await this.exited;
    await this.#dispose();
  }

  /** Ends every pending execution, closes the sockets, removes the connection file. */
  async #dispose(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#barriers.clear();
    for (const [id, p] of [...this.#pending])
      this.#end(id, p.idleSeen ? "idle" : this.#exit ? "died" : "closed");
    this.#shell.close();
    this.#control.close();
    this.#iopub.close();
    await fs.rm(this.#dir, { recursive: true, force: true });
  }

  #onExit(): void {
    // A cell that was idle and only waited for its barrier finished.
    for (const [id, p] of [...this.#pending])
      this.#end(id, p.idleSeen ? "idle" : this.#closed ? "closed" : "died");
    for (const resolve of this.#replies.values()) resolve(undefined);
    this.#replies.clear();
    // Its children (a subprocess the user started) go with it.
    try {
      process.kill(-this.#proc.pid!, "SIGKILL");
    } catch {
      // nothing left
    }
    void this.#dispose();
  }

  /**
   * Sends the request whose idle ends execution `id`: the kernel's iopub
   * messages before it (the late ones of `id`) reach `id`'s reader first.
   */
  async #barrier(id: string): Promise<void> {
    const msg = newMessage("kernel_info_request", {}, this.session);
    this.#barriers.set(msg.header.msg_id, id);
    try {
      await this.#shell.send(encodeMessage(msg, this.#key));
    } catch {
      this.#barriers.delete(msg.header.msg_id);
      this.#end(id, "idle");
    }
  }

  #end(id: string, why: "idle" | "died" | "closed"): void {
    const p = this.#pending.get(id);
    if (!p) return;
    this.#pending.delete(id);
    p.endedBy = why;
    p.channel.close();
    if (why !== "idle") p.resolveReply(undefined);
  }

  #decode(frames: Buffer[]): JupyterMessage | undefined {
    try {
      return decodeMessage(frames, this.#key);
    } catch (e) {
      // SECURITY: unsigned or malformed messages are dropped, never parsed further.
      if (!(e instanceof WireError)) throw e;
      return undefined;
    }
  }

  async #readReplies(sock: import("zeromq").Dealer): Promise<void> {
    try {
      for await (const frames of sock) {
        const msg = this.#decode(frames as Buffer[]);
        const parent = msg?.parent_header.msg_id;
        if (!msg || !parent) continue;
        if (msg.header.msg_type === "kernel_info_reply") this.#kernelInfoReplies++;
        const waiter = this.#replies.get(parent);
        if (waiter) {
          this.#replies.delete(parent);
          waiter(msg);
        }
      }
    } catch {
      // socket closed
    }
  }

  async #readIopub(): Promise<void> {
    try {
      for await (const frames of this.#iopub) {
        const msg = this.#decode(frames as Buffer[]);
        if (!msg) continue;
        this.#iopubSeen++;
        const parent = msg.parent_header.msg_id;
        const closes = parent ? this.#barriers.get(parent) : undefined;
        if (closes !== undefined) {
          if (msg.header.msg_type === "status" && msg.content["execution_state"] === "idle") {
            this.#barriers.delete(parent!);
            this.#end(closes, "idle");
          }
          continue;
        }
        const p = parent ? this.#pending.get(parent) : undefined;
        if (!p) continue;
        if (msg.header.msg_type === "status") {
          const state = msg.content["execution_state"];
          if (state === "busy") p.busySeen = true;
          if (state === "idle") {
            if (this.#launch.lateOutputs) {
              p.idleSeen = true;
              void this.#barrier(parent!);
            } else this.#end(parent!, "idle");
          }
          continue;
        }
        // Backpressure: wait while the execution's reader is behind.
        await p.channel.push(msg);
      }
    } catch {
      // socket closed
    }
  }
}
