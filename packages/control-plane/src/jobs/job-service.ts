// Jobs: run-to-completion work fanned out over task inputs, each task in its
// own sandbox (task-runner.ts). The typed actions routes call (submit, get,
// list, tasks, cancel, logs, artifacts, usage, file uploads) and the
// dispatcher: on the holder of the `jobs` lease (every control plane with
// SQLite), it claims ready tasks up to each job's parallelism and runs them,
// writes each attempt's end with its task's next state, and takes over the
// attempts of a dispatcher that is gone (restart, lease handover).
//
// INVARIANT: a task never runs twice at once. A task is claimed in one
// conditional store transaction (claimTask); an attempt of a dispatcher that
// is gone is ended (and its task queued again) only after its sandbox has
// ended (recoverOrphans); a dispatcher kills its own attempt's sandbox before
// it writes the attempt's end (task-runner.ts teardown), and writes only
// while the attempt is still its own.
import type { EgressPolicy, NormalizedPolicy } from "@firebreak/node-agent";
import type { Logger } from "pino";
import { newId } from "../auth/keys.ts";
import type { ControlPlaneConfig } from "../config.ts";
import { ApiError } from "../errors.ts";
import type { Caller, SandboxService } from "../sandboxes/service.ts";
import {
  type AttemptFinish,
  type AttemptRecord,
  isFinalJobState,
  type JobRecord,
  type JobState,
  type LogChunk,
  type TaskInput,
  type TaskRecord,
  type TaskState,
} from "../store/job-store.ts";
import { isFinalState, type SandboxRecord, type Store, type UsageRecord } from "../store/store.ts";
import type { ArtifactStore } from "./artifact-store.ts";
import type { JobsConfig } from "./config.ts";
import { type RetryPolicy, retryDecision } from "./retry.ts";
import { DEFAULT_OUTPUTS, isSafeRelativePath, type JobFile, type JobSpec } from "./spec.ts";
import { type AbortReason, type AttemptOutcome, runAttempt } from "./task-runner.ts";

const iso = (ms = Date.now()) => new Date(ms).toISOString();
const SHA256_RE = /^[0-9a-f]{64}$/;

/** A job as submitted (validated by the route's schema; checked again against the tenant here). */
export interface JobRequest {
  template: string;
  command: { cmd: string } | { argv: string[] };
  vcpus: number;
  memoryMib: number;
  network?: EgressPolicy | undefined;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  taskTimeoutMs: number;
  retry: RetryPolicy;
  parallelism: number;
  /** One task per JSON value ... */
  inputs?: unknown[] | undefined;
  /** ... or one task per uploaded file (name: the file's name in the task's input/ directory). */
  inputFiles?: { sha256: string; name: string }[] | undefined;
  files: { path: string; sha256: string; mode?: number | undefined }[];
  outputs?: string[] | undefined;
  maxLogBytes: number;
}

interface Runner {
  jobId: string;
  abort: AbortController;
  done: Promise<void>;
}

export interface AttemptUsage {
  attempt: number;
  /** Why the attempt was made: the first one, a retry of a failure, or a rerun after an interruption. */
  kind: "initial" | "retry" | "rerun";
  state: AttemptRecord["state"];
  sandboxId: string | null;
  usage: UsageTotals | null;
  final: boolean;
}

export interface UsageTotals {
  sandboxes: number;
  lifetimeSeconds: number;
  cpuSeconds: number;
  memoryGibSeconds: number;
  peakMemoryMib: number;
  traffic: UsageRecord["traffic"];
}

const round3 = (n: number) => Math.round(n * 1000) / 1000;

function emptyTotals(): UsageTotals {
  return {
    sandboxes: 0,
    lifetimeSeconds: 0,
    cpuSeconds: 0,
    memoryGibSeconds: 0,
    peakMemoryMib: 0,
    traffic: {
      internet: { tx: 0, rx: 0 },
      private: { tx: 0, rx: 0 },
      sandbox: { tx: 0, rx: 0 },
      ingress: { tx: 0, rx: 0 },
    },
  };
}

function addTotals(into: UsageTotals, u: UsageRecord | UsageTotals): void {
  into.sandboxes += "sandboxes" in u ? u.sandboxes : 1;
  into.lifetimeSeconds = round3(into.lifetimeSeconds + u.lifetimeSeconds);
  into.cpuSeconds = round3(into.cpuSeconds + u.cpuSeconds);
  into.memoryGibSeconds = round3(into.memoryGibSeconds + u.memoryGibSeconds);
  into.peakMemoryMib = Math.max(into.peakMemoryMib, "memoryPeakMib" in u ? u.memoryPeakMib : u.peakMemoryMib);
  for (const c of Object.keys(into.traffic) as (keyof UsageTotals["traffic"])[]) {
    into.traffic[c].tx += u.traffic[c]?.tx ?? 0;
    into.traffic[c].rx += u.traffic[c]?.rx ?? 0;
  }
}

export class JobService {
  readonly #store: Store;
  readonly #sandboxes: SandboxService;
  readonly artifacts: ArtifactStore;
  readonly config: JobsConfig;
  readonly #cp: ControlPlaneConfig;
  readonly #log: Logger;
  /** This dispatcher's id on the attempts it runs (unique per process start). */
  readonly holder: string;
  readonly #runners = new Map<string, Runner>();
  #isLeader: () => boolean = () => true;
  #timer: NodeJS.Timeout | undefined;
  #passing: Promise<void> | undefined;
  #again = false;
  #started = false;
  #closed = false;

  constructor(opts: {
    store: Store;
    sandboxes: SandboxService;
    artifacts: ArtifactStore;
    config: JobsConfig;
    controlPlane: ControlPlaneConfig;
    log: Logger;
    holder?: string;
  }) {
    this.#store = opts.store;
    this.#sandboxes = opts.sandboxes;
    this.artifacts = opts.artifacts;
    this.config = opts.config;
    this.#cp = opts.controlPlane;
    this.#log = opts.log;
    this.holder = opts.holder ?? `jobs/${process.pid}/${newId()}`;
  }

  // ---------------------------------------------------------------- submit

  async submit(caller: Caller, req: JobRequest): Promise<JobRecord> {
    const tenantId = caller.tenant.id;
    if (req.inputs !== undefined && req.inputFiles !== undefined) {
      throw new ApiError(
        "VALIDATION_FAILED",
        "give inputs (JSON values) or inputFiles (uploaded files), not both",
      );
    }
    if (req.taskTimeoutMs + this.config.sandboxGraceMs > this.#cp.maxTimeoutMs) {
      throw new ApiError(
        "VALIDATION_FAILED",
        `taskTimeoutMs ${req.taskTimeoutMs} is too long for this server: task sandboxes may live at most ${this.#cp.maxTimeoutMs} ms, ${this.config.sandboxGraceMs} ms of which are kept beyond the task timeout`,
      );
    }
    // INVARIANT: another tenant's template answers exactly like a missing one.
    if (!(await this.#sandboxes.templates.readable(req.template, caller))) {
      throw new ApiError(
        "TEMPLATE_NOT_FOUND",
        `no built template named ${req.template}; list them with GET /v1/templates or build it with POST /v1/templates`,
      );
    }
    let network: NormalizedPolicy | null = null;
    if (req.network) network = await this.#sandboxes.checkPolicy(tenantId, req.network, "network.policy");
    for (const k of Object.keys(req.metadata)) {
      if (k.startsWith("firebreak.")) {
        throw new ApiError(
          "VALIDATION_FAILED",
          `metadata.${k}: keys starting with "firebreak." are the platform's`,
        );
      }
    }
    const files: JobFile[] = [];
    const seen = new Set<string>();
    for (const [i, f] of req.files.entries()) {
      if (!isSafeRelativePath(f.path) || seen.has(f.path)) {
        throw new ApiError(
          "VALIDATION_FAILED",
          `files.${i}.path: ${JSON.stringify(f.path)} must be a relative path below the task's directory (no "..", no empty segments) and appear once`,
        );
      }
      seen.add(f.path);
      files.push({
        path: f.path,
        ...(await this.#ownedFile(tenantId, f.sha256, `files.${i}.sha256`)),
        ...(f.mode !== undefined ? { mode: f.mode } : {}),
      });
    }
    const outputs = req.outputs ?? DEFAULT_OUTPUTS;
    for (const [i, o] of outputs.entries()) {
      if (
        !(o.startsWith("/")
          ? o.length <= 1024 && !o.includes("\u0000") && !o.split("/").includes("..")
          : isSafeRelativePath(o))
      ) {
        throw new ApiError(
          "VALIDATION_FAILED",
          `outputs.${i}: ${JSON.stringify(o)} must be a path relative to the task's directory (no "..") or an absolute path`,
        );
      }
    }
    let inputs: TaskInput[];
    if (req.inputFiles !== undefined) {
      inputs = [];
      for (const [i, f] of req.inputFiles.entries()) {
        if (!isSafeRelativePath(f.name) || f.name.includes("/")) {
          throw new ApiError("VALIDATION_FAILED", `inputFiles.${i}.name: a file name without "/"`);
        }
        const owned = await this.#ownedFile(tenantId, f.sha256, `inputFiles.${i}.sha256`);
        inputs.push({ kind: "file", sha256: owned.sha256, bytes: owned.bytes, name: f.name });
      }
    } else if (req.inputs !== undefined) {
      inputs = req.inputs.map((value) => ({ kind: "json", value }));
    } else {
      inputs = [{ kind: "none" }];
    }
    if (inputs.length === 0)
      throw new ApiError(
        "VALIDATION_FAILED",
        "inputs: give at least one input, or none at all for a single task",
      );
    if (inputs.length > this.config.maxTasks) {
      throw new ApiError(
        "VALIDATION_FAILED",
        `a job has at most ${this.config.maxTasks} tasks; this one has ${inputs.length}`,
      );
    }
    const spec: JobSpec = {
      template: req.template,
      command: req.command,
      vcpus: req.vcpus,
      memoryMib: req.memoryMib,
      network,
      envVars: req.envVars,
      metadata: req.metadata,
      taskTimeoutMs: req.taskTimeoutMs,
      retry: req.retry,
      parallelism: req.parallelism,
      outputs,
      outputsDefaulted: req.outputs === undefined,
      files,
      maxLogBytes: req.maxLogBytes,
      admin: caller.admin === true,
    };
    const now = iso();
    const job: JobRecord = {
      id: newId("job"),
      tenantId,
      createdByKey: caller.keyId,
      state: "queued",
      spec,
      taskCount: inputs.length,
      createdAt: now,
      startedAt: null,
      endedAt: null,
      cancelRequestedAt: null,
    };
    const tasks: TaskRecord[] = inputs.map((input, index) => ({
      jobId: job.id,
      index,
      state: "queued",
      input,
      attempts: 0,
      interruptions: 0,
      notBefore: now,
      exitCode: null,
      failure: null,
      message: null,
      resultAttempt: null,
      startedAt: null,
      endedAt: null,
    }));
    await this.#store.jobs.createJob(job, tasks);
    this.#log.info({ jobId: job.id, tenantId, tasks: tasks.length }, "job submitted");
    this.wake();
    return job;
  }

  /**
   * A file this tenant uploaded and the artifact store holds.
   * INVARIANT: another tenant's upload answers exactly like a missing one.
   */
  async #ownedFile(
    tenantId: string,
    sha256: string,
    field: string,
  ): Promise<{ sha256: string; bytes: number }> {
    const rec = SHA256_RE.test(sha256) ? await this.#store.jobs.getFile(tenantId, sha256) : undefined;
    if (!rec || !(await this.artifacts.has(sha256))) {
      throw new ApiError(
        "VALIDATION_FAILED",
        `${field}: no uploaded file ${sha256.slice(0, 64)}; upload it first with PUT /v1/jobs/files and use the sha256 it answers`,
      );
    }
    return rec;
  }

  /** Stores an uploaded file (content-addressed) for this tenant's jobs. */
  async upload(
    tenantId: string,
    body: AsyncIterable<Uint8Array>,
  ): Promise<{ sha256: string; bytes: number }> {
    const put = await this.artifacts.put(body, this.config.maxUploadBytes);
    if ("tooLarge" in put) {
      throw new ApiError(
        "PAYLOAD_TOO_LARGE",
        `files for jobs are limited to ${this.config.maxUploadBytes} bytes each (FIREBREAK_JOB_MAX_FILE_BYTES)`,
      );
    }
    await this.#store.jobs.recordFile(tenantId, put.sha256, put.bytes, iso());
    return put;
  }

  // ---------------------------------------------------------------- reads

  /** A job of this tenant. INVARIANT: another tenant's id is NOT_FOUND, never FORBIDDEN. */
  async get(tenantId: string, id: string): Promise<JobRecord> {
    const job = await this.#store.jobs.getJob(id);
    if (!job || job.tenantId !== tenantId) throw new ApiError("NOT_FOUND", `no job ${id}`);
    return job;
  }

  list(q: { tenantId: string; states?: JobState[]; limit: number; cursor?: string }) {
    return this.#store.jobs.listJobs(q);
  }

  counts(ids: string[]): Promise<Map<string, Record<TaskState, number>>> {
    return this.#store.jobs.taskCounts(ids);
  }

  async tasks(tenantId: string, id: string, q: { fromIndex?: number; limit: number }) {
    await this.get(tenantId, id);
    const tasks = await this.#store.jobs.listTasks(id, q);
    const attempts = tasks.length ? await this.#store.jobs.listAttempts(id) : [];
    const byTask = new Map<number, AttemptRecord[]>();
    for (const a of attempts) byTask.set(a.index, [...(byTask.get(a.index) ?? []), a]);
    return tasks.map((t) => ({ task: t, attempts: byTask.get(t.index) ?? [] }));
  }

  async task(tenantId: string, id: string, index: number) {
    await this.get(tenantId, id);
    const task = await this.#store.jobs.getTask(id, index);
    if (!task) throw new ApiError("NOT_FOUND", `job ${id} has no task ${index}`);
    return { task, attempts: await this.#store.jobs.listAttempts(id, index) };
  }

  /** The attempt whose logs and artifacts a reader means: the one given, else the task's result, else its latest. */
  async attemptOf(tenantId: string, id: string, index: number, attempt?: number) {
    const { task, attempts } = await this.task(tenantId, id, index);
    const n = attempt ?? task.resultAttempt ?? attempts.at(-1)?.attempt;
    const a = attempts.find((x) => x.attempt === n);
    if (attempt !== undefined && !a)
      throw new ApiError("NOT_FOUND", `task ${index} of job ${id} has no attempt ${attempt}`);
    return { task, attempt: a, attempts };
  }

  readLogs(id: string, index: number, attempt: number, afterSeq: number, limit = 256): Promise<LogChunk[]> {
    return this.#store.jobs.readLogs(id, index, attempt, afterSeq, limit);
  }

  /** An artifact's bytes (of the result attempt unless `attempt` is given). */
  async artifact(tenantId: string, id: string, index: number, path: string, attempt?: number) {
    const { attempt: a } = await this.attemptOf(tenantId, id, index, attempt);
    const ref = a?.artifacts.find((r) => r.path === path);
    if (!ref || !("sha256" in ref)) {
      throw new ApiError(
        "NOT_FOUND",
        `task ${index} of job ${id} has no artifact ${JSON.stringify(path)}${ref ? ` (${ref.error})` : ""}; list them with GET /v1/jobs/${id}/tasks/${index}`,
      );
    }
    const obj = await this.artifacts.get(ref.sha256);
    if (!obj) throw new ApiError("NOT_FOUND", `the artifact ${path} is no longer in the artifact store`);
    return { ref, ...obj };
  }

  /** Stops a job: queued tasks at once, running ones as their sandboxes are killed. */
  async cancel(tenantId: string, id: string): Promise<JobRecord> {
    const job = await this.get(tenantId, id);
    if (isFinalJobState(job.state)) return job;
    await this.#store.jobs.requestCancel(id, iso());
    this.wake();
    return this.get(tenantId, id);
  }

  /**
   * The job's cost tree: every attempt's sandbox usage (retries and reruns
   * included and labelled), per task and in total. The total is the sum of
   * the attempts', which is the ledger's usage of everything rooted at the job.
   */
  async usage(tenantId: string, id: string) {
    const job = await this.get(tenantId, id);
    const attempts = await this.#store.jobs.listAttempts(id);
    const tasks = new Map<number, { index: number; attempts: AttemptUsage[]; total: UsageTotals }>();
    const total = emptyTotals();
    let prev: AttemptRecord | undefined;
    for (const a of attempts) {
      let sandboxId = a.sandboxId;
      if (!sandboxId) {
        // A create that failed (or a restart before the id was written) still made a billed record.
        const found = await this.#sandboxes.list({
          tenantId,
          metadata: { "firebreak.attempt": a.id },
          limit: 1,
        });
        sandboxId = found.sandboxes[0]?.id ?? null;
      }
      const rec = sandboxId ? await this.#store.getUsage(sandboxId) : undefined;
      const kind =
        a.attempt === 1
          ? "initial"
          : prev?.index === a.index && prev.state === "interrupted"
            ? "rerun"
            : "retry";
      prev = a;
      let t = tasks.get(a.index);
      if (!t) {
        t = { index: a.index, attempts: [], total: emptyTotals() };
        tasks.set(a.index, t);
      }
      let usage: UsageTotals | null = null;
      if (rec) {
        usage = emptyTotals();
        addTotals(usage, rec);
        addTotals(t.total, rec);
        addTotals(total, rec);
      }
      t.attempts.push({
        attempt: a.attempt,
        kind,
        state: a.state,
        sandboxId,
        usage,
        final: rec?.final ?? false,
      });
    }
    return { jobId: job.id, state: job.state, tasks: [...tasks.values()], total };
  }

  // ---------------------------------------------------------------- dispatcher

  /**
   * Starts dispatching: a pass now and every dispatchIntervalMs, while
   * `isLeader()` (the `jobs` lease, with replicas). Run after the sandbox
   * service's recovery, so sandboxes lost in a restart are already ended.
   */
  start(opts: { isLeader?: () => boolean } = {}): void {
    this.#isLeader = opts.isLeader ?? (() => true);
    this.#started = true;
    this.#timer = setInterval(() => this.wake(), this.config.dispatchIntervalMs);
    this.#timer.unref();
    this.wake();
  }

  /** A pass soon (after a submit, an attempt's end, a cancel). */
  wake(): void {
    if (!this.#started || this.#closed) return;
    if (this.#passing) {
      this.#again = true;
      return;
    }
    this.#passing = this.pass()
      .catch((e) => this.#log.error({ err: e }, "job dispatch pass failed"))
      .finally(() => {
        this.#passing = undefined;
        if (this.#again) {
          this.#again = false;
          setImmediate(() => this.wake());
        }
      });
  }

  /** Waits for the pass in progress (tests). */
  async idle(): Promise<void> {
    while (this.#passing) await this.#passing;
  }

  /** Attempts this process runs now. */
  get running(): number {
    return this.#runners.size;
  }

  /** One dispatch pass: take over orphans, stop cancelled jobs' tasks, start ready tasks. */
  async pass(): Promise<void> {
    if (this.#closed) return;
    if (!this.#isLeader()) {
      // INVARIANT: only the lease holder runs attempts; a replica that lost
      // the lease stops its own (the new holder requeues them).
      this.#stopWhere(() => true, "lease");
      return;
    }
    const running = await this.#recoverOrphans();
    const perJob = new Map<string, number>();
    for (const a of running) perJob.set(a.jobId, (perJob.get(a.jobId) ?? 0) + 1);
    for (const job of await this.#store.jobs.listActiveJobs()) {
      if (this.#closed || !this.#isLeader()) return;
      if (job.state === "cancelling") {
        this.#stopWhere((r) => r.jobId === job.id, "cancel");
        continue;
      }
      const spec = job.spec as JobSpec;
      const room = Math.min(
        spec.parallelism - (perJob.get(job.id) ?? 0),
        this.config.maxConcurrentTasks - this.#runners.size,
      );
      if (room <= 0) continue;
      for (const task of await this.#store.jobs.readyTasks(job.id, iso(), room)) {
        if (await this.#launch(job, spec, task)) perJob.set(job.id, (perJob.get(job.id) ?? 0) + 1);
      }
    }
  }

  #stopWhere(match: (r: Runner) => boolean, reason: AbortReason): void {
    for (const r of this.#runners.values()) if (match(r) && !r.abort.signal.aborted) r.abort.abort(reason);
  }

  async #launch(job: JobRecord, spec: JobSpec, task: TaskRecord): Promise<boolean> {
    const attempt: AttemptRecord = {
      jobId: job.id,
      index: task.index,
      attempt: task.attempts + 1,
      id: newId("att"),
      holder: this.holder,
      state: "running",
      sandboxId: null,
      startedAt: iso(),
      endedAt: null,
      exitCode: null,
      failure: null,
      message: null,
      logBytes: 0,
      logDroppedBytes: 0,
      artifacts: [],
      timings: {},
    };
    if (!(await this.#store.jobs.claimTask(attempt))) return false;
    const abort = new AbortController();
    const done = this.#runAndRecord(job, spec, task, attempt, abort.signal)
      .catch((e) =>
        this.#log.error({ jobId: job.id, task: task.index, err: e }, "job task attempt failed to record"),
      )
      .finally(() => {
        this.#runners.delete(attempt.id);
        this.wake();
      });
    this.#runners.set(attempt.id, { jobId: job.id, abort, done });
    return true;
  }

  async #runAndRecord(
    job: JobRecord,
    spec: JobSpec,
    task: TaskRecord,
    attempt: AttemptRecord,
    signal: AbortSignal,
  ): Promise<void> {
    const tenant = await this.#store.getTenant(job.tenantId);
    let outcome: AttemptOutcome;
    if (!tenant) {
      outcome = {
        kind: "ended",
        state: "failed",
        exitCode: null,
        failure: "infrastructure",
        message: "the job's tenant no longer exists",
        logBytes: 0,
        logDroppedBytes: 0,
        artifacts: [],
        timings: {},
      };
    } else {
      const caller: Caller = { keyId: job.createdByKey, tenant, admin: spec.admin };
      outcome = await runAttempt({
        job,
        spec,
        task,
        attempt,
        caller,
        sandboxes: this.#sandboxes,
        jobs: this.#store.jobs,
        artifacts: this.artifacts,
        config: this.config,
        log: this.#log,
        signal,
      });
    }
    if (outcome.kind === "lost") return;
    if (outcome.kind === "deferred") {
      this.#log.debug({ jobId: job.id, task: task.index, why: outcome.message }, "task deferred");
      await this.#store.jobs.releaseClaim(job.id, task.index, attempt.attempt, this.holder, {
        at: iso(),
        notBefore: iso(Date.now() + this.config.deferMs),
      });
      return;
    }
    const { kind: _, ...end } = outcome;
    const written = await this.#store.jobs.finishAttempt(
      this.#finish(spec, task, attempt, { ...end, endedAt: iso() }, this.holder),
    );
    this.#log.info(
      {
        jobId: job.id,
        task: task.index,
        attempt: attempt.attempt,
        state: end.state,
        exitCode: end.exitCode,
        failure: end.failure,
        written,
      },
      "task attempt ended",
    );
  }

  /** The attempt's end and the task's next state under the retry policy. */
  #finish(
    spec: JobSpec,
    task: TaskRecord,
    attempt: AttemptRecord,
    end: AttemptFinish["end"],
    holder: string,
  ): AttemptFinish {
    const base = { jobId: task.jobId, index: task.index, attempt: attempt.attempt, holder, end };
    const result = { exitCode: end.exitCode, failure: end.failure, message: end.message };
    if (end.state === "succeeded" || end.state === "cancelled") {
      return { ...base, task: { state: end.state, ...result, interrupted: false } };
    }
    if (end.state === "interrupted") {
      // The platform's failure, not the task's: it runs again, a bounded number of times.
      if (task.interruptions + 1 > this.config.maxInterruptions) {
        return {
          ...base,
          task: {
            state: "failed",
            exitCode: null,
            failure: "infrastructure",
            message: `the task was interrupted ${task.interruptions + 1} times (control plane restarts or handovers); last: ${end.message}`,
            interrupted: true,
          },
        };
      }
      return { ...base, task: { state: "queued", notBefore: iso(), ...result, interrupted: true } };
    }
    const counted = attempt.attempt - task.interruptions;
    const d = retryDecision(spec.retry, end.failure ?? "infrastructure", end.exitCode, counted);
    if (d.retry) {
      return {
        ...base,
        task: { state: "queued", notBefore: iso(Date.now() + d.delayMs), ...result, interrupted: false },
      };
    }
    return { ...base, task: { state: "failed", ...result, interrupted: false } };
  }

  /**
   * Attempts held by another dispatcher (one that died, or lost the lease)
   * end as interrupted and their tasks run again, each only once its sandbox
   * has ended. Returns the attempts still running afterwards (all holders).
   */
  async #recoverOrphans(): Promise<AttemptRecord[]> {
    const running = await this.#store.jobs.listRunningAttempts();
    const still: AttemptRecord[] = [];
    for (const a of running) {
      if (a.holder === this.holder) {
        still.push(a);
        continue;
      }
      if (!(await this.#orphanSandboxesEnded(a))) {
        still.push(a);
        continue;
      }
      const [job, task] = await Promise.all([
        this.#store.jobs.getJob(a.jobId),
        this.#store.jobs.getTask(a.jobId, a.index),
      ]);
      if (!job || !task) continue;
      const cancelled = job.cancelRequestedAt !== null;
      const end: AttemptFinish["end"] = {
        state: cancelled ? "cancelled" : "interrupted",
        endedAt: iso(),
        exitCode: null,
        failure: cancelled ? null : "infrastructure",
        message: cancelled
          ? "the job was cancelled"
          : "the control plane running this attempt stopped (restart or lease handover); the task runs again",
        logBytes: 0,
        logDroppedBytes: 0,
        artifacts: [],
        timings: a.timings,
      };
      // The task as it was when this attempt was claimed (its counters before it).
      const before = { ...task, attempts: a.attempt - 1 };
      const ok = await this.#store.jobs.finishAttempt(
        this.#finish(job.spec as JobSpec, before, a, end, a.holder),
      );
      if (ok)
        this.#log.warn(
          { jobId: a.jobId, task: a.index, attempt: a.attempt, from: a.holder },
          "took over a lost task attempt",
        );
    }
    return still;
  }

  /** Whether every sandbox of an orphaned attempt has ended (killing the ones still running). */
  async #orphanSandboxesEnded(a: AttemptRecord): Promise<boolean> {
    const job = await this.#store.jobs.getJob(a.jobId);
    if (!job) return true;
    const found: SandboxRecord[] = [];
    if (a.sandboxId) {
      const s = await this.#store.getSandbox(a.sandboxId);
      if (s) found.push(s);
    } else {
      found.push(
        ...(
          await this.#sandboxes.list({
            tenantId: job.tenantId,
            metadata: { "firebreak.attempt": a.id },
            limit: 10,
          })
        ).sandboxes,
      );
    }
    let ended = true;
    for (const s of found) {
      if (isFinalState(s.state)) continue;
      if (s.state === "requested" || s.state === "starting") {
        ended = false; // its create is still in flight somewhere: look again next pass
        continue;
      }
      await this.#sandboxes.kill(job.tenantId, s.id, `job:${job.id}`, "job_attempt_lost").catch((e) => {
        this.#log.warn(
          { sandboxId: s.id, err: (e as Error).message },
          "killing a lost attempt's sandbox failed",
        );
      });
      const now = await this.#store.getSandbox(s.id);
      if (now && !isFinalState(now.state)) ended = false;
    }
    return ended;
  }

  /**
   * Stops dispatching; attempts running here end as interrupted (their
   * sandboxes killed) and run again at the next start. Call before the
   * sandbox service closes.
   */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#passing;
    this.#stopWhere(() => true, "shutdown");
    await Promise.all([...this.#runners.values()].map((r) => r.done));
  }
}
