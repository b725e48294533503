// One attempt at one task: a sandbox through SandboxService (so placement,
// quotas, metering and cleanup are those of any sandbox), the job's files and
// the task's input copied in, the command run to completion with its output
// kept (log-sink.ts) and a timeout, the declared outputs collected into the
// artifact store, and the sandbox killed at once, whatever happened.
//
// SECURITY: everything the guest sends is bounded: command output by the log
// sink, each artifact and all of an attempt's artifacts by size and count,
// file listings by count; streams are read only as fast as the store takes
// them. No guest answer can throw past this module: every failure becomes
// the attempt's outcome.
import { Code, ConnectError } from "@connectrpc/connect";
import { filesystemPb } from "@firebreak/protocol";
import type { Logger } from "pino";
import { fromEnvdResponse } from "../api/envd-errors.ts";
import { toApiError } from "../errors.ts";
import type { EnvdAccess } from "../node/node-client.ts";
import { readBounded } from "../relay/read-bounded.ts";
import type { Caller, SandboxService } from "../sandboxes/service.ts";
import type {
  ArtifactRef,
  AttemptRecord,
  FailureKind,
  JobRecord,
  JobStore,
  TaskRecord,
} from "../store/job-store.ts";
import { isFinalState, type SandboxRecord } from "../store/store.ts";
import type { ArtifactStore } from "./artifact-store.ts";
import type { JobsConfig } from "./config.ts";
import { LogSink } from "./log-sink.ts";
import { displayPath, guestPath, type JobSpec, WORKDIR } from "./spec.ts";

/** Why a running attempt is stopped from outside: the job was cancelled, or the platform is stopping it. */
export type AbortReason = "cancel" | "shutdown" | "lease";

export interface AttemptContext {
  job: JobRecord;
  spec: JobSpec;
  task: TaskRecord;
  attempt: AttemptRecord;
  caller: Caller;
  sandboxes: SandboxService;
  jobs: JobStore;
  artifacts: ArtifactStore;
  config: JobsConfig;
  log: Logger;
  /** Aborted with an AbortReason as its reason. */
  signal: AbortSignal;
}

export interface AttemptEnd {
  state: "succeeded" | "failed" | "interrupted" | "cancelled";
  exitCode: number | null;
  failure: FailureKind | null;
  message: string | null;
  logBytes: number;
  logDroppedBytes: number;
  artifacts: ArtifactRef[];
  timings: Record<string, number>;
}

type AttemptResult = Omit<AttemptEnd, "logBytes" | "logDroppedBytes" | "timings">;

export type AttemptOutcome =
  /** No sandbox could be had yet (quota, capacity): take the claim back and try later. */
  | { kind: "deferred"; message: string }
  /** The attempt is no longer this dispatcher's (another took it over): nothing to write. */
  | { kind: "lost" }
  | ({ kind: "ended" } & AttemptEnd);

/** Input held in the environment as well as in the file, up to this size. */
const MAX_INPUT_ENV_BYTES = 32 * 1024;
/** Replies of the agent read whole (uploads): at most this much. */
const MAX_REPLY_BYTES = 64 * 1024;
/** The agent must start the command within this long. */
const START_TIMEOUT_MS = 60_000;
/** Longest path kept from a guest's listing. */
const MAX_PATH_CHARS = 4096;

const SIGNALS: Record<string, number> = { hangup: 1, interrupt: 2, killed: 9, terminated: 15 };

class Failed extends Error {
  readonly failure: FailureKind;
  constructor(failure: FailureKind, message: string) {
    super(message);
    this.failure = failure;
  }
}

const ms = (t0: number) => Math.round((performance.now() - t0) * 10) / 10;
/** Messages are kept printable and bounded (some come from the guest). */
const clean = (s: string) => s.replace(/[\u0000-\u0008\u000b-\u001f]/g, "?").slice(0, 2000);

export async function runAttempt(ctx: AttemptContext): Promise<AttemptOutcome> {
  return new AttemptRun(ctx).run();
}

class AttemptRun {
  readonly #c: AttemptContext;
  readonly #timings: Record<string, number> = {};
  readonly #sink: LogSink;
  #sandbox: SandboxRecord | undefined;
  #timedOut = false;

  constructor(ctx: AttemptContext) {
    this.#c = ctx;
    this.#sink = new LogSink(
      ctx.jobs,
      { jobId: ctx.job.id, index: ctx.task.index, attempt: ctx.attempt.attempt },
      {
        headBytes: ctx.spec.maxLogBytes,
        tailBytes: Math.min(ctx.config.logTailBytes, ctx.spec.maxLogBytes),
        flushBytes: ctx.config.logFlushBytes,
        flushMs: ctx.config.logFlushMs,
      },
    );
  }

  get #aborted(): AbortReason | undefined {
    return this.#c.signal.aborted ? (this.#c.signal.reason as AbortReason) : undefined;
  }

  async run(): Promise<AttemptOutcome> {
    const c = this.#c;
    let result: AttemptResult | undefined;
    let special: Exclude<AttemptOutcome, { kind: "ended" }> | undefined;
    try {
      const r = await this.#steps();
      if ("kind" in r) special = r;
      else result = r;
    } catch (e) {
      if (!this.#aborted) {
        const failure = e instanceof Failed ? e.failure : await this.#classify();
        let message: string;
        if (e instanceof Failed) message = e.message;
        else if (failure === "killed") message = await this.#endedMessage();
        else {
          const api = toApiError(e);
          message = `the platform failed running the task: ${clean(api.code === "INTERNAL" ? describe(e) : api.message)}`;
          c.log.warn({ jobId: c.job.id, task: c.task.index, err: e }, "task attempt failed");
        }
        result = { state: "failed", exitCode: null, failure, message, artifacts: [] };
      }
    } finally {
      const t = performance.now();
      await this.#teardown();
      if (this.#sandbox) this.#timings["teardown"] = ms(t);
    }
    const logs = await this.#sink.close();
    if (special) return special;
    const aborted = this.#aborted;
    // An abort wins over what the command did, unless it had succeeded.
    if (aborted && result?.state !== "succeeded") {
      result =
        aborted === "cancel"
          ? {
              state: "cancelled",
              exitCode: null,
              failure: null,
              message: "the job was cancelled",
              artifacts: [],
            }
          : {
              state: "interrupted",
              exitCode: null,
              failure: "infrastructure",
              message:
                aborted === "shutdown"
                  ? "the control plane shut down while the task ran; it runs again"
                  : "this control plane lost the jobs lease while the task ran; it runs again",
              artifacts: [],
            };
    }
    return { kind: "ended", ...result!, ...logs, timings: this.#timings };
  }

  /** The attempt's steps; a result, or why there is none to write. */
  async #steps(): Promise<AttemptResult | { kind: "deferred"; message: string } | { kind: "lost" }> {
    const c = this.#c;
    const t0 = performance.now();
    try {
      this.#sandbox = await c.sandboxes.create(c.caller, {
        template: c.spec.template,
        vcpus: c.spec.vcpus,
        memoryMib: c.spec.memoryMib,
        timeoutMs: c.spec.taskTimeoutMs + c.config.sandboxGraceMs,
        envVars: c.spec.envVars,
        metadata: {
          ...c.spec.metadata,
          "firebreak.job": c.job.id,
          "firebreak.task": String(c.task.index),
          "firebreak.attempt": c.attempt.id,
        },
        networkPolicy: c.spec.network ?? undefined,
        lineage: { parentId: c.job.id, rootId: c.job.id },
      });
    } catch (e) {
      const err = toApiError(e);
      if (err.code === "QUOTA_EXCEEDED" || err.code === "CAPACITY_EXHAUSTED") {
        return { kind: "deferred", message: `${err.code}: ${err.message}` };
      }
      throw new Failed(
        "infrastructure",
        `the task's sandbox did not start: ${err.code}: ${clean(err.message)}`,
      );
    }
    this.#timings["sandbox"] = ms(t0);
    const recorded = await c.jobs.updateAttempt(c.job.id, c.task.index, c.attempt.attempt, c.attempt.holder, {
      sandboxId: this.#sandbox.id,
    });
    if (!recorded) return { kind: "lost" };
    if (c.signal.aborted) throw new Error("aborted");
    const envd = c.sandboxes.envdOf(this.#sandbox);
    const t1 = performance.now();
    const { workdir, env } = await this.#prepare(envd);
    this.#timings["upload"] = ms(t1);
    const t2 = performance.now();
    const end = await this.#command(envd, workdir, env);
    this.#timings["command"] = ms(t2);
    if (end.failure === "timeout") return { ...end, artifacts: [] };
    const t3 = performance.now();
    const artifacts = await this.#collect(envd, workdir);
    this.#timings["collect"] = ms(t3);
    return { ...end, artifacts };
  }

  /** The working directory, the job's files and the task's input in the guest; the command's environment. */
  async #prepare(envd: EnvdAccess): Promise<{ workdir: string; env: Record<string, string> }> {
    const c = this.#c;
    const made = await envd.filesystem.makeDir({ path: `${WORKDIR}/out` }).catch((e) => {
      throw new Failed("infrastructure", `making the task's working directory failed: ${describe(e)}`);
    });
    const outDir = made.entry?.path;
    if (!outDir?.startsWith("/") || !outDir.endsWith("/out") || outDir.length > MAX_PATH_CHARS) {
      throw new Failed("infrastructure", "the agent answered the working directory with an unusable path");
    }
    const workdir = outDir.slice(0, -"/out".length);
    for (const f of c.spec.files) {
      const obj = await c.artifacts.get(f.sha256);
      if (!obj)
        throw new Failed("infrastructure", `the job's file ${f.path} is missing from the artifact store`);
      await this.#upload(envd, guestPath(workdir, f.path), obj.stream);
    }
    const modes = new Map<number, string[]>();
    for (const f of c.spec.files) {
      if (f.mode !== undefined) modes.set(f.mode, [...(modes.get(f.mode) ?? []), guestPath(workdir, f.path)]);
    }
    for (const [mode, paths] of modes) {
      const r = await this.#exec(envd, ["chmod", mode.toString(8), "--", ...paths], workdir);
      if (r !== 0)
        throw new Failed("infrastructure", `chmod ${mode.toString(8)} of the job's files exited ${r}`);
    }
    const env: Record<string, string> = {
      FIREBREAK_JOB_ID: c.job.id,
      FIREBREAK_TASK_INDEX: String(c.task.index),
      FIREBREAK_TASK_COUNT: String(c.job.taskCount),
      FIREBREAK_TASK_ATTEMPT: String(c.attempt.attempt),
      FIREBREAK_OUTPUT_DIR: outDir,
    };
    const input = c.task.input;
    if (input.kind === "json") {
      const text = JSON.stringify(input.value);
      const file = guestPath(workdir, "input.json");
      await this.#upload(envd, file, new Blob([text]).stream());
      env["FIREBREAK_INPUT_FILE"] = file;
      if (Buffer.byteLength(text) <= MAX_INPUT_ENV_BYTES) env["FIREBREAK_INPUT"] = text;
    } else if (input.kind === "file") {
      const obj = await c.artifacts.get(input.sha256);
      if (!obj)
        throw new Failed(
          "infrastructure",
          `the task's input file ${input.name} is missing from the artifact store`,
        );
      const file = guestPath(workdir, `input/${input.name}`);
      await this.#upload(envd, file, obj.stream);
      env["FIREBREAK_INPUT_FILE"] = file;
    }
    return { workdir, env };
  }

  async #upload(envd: EnvdAccess, abs: string, body: ReadableStream<Uint8Array>): Promise<void> {
    const res = await envd
      .fetch(`/files?path=${encodeURIComponent(abs)}`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body,
        duplex: "half",
      } as RequestInit)
      .catch((e) => {
        throw new Failed("infrastructure", `copying ${abs} into the sandbox failed: ${describe(e)}`);
      });
    if (!res.ok) {
      const err = await fromEnvdResponse(res, `copying ${abs} into the sandbox failed`);
      throw new Failed("infrastructure", err.message);
    }
    // SECURITY: the agent's reply is read up to a limit and discarded.
    await readBounded(res.body, MAX_REPLY_BYTES).catch(() => {});
  }

  /** Runs a short helper command (chmod) to its end; its exit code. */
  async #exec(envd: EnvdAccess, argv: string[], cwd: string): Promise<number> {
    const [cmd, ...args] = argv;
    const signal = AbortSignal.any([this.#c.signal, AbortSignal.timeout(START_TIMEOUT_MS)]);
    for await (const msg of envd.process.start(
      { process: { cmd: cmd!, args, envs: {}, cwd }, stdin: false },
      { signal },
    )) {
      const ev = msg.event?.event;
      if (ev?.case === "end") return exitCodeOf(ev.value);
    }
    return -1;
  }

  /** The task's command to its end (or its timeout, or an abort). */
  async #command(
    envd: EnvdAccess,
    workdir: string,
    env: Record<string, string>,
  ): Promise<Omit<AttemptResult, "artifacts">> {
    const c = this.#c;
    const [cmd, ...args] =
      "cmd" in c.spec.command ? ["/bin/bash", "-l", "-c", c.spec.command.cmd] : c.spec.command.argv;
    const stop = new AbortController();
    const onAbort = () => stop.abort();
    c.signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(() => {
      this.#timedOut = true;
      stop.abort();
    }, c.spec.taskTimeoutMs);
    let started = false;
    const startTimer = setTimeout(() => {
      if (!started) stop.abort();
    }, START_TIMEOUT_MS);
    try {
      const stream = envd.process.start(
        { process: { cmd: cmd!, args, envs: env, cwd: workdir }, stdin: false, tag: `job-${c.attempt.id}` },
        { signal: stop.signal },
      );
      for await (const msg of stream) {
        const ev = msg.event?.event;
        if (!ev) continue;
        if (ev.case === "start") started = true;
        else if (ev.case === "data") {
          const out = ev.value.output;
          if (out.case === "stdout" || out.case === "pty") await this.#sink.write("stdout", out.value);
          else if (out.case === "stderr") await this.#sink.write("stderr", out.value);
        } else if (ev.case === "end") {
          const exitCode = exitCodeOf(ev.value);
          if (ev.value.exited && exitCode === 0) {
            return { state: "succeeded", exitCode, failure: null, message: null };
          }
          if (ev.value.exited) {
            return {
              state: "failed",
              exitCode,
              failure: "exit_code",
              message: `the command exited with code ${exitCode}`,
            };
          }
          return {
            state: "failed",
            exitCode,
            failure: "killed",
            message: `the command was killed by a signal (${clean(ev.value.status)})`,
          };
        }
      }
      throw new Failed("infrastructure", "the agent closed the command's stream without an end event");
    } catch (e) {
      if (this.#timedOut) {
        return {
          state: "failed",
          exitCode: null,
          failure: "timeout",
          message: `the command ran longer than the task timeout (${c.spec.taskTimeoutMs} ms) and was killed`,
        };
      }
      if (!started && !c.signal.aborted && stop.signal.aborted) {
        throw new Failed(
          "infrastructure",
          `the agent did not start the command within ${START_TIMEOUT_MS} ms`,
        );
      }
      if (e instanceof ConnectError && e.code === Code.InvalidArgument && !started) {
        throw new Failed("infrastructure", `the command could not start: ${clean(e.rawMessage)}`);
      }
      throw e;
    } finally {
      clearTimeout(timer);
      clearTimeout(startTimer);
      c.signal.removeEventListener("abort", onAbort);
    }
  }

  /** The declared outputs into the artifact store (bounded in size and count). */
  async #collect(envd: EnvdAccess, workdir: string): Promise<ArtifactRef[]> {
    const c = this.#c;
    const refs: ArtifactRef[] = [];
    let total = 0;
    const seen = new Set<string>();
    const collectFile = async (abs: string) => {
      const path = displayPath(workdir, abs);
      if (seen.has(path)) return;
      seen.add(path);
      if (refs.length >= c.config.maxArtifactFiles) {
        refs.push({ path, error: "limit", detail: `more than ${c.config.maxArtifactFiles} files` });
        return;
      }
      const room = Math.min(c.config.maxArtifactBytes, c.config.maxArtifactBytesPerTask - total);
      const res = await envd.fetch(`/files?path=${encodeURIComponent(abs)}`).catch(() => undefined);
      if (!res?.ok) {
        if (res) await readBounded(res.body, 4096).catch(() => {});
        refs.push({ path, error: res?.status === 404 ? "missing" : "unreadable" });
        return;
      }
      if (!res.body) {
        refs.push({ path, error: "unreadable" });
        return;
      }
      const put = await c.artifacts.put(res.body, Math.max(0, room)).catch(() => undefined);
      if (!put) refs.push({ path, error: "unreadable" });
      else if ("tooLarge" in put) {
        refs.push({
          path,
          error: room < c.config.maxArtifactBytes ? "limit" : "too_large",
          detail: `over ${room} bytes`,
        });
      } else {
        total += put.bytes;
        refs.push({ path, sha256: put.sha256, bytes: put.bytes });
      }
    };
    for (const out of c.spec.outputs) {
      if (c.signal.aborted) break;
      const abs = guestPath(workdir, out);
      let entry: filesystemPb.EntryInfo | undefined;
      try {
        entry = (await envd.filesystem.stat({ path: abs })).entry;
      } catch (e) {
        if (!(e instanceof ConnectError && e.code === Code.NotFound)) throw e;
      }
      if (!entry) {
        if (!c.spec.outputsDefaulted) refs.push({ path: displayPath(workdir, abs), error: "missing" });
        continue;
      }
      if (entry.type === filesystemPb.FileType.DIRECTORY) {
        const listed = await envd.filesystem.listDir({ path: abs, depth: 10 });
        const files = listed.entries
          .filter((e) => e.type === filesystemPb.FileType.FILE && e.path.length <= MAX_PATH_CHARS)
          .map((e) => e.path)
          .sort();
        for (const f of files) {
          if (refs.length > c.config.maxArtifactFiles) break;
          await collectFile(f);
        }
      } else {
        await collectFile(abs);
      }
    }
    return refs;
  }

  /** After an error: was the sandbox ended from outside (killed) or is it the platform (infrastructure)? */
  async #classify(): Promise<FailureKind> {
    if (!this.#sandbox) return "infrastructure";
    const now = await this.#c.sandboxes.get(this.#c.job.tenantId, this.#sandbox.id).catch(() => undefined);
    return now && isFinalState(now.state) ? "killed" : "infrastructure";
  }

  async #endedMessage(): Promise<string> {
    const now = await this.#c.sandboxes.get(this.#c.job.tenantId, this.#sandbox!.id).catch(() => undefined);
    return `the task's sandbox ended while the command ran: ${now?.endReason ?? "unknown reason"} (by ${now?.endedBy ?? "unknown"})`;
  }

  /** INVARIANT: an attempt's sandbox is killed before the attempt's end is written. */
  async #teardown(): Promise<void> {
    const sb = this.#sandbox;
    if (!sb) return;
    const c = this.#c;
    const aborted = this.#aborted;
    const reason = aborted
      ? aborted === "cancel"
        ? "job_cancelled"
        : "job_interrupted"
      : this.#timedOut
        ? "job_task_timeout"
        : "job_task_done";
    await c.sandboxes.kill(c.job.tenantId, sb.id, `job:${c.job.id}`, reason).catch((e) => {
      c.log.error({ jobId: c.job.id, sandboxId: sb.id, err: e }, "killing a task's sandbox failed");
    });
  }
}

function exitCodeOf(end: { exitCode: number; exited: boolean; status: string }): number {
  if (end.exited) return end.exitCode;
  const m = /signal: (\w+)/.exec(end.status);
  return 128 + (SIGNALS[m?.[1] ?? ""] ?? 9);
}

function describe(e: unknown): string {
  if (e instanceof Failed) return e.message;
  if (e instanceof ConnectError) return clean(e.rawMessage);
  return clean((e as Error)?.message ?? String(e));
}
