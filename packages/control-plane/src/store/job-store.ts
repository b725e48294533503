// The job queue's durable state (src/jobs): jobs, their tasks, every attempt
// at a task, the attempts' bounded logs, and which content-addressed files a
// tenant uploaded. Part of the Store (store.jobs) with one implementation per
// backend (sqlite-job-store.ts, pg-job-store.ts), checked by the same contract
// suite (job-store.contract.ts, run from store.contract.ts).
//
// The queue lives here so a control plane restart loses nothing: a task is
// claimed by one dispatcher at a time (claimTask is conditional), an attempt's
// end and its task's next state are one transaction (finishAttempt), and a
// job reaches its final state in the transaction that ends its last task.
//
// Times are ISO-8601 strings (UTC, millisecond precision), compared as
// strings. JSON columns hold what the service gives them.

/** queued: nothing started; cancelling: cancel asked, tasks still stopping. */
export type JobState = "queued" | "running" | "cancelling" | "succeeded" | "failed" | "cancelled";
export const JOB_STATES: readonly JobState[] = [
  "queued",
  "running",
  "cancelling",
  "succeeded",
  "failed",
  "cancelled",
];
export const ACTIVE_JOB_STATES: readonly JobState[] = ["queued", "running", "cancelling"];

export type TaskState = "queued" | "running" | "succeeded" | "failed" | "cancelled";
export const TASK_STATES: readonly TaskState[] = ["queued", "running", "succeeded", "failed", "cancelled"];

/**
 * Why a task (or an attempt) failed: its command exited non-zero (exit_code),
 * ran past the task timeout and was killed (timeout), was killed by a signal
 * or its sandbox was ended from outside (killed), or the platform could not
 * run it (infrastructure: the sandbox did not start, the agent failed).
 */
export type FailureKind = "exit_code" | "timeout" | "killed" | "infrastructure";
export const FAILURE_KINDS: readonly FailureKind[] = ["exit_code", "timeout", "killed", "infrastructure"];

/**
 * running; succeeded; failed (see FailureKind); interrupted (the platform
 * stopped it: control plane restart, shutdown, lease handover; it does not
 * count against the retry policy); cancelled (the job was cancelled).
 */
export type AttemptState = "running" | "succeeded" | "failed" | "interrupted" | "cancelled";

/** A task's input: a JSON value, a file the tenant uploaded, or nothing. */
export type TaskInput =
  | { kind: "none" }
  | { kind: "json"; value: unknown }
  | { kind: "file"; sha256: string; bytes: number; name: string };

export interface JobRecord {
  id: string;
  tenantId: string;
  createdByKey: string;
  state: JobState;
  /** The job's specification (jobs/spec.ts), JSON, opaque to the store. */
  spec: unknown;
  taskCount: number;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  cancelRequestedAt: string | null;
}

export interface TaskRecord {
  jobId: string;
  index: number;
  state: TaskState;
  input: TaskInput;
  /** Attempts made (interrupted ones included). */
  attempts: number;
  /** Attempts the platform interrupted (not counted by the retry policy). */
  interruptions: number;
  /** The next attempt does not start before this (retry backoff). */
  notBefore: string;
  exitCode: number | null;
  failure: FailureKind | null;
  message: string | null;
  /** The attempt that decided the task's state (its logs and artifacts are the task's). */
  resultAttempt: number | null;
  startedAt: string | null;
  endedAt: string | null;
}

/** An output file collected into the artifact store (or why it was not). */
export type ArtifactRef =
  | { path: string; sha256: string; bytes: number }
  | { path: string; error: "missing" | "too_large" | "limit" | "unreadable"; detail?: string };

export interface AttemptRecord {
  jobId: string;
  index: number;
  /** 1, 2, ... per task. */
  attempt: number;
  /** Unique id (labels the attempt's sandbox: metadata firebreak.attempt). */
  id: string;
  /** The dispatcher that runs it (leader.ts holder id). */
  holder: string;
  state: AttemptState;
  sandboxId: string | null;
  startedAt: string;
  endedAt: string | null;
  exitCode: number | null;
  failure: FailureKind | null;
  message: string | null;
  /** Output bytes the command wrote, and how many of them were not kept. */
  logBytes: number;
  logDroppedBytes: number;
  artifacts: ArtifactRef[];
  /** Phases in ms: sandbox, upload, command, collect, teardown. */
  timings: Record<string, number>;
}

export type LogStream = "stdout" | "stderr" | "truncated";

export interface LogChunk {
  /** Assigned by the store (increasing); 0 when appending. */
  seq: number;
  jobId: string;
  index: number;
  attempt: number;
  stream: LogStream;
  data: Uint8Array;
  at: string;
}

/** An attempt's end and its task's next state, written together. */
export interface AttemptFinish {
  jobId: string;
  index: number;
  attempt: number;
  /** The holder the attempt must still have (recovery passes the old one). */
  holder: string;
  end: {
    state: Exclude<AttemptState, "running">;
    endedAt: string;
    exitCode: number | null;
    failure: FailureKind | null;
    message: string | null;
    logBytes: number;
    logDroppedBytes: number;
    artifacts: ArtifactRef[];
    timings: Record<string, number>;
  };
  task: {
    /** queued: it runs again (not before notBefore). A queued task of a job being cancelled is cancelled instead. */
    state: Exclude<TaskState, "running">;
    notBefore?: string;
    exitCode: number | null;
    failure: FailureKind | null;
    message: string | null;
    /** The attempt was interrupted by the platform (counts in `interruptions`). */
    interrupted: boolean;
  };
}

export interface JobStore {
  /** Inserts a job and all its tasks (one transaction). */
  createJob(job: JobRecord, tasks: TaskRecord[]): Promise<void>;
  getJob(id: string): Promise<JobRecord | undefined>;
  /** A tenant's jobs, newest first, in cursor pages. */
  listJobs(q: {
    tenantId: string;
    states?: JobState[];
    limit: number;
    cursor?: string;
  }): Promise<{ jobs: JobRecord[]; nextCursor: string | null }>;
  /** Every job not final (queued, running, cancelling), all tenants, oldest first. */
  listActiveJobs(): Promise<JobRecord[]>;
  /** Tasks per state of each job. */
  taskCounts(jobIds: string[]): Promise<Map<string, Record<TaskState, number>>>;

  getTask(jobId: string, index: number): Promise<TaskRecord | undefined>;
  /** Tasks by index, from `fromIndex`. */
  listTasks(jobId: string, q: { fromIndex?: number; limit: number }): Promise<TaskRecord[]>;
  /** Queued tasks whose notBefore has come, lowest index first. */
  readyTasks(jobId: string, now: string, limit: number): Promise<TaskRecord[]>;

  /** A task's attempts in order (every task of the job when index is omitted). */
  listAttempts(jobId: string, index?: number): Promise<AttemptRecord[]>;
  /** Every running attempt (all jobs). */
  listRunningAttempts(): Promise<AttemptRecord[]>;

  /**
   * Starts an attempt: the task goes queued -> running (only if it is queued
   * and has made exactly a.attempt - 1 attempts), the attempt is inserted, a
   * queued job becomes running. False (nothing written) otherwise, or when
   * the job is not queued or running. Atomic: of concurrent claims of one
   * task at most one wins.
   * INVARIANT: a task has at most one running attempt.
   */
  claimTask(a: AttemptRecord): Promise<boolean>;
  /**
   * Takes a claim back as if it never happened (the sandbox could not be had
   * yet: quota, capacity): the attempt row goes, the task is queued again
   * with one attempt fewer, not before `notBefore`. Only while the attempt is
   * running and held by `holder`.
   */
  releaseClaim(
    jobId: string,
    index: number,
    attempt: number,
    holder: string,
    when: { at: string; notBefore: string },
  ): Promise<boolean>;
  /** Records the sandbox (or timings) of a running attempt held by `holder`. */
  updateAttempt(
    jobId: string,
    index: number,
    attempt: number,
    holder: string,
    patch: { sandboxId?: string; timings?: Record<string, number> },
  ): Promise<boolean>;
  /**
   * Ends a running attempt held by `f.holder` and moves its task on, in one
   * transaction; when that was the job's last unfinished task, the job ends
   * too (cancelled if any task was cancelled, else failed if any failed,
   * else succeeded). False (nothing written) when the attempt is no longer
   * running or held by f.holder.
   * INVARIANT: an attempt ends once; a task's result is written once per attempt.
   */
  finishAttempt(f: AttemptFinish): Promise<boolean>;
  /**
   * Asks a job to stop: its queued tasks are cancelled now; it is
   * `cancelling` while tasks still run (their attempts end as cancelled),
   * `cancelled` at once when none do. False when it has already ended.
   */
  requestCancel(jobId: string, at: string): Promise<boolean>;

  /** Appends output chunks (seq assigned in order). */
  appendLogs(chunks: LogChunk[]): Promise<void>;
  /** An attempt's chunks with seq > afterSeq, in order, at most `limit`. */
  readLogs(
    jobId: string,
    index: number,
    attempt: number,
    afterSeq: number,
    limit: number,
  ): Promise<LogChunk[]>;

  /** Records that a tenant uploaded a file (content address); again is harmless. */
  recordFile(tenantId: string, sha256: string, bytes: number, at: string): Promise<void>;
  /** A file this tenant uploaded (another tenant's answers undefined). */
  getFile(tenantId: string, sha256: string): Promise<{ sha256: string; bytes: number } | undefined>;
}

/** A job's final state from its tasks' (every one final). */
export function finalJobState(counts: Record<TaskState, number>): "succeeded" | "failed" | "cancelled" {
  if (counts.cancelled > 0) return "cancelled";
  if (counts.failed > 0) return "failed";
  return "succeeded";
}

export function emptyCounts(): Record<TaskState, number> {
  return { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
}

export function isFinalJobState(s: JobState): boolean {
  return s === "succeeded" || s === "failed" || s === "cancelled";
}
