import { type ChildProcess, spawn } from "node:child_process";
import { constants as osConstants } from "node:os";
import { describeExit } from "./exit-status.ts";

export type OutputEvent = { type: "stdout" | "stderr" | "pty"; data: Buffer };
export type EndEvent = { type: "end"; exitCode: number; exited: boolean; status: string; error?: string };
export type ProcessEvent = OutputEvent | EndEvent;

/** What the request asked for, echoed back by List. */
export type ProcessConfigEcho = { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string };

export type SpawnSpec = {
  cmd: string;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  /** Set only when the agent may switch user (it runs as root). */
  uid?: number;
  gid?: number;
  stdin: boolean;
  pty?: { cols: number; rows: number };
  tag?: string;
  config: ProcessConfigEcho;
};

/** After the process exits, how long to wait for its pipes to drain (background children may hold them). */
const PIPE_DRAIN_GRACE_MS = 1000;

type Listener = (ev: ProcessEvent) => void;

type PtyHandle = {
  pid: number;
  write(data: string | Buffer): void;
  resize(cols: number, rows: number): void;
  kill(signal?: string): void;
  onData(cb: (d: string | Buffer) => void): unknown;
  onExit(cb: (e: { exitCode: number; signal?: number }) => void): unknown;
};

export class ProcessInputError extends Error {}

/**
 * One process started by the agent, with fan-out of its events to any number of
 * subscribers (the Start stream plus Connect streams). Events are not replayed: a
 * subscriber sees what happens after it subscribes.
 */
export class ManagedProcess {
  readonly pid: number;
  readonly tag: string | undefined;
  readonly config: ProcessConfigEcho;
  readonly isPty: boolean;
  #listeners = new Set<Listener>();
  #end: EndEvent | undefined;
  #child: ChildProcess | undefined;
  #pty: PtyHandle | undefined;
  #stdinOpen: boolean;
  #onEnded: (p: ManagedProcess) => void;

  private constructor(
    pid: number,
    spec: SpawnSpec,
    handles: { child?: ChildProcess; pty?: PtyHandle },
    onEnded: (p: ManagedProcess) => void,
  ) {
    this.pid = pid;
    this.tag = spec.tag;
    this.config = spec.config;
    this.isPty = handles.pty !== undefined;
    this.#child = handles.child;
    this.#pty = handles.pty;
    this.#stdinOpen = spec.stdin || this.isPty;
    this.#onEnded = onEnded;
  }

  /**
   * Spawns with pipes. The child gets its own session and process group
   * (detached) so signals reach the whole command, not just the shell.
   * Throws if the executable cannot be started.
   */
  static async spawnPiped(spec: SpawnSpec, onEnded: (p: ManagedProcess) => void): Promise<ManagedProcess> {
    const child = spawn(spec.cmd, spec.args, {
      cwd: spec.cwd,
      env: spec.env,
      uid: spec.uid,
      gid: spec.gid,
      detached: true,
      stdio: [spec.stdin ? "pipe" : "ignore", "pipe", "pipe"],
    });
    if (child.pid === undefined) {
      const err = await new Promise<Error>((resolve) => child.once("error", resolve));
      throw err;
    }
    const proc = new ManagedProcess(child.pid, spec, { child }, onEnded);
    proc.#wirePiped(child);
    return proc;
  }

  /** Spawns on a pseudo-terminal (node-pty, loaded on first use to keep start-up light). */
  static async spawnPty(spec: SpawnSpec, onEnded: (p: ManagedProcess) => void): Promise<ManagedProcess> {
    const ptyLib = await import("@lydell/node-pty");
    const spawnPty = (ptyLib.spawn ?? (ptyLib as unknown as { default: typeof ptyLib }).default.spawn) as (
      file: string,
      args: string[],
      opts: Record<string, unknown>,
    ) => PtyHandle;
    const size = spec.pty ?? { cols: 80, rows: 24 };
    const term = spawnPty(spec.cmd, spec.args, {
      name: spec.env["TERM"] ?? "xterm-256color",
      cols: Math.max(1, size.cols),
      rows: Math.max(1, size.rows),
      cwd: spec.cwd,
      env: spec.env,
      uid: spec.uid,
      gid: spec.gid,
      encoding: null,
    });
    const proc = new ManagedProcess(term.pid, spec, { pty: term }, onEnded);
    term.onData((d) => proc.#emit({ type: "pty", data: typeof d === "string" ? Buffer.from(d) : d }));
    term.onExit(({ exitCode, signal }) => {
      const sigName = signal ? signalName(signal) : null;
      proc.#finish({ type: "end", ...describeExit(sigName ? null : exitCode, sigName) });
    });
    return proc;
  }

  #wirePiped(child: ChildProcess): void {
    let open = 2;
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let graceTimer: NodeJS.Timeout | undefined;
    const maybeFinish = () => {
      if (!exit || open > 0) return;
      clearTimeout(graceTimer);
      this.#finish({ type: "end", ...describeExit(exit.code, exit.signal) });
    };
    for (const [stream, type] of [
      [child.stdout, "stdout"],
      [child.stderr, "stderr"],
    ] as const) {
      stream!.on("data", (data: Buffer) => this.#emit({ type, data }));
      stream!.on("close", () => {
        open--;
        maybeFinish();
      });
      stream!.on("error", () => {});
    }
    child.stdin?.on("error", () => {});
    child.on("exit", (code, signal) => {
      exit = { code, signal };
      if (open > 0) {
        // A background child may keep the pipes open forever: end anyway after a grace period.
        graceTimer = setTimeout(() => {
          child.stdout?.destroy();
          child.stderr?.destroy();
          open = 0;
          maybeFinish();
        }, PIPE_DRAIN_GRACE_MS);
      }
      maybeFinish();
    });
  }

  get ended(): EndEvent | undefined {
    return this.#end;
  }

  get stdinOpen(): boolean {
    return this.#stdinOpen && !this.#end;
  }

  /** Returns an unsubscribe function. A listener added after the end gets nothing. */
  subscribe(listener: Listener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(ev: ProcessEvent): void {
    for (const l of this.#listeners) l(ev);
  }

  #finish(end: EndEvent): void {
    if (this.#end) return;
    this.#end = end;
    this.#stdinOpen = false;
    this.#emit(end);
    this.#listeners.clear();
    this.#onEnded(this);
  }

  /** Writes to stdin (pipe mode) or to the terminal (pty mode). */
  write(data: Uint8Array, via: "stdin" | "pty"): void {
    if (this.#end) throw new ProcessInputError(`process ${this.pid} has already exited`);
    if (this.#pty) {
      this.#pty.write(Buffer.from(data));
      return;
    }
    if (via === "pty") throw new ProcessInputError(`process ${this.pid} has no PTY: send stdin instead`);
    const stdin = this.#child?.stdin;
    if (!stdin || !this.#stdinOpen) {
      throw new ProcessInputError(
        `stdin of process ${this.pid} is not open: start the process with stdin enabled (and do not close it)`,
      );
    }
    stdin.write(Buffer.from(data));
  }

  closeStdin(): void {
    if (this.#pty) {
      // EOF on a terminal is ^D.
      this.#pty.write("\x04");
      return;
    }
    if (!this.#child?.stdin || !this.#stdinOpen) {
      throw new ProcessInputError(`stdin of process ${this.pid} is not open`);
    }
    this.#stdinOpen = false;
    this.#child.stdin.end();
  }

  resize(cols: number, rows: number): void {
    if (!this.#pty) throw new ProcessInputError(`process ${this.pid} has no PTY to resize`);
    this.#pty.resize(Math.max(1, cols), Math.max(1, rows));
  }

  /** Signals the process group (the command and its children), falling back to the process. */
  signal(sig: NodeJS.Signals): void {
    if (this.#end) return;
    try {
      process.kill(-this.pid, sig);
    } catch {
      try {
        process.kill(this.pid, sig);
      } catch {
        // Already gone.
      }
    }
  }
}

function signalName(n: number): NodeJS.Signals | null {
  for (const [name, num] of Object.entries(osConstants.signals)) {
    if (num === n) return name as NodeJS.Signals;
  }
  return null;
}
