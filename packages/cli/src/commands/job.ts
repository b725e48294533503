// firebreak job run|list|get|logs|cancel|artifacts|usage: batch jobs on a
// server (FIREBREAK_URL). `job run` ships the local files a task needs
// (--file, and any command argument naming a local file), one task per line
// of --inputs (JSON Lines) or per --input-file, waits with a progress line,
// and prints every task's result in order.
import fs from "node:fs/promises";
import path from "node:path";
import {
  type FailureKind,
  FirebreakApiError,
  type JobInfo,
  type JobLogEvent,
  type JobState,
  type TaskInfo,
} from "@firebreak/sdk";
import { InvalidArgumentError } from "commander";
import { printJson } from "../output.ts";
import { client, formatMetadata, onInterrupt, printTable } from "./api-client.ts";
import { type PolicyFlags, policyFromFlags } from "./network.ts";

/** Exit code of `job run` when the job did not succeed. */
export const EXIT_JOB_FAILED = 1;

/** Bad input found while running the command: VALIDATION_FAILED (exit 2, as the API's). */
function invalid(message: string): FirebreakApiError {
  return new FirebreakApiError({ code: "VALIDATION_FAILED", message });
}

const FAILURES: readonly FailureKind[] = ["exit_code", "timeout", "killed", "infrastructure"];

export function failureKinds(v: string, prev: FailureKind[] = []): FailureKind[] {
  const out = [...prev];
  for (const k of v.split(",").filter(Boolean)) {
    if (!FAILURES.includes(k as FailureKind)) {
      throw new InvalidArgumentError(`expected ${FAILURES.join(", ")} (comma-separated), got ${k}`);
    }
    out.push(k as FailureKind);
  }
  return out;
}

export function exitCodes(v: string, prev: number[] = []): number[] {
  const out = [...prev];
  for (const c of v.split(",").filter(Boolean)) {
    const n = Number(c);
    if (!Number.isInteger(n) || n < 1 || n > 255) {
      throw new InvalidArgumentError(`exit codes are whole numbers from 1 to 255, got ${c}`);
    }
    out.push(n);
  }
  return out;
}

/** `--file LOCAL[:REMOTE]`: a local file copied into every task's working directory. */
export function fileFlag(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** One JSON value per non-blank line; the error names the file and line. */
export function parseJsonLines(text: string, file: string): unknown[] {
  const out: unknown[] = [];
  for (const [i, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    try {
      out.push(JSON.parse(line));
    } catch (e) {
      throw invalid(
        `${file}:${i + 1} is not JSON (${(e as Error).message}); --inputs takes one JSON value per line`,
      );
    }
  }
  if (out.length === 0) throw invalid(`${file} has no inputs (one JSON value per line)`);
  return out;
}

/** The remote path of a local file shipped with the job: where the command finds it. */
function remotePathOf(local: string): string {
  return path.isAbsolute(local) ? path.basename(local) : path.normalize(local);
}

async function regularFile(p: string): Promise<boolean> {
  return (await fs.stat(p).catch(() => undefined))?.isFile() ?? false;
}

/**
 * The files to ship: every --file, and every command argument that names a
 * local regular file by a relative path inside the current directory (the
 * task finds it at the same relative path in its working directory; an
 * executable keeps its execute bit). The program counts when it is a path
 * (./run.sh).
 */
async function filesToShip(
  argv: string[],
  flags: string[],
  auto: boolean,
): Promise<{ path: string; data: Uint8Array; mode?: number }[]> {
  const wanted = new Map<string, string>(); // remote -> local
  for (const f of flags) {
    const colon = f.lastIndexOf(":");
    const [local, remote] = colon > 0 ? [f.slice(0, colon), f.slice(colon + 1)] : [f, remotePathOf(f)];
    if (!(await regularFile(local))) throw invalid(`--file ${local}: no such file`);
    wanted.set(remote, local);
  }
  if (auto) {
    for (const [i, a] of argv.entries()) {
      // The program itself only when named as a path (./run.sh), not python3.
      if (i === 0 && !a.includes("/")) continue;
      if (path.isAbsolute(a) || a.startsWith("-") || a.split(/[\\/]/).includes("..")) continue;
      if (!wanted.has(path.normalize(a)) && (await regularFile(a))) wanted.set(path.normalize(a), a);
    }
  }
  const out = [];
  for (const [remote, local] of wanted) {
    const st = await fs.stat(local);
    out.push({
      path: remote,
      data: new Uint8Array(await fs.readFile(local)),
      ...(st.mode & 0o111 ? { mode: 0o755 } : {}),
    });
  }
  return out;
}

export interface JobRunOpts extends PolicyFlags {
  template?: string;
  parallel?: number;
  inputs?: string;
  inputFile?: string[];
  file?: string[];
  autoFiles?: boolean;
  output?: string[];
  cpus?: number;
  memory?: number;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  timeoutMs?: number;
  retries?: number;
  retryOn?: FailureKind[];
  retryExitCode?: number[];
  backoffMs?: number;
  maxLogBytes?: number;
  detach?: boolean;
  json?: boolean;
}

export async function jobRun(argv: string[], opts: JobRunOpts): Promise<void> {
  const fb = client();
  const policy = await policyFromFlags(opts);
  const inputs = opts.inputs ? parseJsonLines(await readInputs(opts.inputs), opts.inputs) : undefined;
  const inputFiles = [];
  for (const f of opts.inputFile ?? []) {
    if (!(await regularFile(f))) throw invalid(`--input-file ${f}: no such file`);
    inputFiles.push({ name: path.basename(f), data: new Uint8Array(await fs.readFile(f)) });
  }
  if (inputs && inputFiles.length) {
    throw invalid("give --inputs or --input-file, not both");
  }
  const files = await filesToShip(argv, opts.file ?? [], opts.autoFiles !== false);
  const retry =
    opts.retries !== undefined || opts.retryOn || opts.retryExitCode || opts.backoffMs !== undefined
      ? {
          maxAttempts: (opts.retries ?? 0) + 1,
          ...(opts.retryOn ? { on: opts.retryOn } : {}),
          ...(opts.retryExitCode ? { exitCodes: opts.retryExitCode } : {}),
          ...(opts.backoffMs !== undefined ? { backoffMs: opts.backoffMs } : {}),
        }
      : undefined;
  const job = await fb.jobs.create({
    command: argv.length === 1 && /\s/.test(argv[0]!) ? argv[0]! : argv,
    ...(opts.template !== undefined ? { template: opts.template } : {}),
    ...(opts.parallel !== undefined ? { parallelism: opts.parallel } : {}),
    ...(inputs ? { inputs } : {}),
    ...(inputFiles.length ? { inputFiles } : {}),
    ...(files.length ? { files } : {}),
    ...(opts.output?.length ? { outputs: opts.output } : {}),
    ...(opts.cpus !== undefined ? { vcpus: opts.cpus } : {}),
    ...(opts.memory !== undefined ? { memoryMib: opts.memory } : {}),
    ...(opts.env ? { envVars: opts.env } : {}),
    ...(opts.metadata ? { metadata: opts.metadata } : {}),
    ...(opts.timeoutMs !== undefined ? { taskTimeoutMs: opts.timeoutMs } : {}),
    ...(retry ? { retry } : {}),
    ...(opts.maxLogBytes !== undefined ? { maxLogBytes: opts.maxLogBytes } : {}),
    ...(policy ? { network: { policy } } : {}),
  });
  if (opts.detach) {
    if (opts.json) printJson(job);
    else process.stdout.write(`${job.id}\n`);
    return;
  }
  process.stderr.write(
    `job ${job.id}: ${job.taskCount} task${job.taskCount === 1 ? "" : "s"}, ${job.parallelism} at a time (Ctrl-C cancels it)\n`,
  );
  const off = onInterrupt(() => fb.jobs.cancel(job.id));
  let done: JobInfo;
  try {
    let last = "";
    done = await fb.jobs.wait(job.id, {
      pollMs: 500,
      onUpdate: (j) => {
        const line = progress(j);
        if (line !== last) process.stderr.write(`${line}\n`);
        last = line;
      },
    });
  } finally {
    off();
  }
  const tasks = await fb.jobs.tasks(job.id);
  if (opts.json) printJson({ job: done, tasks });
  else printTasks(tasks);
  if (done.state !== "succeeded") {
    if (!opts.json) {
      process.stderr.write(
        `job ${done.id} ${done.state}; see: firebreak job logs ${done.id} <task>, firebreak job get ${done.id}\n`,
      );
    }
    process.exitCode = EXIT_JOB_FAILED;
  }
}

async function readInputs(file: string): Promise<string> {
  if (file === "-") {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  }
  return fs.readFile(file, "utf8").catch((e: NodeJS.ErrnoException) => {
    throw invalid(`--inputs ${file}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
  });
}

function progress(j: JobInfo): string {
  const t = j.tasks;
  const parts = [`${t.succeeded + t.failed + t.cancelled}/${j.taskCount} done`, `${t.running} running`];
  if (t.failed) parts.push(`${t.failed} failed`);
  if (t.cancelled) parts.push(`${t.cancelled} cancelled`);
  return `job ${j.id} ${j.state}: ${parts.join(", ")}`;
}

function describeFailure(t: TaskInfo): string {
  if (!t.failure) return "";
  return t.failure === "exit_code" ? `exit code ${t.exitCode}` : t.failure;
}

function printTasks(tasks: TaskInfo[]): void {
  printTable(
    ["TASK", "STATE", "EXIT", "ATTEMPTS", "FAILURE", "ARTIFACTS"],
    tasks.map((t) => [
      String(t.index),
      t.state,
      t.exitCode === null ? "" : String(t.exitCode),
      String(t.attempts),
      describeFailure(t),
      t.artifacts.map((a) => ("error" in a ? `${a.path} (${a.error})` : a.path)).join(","),
    ]),
  );
}

export async function jobList(opts: { state?: string[]; limit?: number; json?: boolean }): Promise<void> {
  const all: JobInfo[] = [];
  const max = opts.limit ?? Number.POSITIVE_INFINITY;
  for await (const page of client().jobs.list({
    ...(opts.state?.length ? { state: opts.state as JobState[] } : {}),
    ...(opts.limit !== undefined ? { limit: Math.min(opts.limit, 1000) } : {}),
  })) {
    all.push(...page.slice(0, max - all.length));
    if (all.length >= max) break;
  }
  if (opts.json) return printJson(all);
  if (all.length === 0) {
    process.stdout.write(
      opts.state?.length ? "no jobs match\n" : "no jobs; start one with: firebreak job run -- <command>\n",
    );
    return;
  }
  printTable(
    ["ID", "STATE", "TEMPLATE", "TASKS", "FAILED", "CREATED", "COMMAND"],
    all.map((j) => [
      j.id,
      j.state,
      j.template,
      `${j.tasks.succeeded}/${j.taskCount}`,
      String(j.tasks.failed),
      j.createdAt,
      commandOf(j).slice(0, 60),
    ]),
  );
}

function commandOf(j: JobInfo): string {
  return j.cmd ?? (j.argv ?? []).map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(" ");
}

export async function jobGet(id: string, opts: { json?: boolean }): Promise<void> {
  const fb = client();
  const job = await fb.jobs.get(id);
  const tasks = await fb.jobs.tasks(id);
  if (opts.json) return printJson({ job, tasks });
  const rows: [string, string | null | undefined][] = [
    ["id", job.id],
    ["state", job.state],
    ["template", job.template],
    ["command", commandOf(job)],
    ["shape", `${job.vcpus} vCPU, ${job.memoryMib} MiB`],
    ["tasks", `${job.taskCount} (${job.parallelism} at a time; timeout ${job.taskTimeoutMs} ms each)`],
    [
      "retry",
      job.retry.maxAttempts > 1
        ? `up to ${job.retry.maxAttempts} attempts on ${job.retry.on.join(",")}${job.retry.exitCodes ? ` (exit codes ${job.retry.exitCodes.join(",")})` : ""}`
        : "none",
    ],
    ["outputs", job.outputs.join(",")],
    ["metadata", formatMetadata(job.metadata)],
    ["createdAt", job.createdAt],
    ["startedAt", job.startedAt],
    ["endedAt", job.endedAt],
  ];
  for (const [k, v] of rows) if (v) process.stdout.write(`${k.padEnd(10)} ${v}\n`);
  process.stdout.write("\n");
  printTasks(tasks);
}

export async function jobLogs(
  id: string,
  index: number | undefined,
  opts: { attempt?: number; follow?: boolean; json?: boolean },
): Promise<void> {
  const fb = client();
  const ctl = new AbortController();
  const off = onInterrupt(async () => ctl.abort());
  let end: Extract<JobLogEvent, { type: "end" }> | undefined;
  try {
    for await (const ev of fb.jobs.logs(id, index ?? 0, {
      ...(opts.attempt !== undefined ? { attempt: opts.attempt } : {}),
      ...(opts.follow ? { follow: true } : {}),
      signal: ctl.signal,
    })) {
      if (opts.json) {
        process.stdout.write(
          `${JSON.stringify("data" in ev ? { type: ev.type, attempt: ev.attempt, text: ev.text } : ev)}\n`,
        );
      } else if (ev.type === "stdout") process.stdout.write(ev.data);
      else if (ev.type === "stderr" || ev.type === "truncated") process.stderr.write(ev.data);
      else if (ev.type === "attempt") process.stderr.write(`--- attempt ${ev.attempt} ---\n`);
      if (ev.type === "end") end = ev;
    }
  } finally {
    off();
  }
  if (end && !opts.json && end.state !== "succeeded") {
    const why = end.failure === "exit_code" ? `exit code ${end.exitCode}` : (end.failure ?? end.state);
    process.stderr.write(`firebreak: attempt ${end.attempt} ${end.state} (${why})\n`);
  }
}

export async function jobCancel(id: string, opts: { json?: boolean }): Promise<void> {
  const job = await client().jobs.cancel(id);
  if (opts.json) return printJson(job);
  process.stdout.write(`job ${job.id} ${job.state}\n`);
}

/**
 * Where an artifact is written under `dir`: <dir>/<task>/<its path>, or
 * undefined when the path would leave that directory.
 */
export function downloadPath(dir: string, task: number, artifactPath: string): string | undefined {
  // SECURITY: artifact paths name files in the guest, so the guest chose them.
  // Only plain relative segments are kept: no "..", no empty or "." parts, no
  // NUL; an absolute path is taken relative to the task's directory.
  const parts = artifactPath.split("/").filter((p) => p !== "");
  if (parts.length === 0 || parts.some((p) => p === "." || p === ".." || p.includes("\0"))) return undefined;
  const base = path.resolve(dir, String(task));
  const out = path.resolve(base, ...parts);
  return out.startsWith(`${base}${path.sep}`) ? out : undefined;
}

export async function jobArtifacts(
  id: string,
  opts: { task?: number; download?: string; json?: boolean },
): Promise<void> {
  const fb = client();
  const all = (await fb.jobs.artifacts(id)).filter((a) => opts.task === undefined || a.task === opts.task);
  if (opts.download) {
    const written: { task: number; path: string; file: string; bytes: number }[] = [];
    for (const a of all) {
      const file = downloadPath(opts.download, a.task, a.path);
      if (!file) {
        process.stderr.write(
          `firebreak: skipped task ${a.task}'s artifact ${JSON.stringify(a.path)}: unsafe path\n`,
        );
        continue;
      }
      await fs.mkdir(path.dirname(file), { recursive: true });
      const body = await fb.jobs.downloadArtifact(id, a.task, a.path, {
        attempt: a.attempt,
        format: "stream",
      });
      // Written through a temporary name, so a partial download never looks complete.
      const tmp = `${file}.part`;
      await fs.writeFile(tmp, body);
      await fs.rename(tmp, file);
      written.push({ task: a.task, path: a.path, file, bytes: a.bytes });
    }
    if (opts.json) return printJson(written);
    for (const w of written) process.stdout.write(`${w.file}\n`);
    return;
  }
  if (opts.json) return printJson(all);
  if (all.length === 0) {
    process.stdout.write("no artifacts\n");
    return;
  }
  printTable(
    ["TASK", "ATTEMPT", "PATH", "BYTES", "SHA256"],
    all.map((a) => [String(a.task), String(a.attempt), a.path, String(a.bytes), a.sha256]),
  );
}

export async function jobUsage(id: string, opts: { json?: boolean }): Promise<void> {
  const u = await client().jobs.usage(id);
  if (opts.json) return printJson(u);
  const f = (x: number, d = 2) => x.toFixed(d);
  const rows = u.tasks.flatMap((t) =>
    t.attempts.map((a) => [
      String(t.index),
      String(a.attempt),
      a.kind,
      a.state,
      a.usage ? `${f(a.usage.lifetimeSeconds, 1)} s` : "",
      a.usage ? `${f(a.usage.cpuSeconds)} s` : "",
      a.usage ? f(a.usage.memoryGibSeconds) : "",
      a.final ? "yes" : "no",
    ]),
  );
  rows.push([
    "total",
    "",
    "",
    u.state,
    `${f(u.total.lifetimeSeconds, 1)} s`,
    `${f(u.total.cpuSeconds)} s`,
    f(u.total.memoryGibSeconds),
    "",
  ]);
  printTable(["TASK", "ATTEMPT", "KIND", "STATE", "LIFETIME", "CPU", "MEM GiB·s", "FINAL"], rows);
}
