// The only module that spawns host processes. Arguments are passed as an
// array: no shell is ever involved.
// SECURITY: never build a command line by string concatenation; user input
// reaches these functions only as separate argv elements.
import { type ChildProcess, type SpawnOptions, spawn } from "node:child_process";

export interface RunOptions {
  /** Bytes written to the child's stdin, then closed. */
  input?: string | Buffer;
  /** Extra environment; the child gets a minimal PATH plus these. */
  env?: Record<string, string>;
  cwd?: string;
  /** Kill the child after this long. @default 60_000 */
  timeoutMs?: number;
  /** Do not throw on a non-zero exit; return the result instead. */
  allowFailure?: boolean;
  /** Called with each chunk of stdout/stderr as it arrives (progress output). */
  onOutput?: (chunk: string, stream: "stdout" | "stderr") => void;
}

export interface RunResult {
  exitCode: number;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout as raw bytes (for binary output). */
  stdoutBytes: Buffer;
}

export class CommandError extends Error {
  readonly result: RunResult;
  readonly argv: readonly string[];
  constructor(argv: readonly string[], result: RunResult) {
    const detail = (result.stderr.trim() || result.stdout.trim()).split("\n").slice(-5).join("\n");
    super(
      `${argv.join(" ")} failed (${result.signal ? `signal ${result.signal}` : `exit ${result.exitCode}`})${detail ? `: ${detail}` : ""}`,
    );
    this.name = "CommandError";
    this.result = result;
    this.argv = argv;
  }
}

export const HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Runs a host command to completion and collects its output. */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { PATH: HOST_PATH, LANG: "C.UTF-8", ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
    child.stdout.on("data", (b: Buffer) => {
      out.push(b);
      opts.onOutput?.(b.toString(), "stdout");
    });
    child.stderr.on("data", (b: Buffer) => {
      err.push(b);
      opts.onOutput?.(b.toString(), "stderr");
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(
        (e as NodeJS.ErrnoException).code === "ENOENT"
          ? new Error(`${cmd} is not installed; run scripts/setup.sh as root`)
          : e,
      );
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      const result: RunResult = {
        exitCode: code ?? -1,
        signal,
        stdoutBytes,
        stdout: stdoutBytes.toString(),
        stderr: Buffer.concat(err).toString(),
      };
      if (result.exitCode !== 0 && !opts.allowFailure) reject(new CommandError([cmd, ...args], result));
      else resolve(result);
    });
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
  });
}

/** Starts a long-running host process (QEMU) and hands back the handle. */
export function start(cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  return spawn(cmd, args, { env: { PATH: HOST_PATH, LANG: "C.UTF-8" }, ...opts });
}
