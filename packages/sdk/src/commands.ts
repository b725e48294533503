// sandbox.commands: run commands with streamed output; background commands
// return a CommandHandle.
import { fromBase64, toBase64, toBytes } from "./bytes.ts";
import { FirebreakApiError, NotFoundError } from "./errors.ts";
import type { HttpClient } from "./http.ts";
import type { ProcessInfo } from "./types.ts";

export interface CommandOptions {
  /** Called with each chunk of stdout as it arrives: decoded text, and the raw bytes. */
  onStdout?: (data: string, bytes: Uint8Array) => void;
  /** Called with each chunk of stderr as it arrives: decoded text, and the raw bytes. */
  onStderr?: (data: string, bytes: Uint8Array) => void;
  /** Environment variables for the command (on top of the sandbox's). */
  envVars?: Record<string, string>;
  /** Working directory. @default the template's workdir */
  cwd?: string;
  /** User to run as. @default the template's user */
  user?: string;
  /** Text written to the command's stdin, which is then closed. */
  stdin?: string;
  /** Time limit enforced by the server; the command is killed after it. @default no limit */
  timeoutMs?: number;
  /** Aborting stops waiting for output (see CommandHandle.disconnect). */
  signal?: AbortSignal;
}

export interface CommandRunOptions extends CommandOptions {
  /** Return a CommandHandle as soon as the command starts instead of waiting for it. @default false */
  background?: boolean;
}

/** How a command ended. A non-zero exit code is a result, not an error. */
export interface CommandResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** Why the command ended abnormally (killed, timed out), when the server says. */
  error?: string;
}

type CommandEvent =
  | { type: "start"; pid: number }
  | { type: "stdout"; data: string }
  | { type: "stderr"; data: string }
  | { type: "end"; exitCode: number; error?: string };

export type Signal = "SIGTERM" | "SIGKILL";

export class Commands {
  readonly #http: HttpClient;
  readonly #base: string;

  /** @internal */
  constructor(http: HttpClient, sandboxId: string) {
    this.#http = http;
    this.#base = `/v1/sandboxes/${encodeURIComponent(sandboxId)}/commands`;
  }

  /**
   * Runs a command and waits for it; output streams to `onStdout`/`onStderr`.
   * `cmd` as a string runs with `/bin/bash -l -c`; as an array it is an argv,
   * run without a shell.
   */
  run(
    cmd: string | readonly string[],
    opts?: CommandRunOptions & { background?: false },
  ): Promise<CommandResult>;
  /** Starts a command and returns its handle once it is running. */
  run(
    cmd: string | readonly string[],
    opts: CommandRunOptions & { background: true },
  ): Promise<CommandHandle>;
  run(cmd: string | readonly string[], opts?: CommandRunOptions): Promise<CommandResult | CommandHandle>;
  async run(
    cmd: string | readonly string[],
    opts: CommandRunOptions = {},
  ): Promise<CommandResult | CommandHandle> {
    const handle = await this.#start(cmd, opts);
    return opts.background ? handle : handle.wait();
  }

  /** Commands running in the sandbox. */
  async list(): Promise<ProcessInfo[]> {
    const r = await this.#http.json<{ commands: ProcessInfo[] }>("GET", this.#base);
    return r.commands;
  }

  /** Signals a command; false when no such command is running. */
  async kill(pid: number, signal: Signal = "SIGKILL"): Promise<boolean> {
    try {
      await this.#http.empty("POST", `${this.#base}/${pid}/signal`, { json: { signal } });
      return true;
    } catch (e) {
      if (e instanceof NotFoundError && e.code === "NOT_FOUND") return false;
      throw e;
    }
  }

  /** Writes to a running command's stdin; `eof` closes it afterwards. */
  async sendStdin(pid: number, data: string | Uint8Array, opts: { eof?: boolean } = {}): Promise<void> {
    await this.#http.empty("POST", `${this.#base}/${pid}/stdin`, {
      json: { data: toBase64(toBytes(data)), ...(opts.eof ? { eof: true } : {}) },
    });
  }

  /** Closes a running command's stdin. */
  async closeStdin(pid: number): Promise<void> {
    await this.#http.empty("POST", `${this.#base}/${pid}/stdin`, { json: { data: "", eof: true } });
  }

  async #start(cmd: string | readonly string[], opts: CommandOptions): Promise<CommandHandle> {
    if (typeof cmd !== "string" && cmd.length === 0) {
      throw new FirebreakApiError({
        code: "VALIDATION_FAILED",
        message: "argv is empty: name a program to run",
      });
    }
    const abort = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, abort.signal]) : abort.signal;
    const body = {
      ...(typeof cmd === "string" ? { cmd } : { argv: [...cmd] }),
      ...(opts.envVars ? { envVars: opts.envVars } : {}),
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      ...(opts.user !== undefined ? { user: opts.user } : {}),
      ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    };
    const events = this.#http.stream<CommandEvent>("POST", this.#base, { json: body, signal });
    const first = await events.next();
    if (first.done) {
      throw new FirebreakApiError({
        code: "BAD_RESPONSE",
        message: "the command stream ended before the command started; check the server's logs",
      });
    }
    let pid = 0;
    let pending: CommandEvent | undefined;
    if (first.value.type === "start") pid = first.value.pid;
    else pending = first.value;
    return new CommandHandle(pid, this, events, pending, opts, abort);
  }
}

/** A running command. */
export class CommandHandle {
  readonly pid: number;
  readonly #commands: Commands;
  readonly #abort: AbortController;
  readonly #done: Promise<CommandResult>;
  #stdout = "";
  #stderr = "";

  /** @internal */
  constructor(
    pid: number,
    commands: Commands,
    events: AsyncGenerator<CommandEvent>,
    pending: CommandEvent | undefined,
    opts: CommandOptions,
    abort: AbortController,
  ) {
    this.pid = pid;
    this.#commands = commands;
    this.#abort = abort;
    this.#done = this.#pump(events, pending, opts);
    // A handle nobody waits on must not crash the process with an unhandled rejection.
    this.#done.catch(() => {});
  }

  /** Output received so far. */
  get stdout(): string {
    return this.#stdout;
  }
  get stderr(): string {
    return this.#stderr;
  }

  /** Resolves when the command ends, with its exit code and output. */
  wait(): Promise<CommandResult> {
    return this.#done;
  }

  /** Kills the command (SIGKILL); false when it is no longer running. */
  kill(signal: Signal = "SIGKILL"): Promise<boolean> {
    return this.#commands.kill(this.pid, signal);
  }

  /** Writes to the command's stdin; `eof` closes it afterwards. */
  sendStdin(data: string | Uint8Array, opts: { eof?: boolean } = {}): Promise<void> {
    return this.#commands.sendStdin(this.pid, data, opts);
  }

  /** Closes the command's stdin. */
  closeStdin(): Promise<void> {
    return this.#commands.closeStdin(this.pid);
  }

  /** Stops receiving output; wait() then rejects with ABORTED. */
  disconnect(): void {
    this.#abort.abort();
  }

  async #pump(
    events: AsyncGenerator<CommandEvent>,
    pending: CommandEvent | undefined,
    opts: CommandOptions,
  ): Promise<CommandResult> {
    const out = new TextDecoder();
    const err = new TextDecoder();
    const handle = (ev: CommandEvent): CommandResult | undefined => {
      switch (ev.type) {
        case "stdout": {
          const bytes = fromBase64(ev.data);
          const text = out.decode(bytes, { stream: true });
          this.#stdout += text;
          opts.onStdout?.(text, bytes);
          return undefined;
        }
        case "stderr": {
          const bytes = fromBase64(ev.data);
          const text = err.decode(bytes, { stream: true });
          this.#stderr += text;
          opts.onStderr?.(text, bytes);
          return undefined;
        }
        case "end": {
          this.#stdout += out.decode();
          this.#stderr += err.decode();
          return {
            exitCode: ev.exitCode,
            stdout: this.#stdout,
            stderr: this.#stderr,
            ...(ev.error ? { error: ev.error } : {}),
          };
        }
        default:
          return undefined;
      }
    };
    if (pending) {
      const r = handle(pending);
      if (r) return r;
    }
    for await (const ev of events) {
      const r = handle(ev);
      if (r) {
        await events.return(undefined);
        return r;
      }
    }
    throw new FirebreakApiError({
      code: "CONNECTION_FAILED",
      message: `the output stream of command ${this.pid} ended before the command did; it may still be running (see commands.list())`,
    });
  }
}
