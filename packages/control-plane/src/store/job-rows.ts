// Row codecs of the job tables, shared by both stores so records read back the
// same from SQLite and PostgreSQL.
import type {
  AttemptRecord,
  FailureKind,
  JobRecord,
  JobState,
  LogChunk,
  LogStream,
  TaskRecord,
  TaskState,
} from "./job-store.ts";

type Row = Record<string, unknown>;
const str = (v: unknown) => (v === null || v === undefined ? null : String(v));
const num = (v: unknown) => (v === null || v === undefined ? null : Number(v));

export function jobFrom(r: Row): JobRecord {
  return {
    id: String(r["id"]),
    tenantId: String(r["tenant_id"]),
    createdByKey: String(r["created_by_key"]),
    state: String(r["state"]) as JobState,
    spec: JSON.parse(String(r["spec"])),
    taskCount: Number(r["task_count"]),
    createdAt: String(r["created_at"]),
    startedAt: str(r["started_at"]),
    endedAt: str(r["ended_at"]),
    cancelRequestedAt: str(r["cancel_requested_at"]),
  };
}

export function jobCols(j: JobRecord): Record<string, string | number | null> {
  return {
    id: j.id,
    tenant_id: j.tenantId,
    created_by_key: j.createdByKey,
    state: j.state,
    spec: JSON.stringify(j.spec),
    task_count: j.taskCount,
    created_at: j.createdAt,
    started_at: j.startedAt,
    ended_at: j.endedAt,
    cancel_requested_at: j.cancelRequestedAt,
  };
}

export function taskFrom(r: Row): TaskRecord {
  return {
    jobId: String(r["job_id"]),
    index: Number(r["idx"]),
    state: String(r["state"]) as TaskState,
    input: JSON.parse(String(r["input"])),
    attempts: Number(r["attempts"]),
    interruptions: Number(r["interruptions"]),
    notBefore: String(r["not_before"]),
    exitCode: num(r["exit_code"]),
    failure: str(r["failure"]) as FailureKind | null,
    message: r["message"] === null ? null : JSON.parse(String(r["message"])),
    resultAttempt: num(r["result_attempt"]),
    startedAt: str(r["started_at"]),
    endedAt: str(r["ended_at"]),
  };
}

export function taskCols(t: TaskRecord): Record<string, string | number | null> {
  return {
    job_id: t.jobId,
    idx: t.index,
    state: t.state,
    input: JSON.stringify(t.input),
    attempts: t.attempts,
    interruptions: t.interruptions,
    not_before: t.notBefore,
    exit_code: t.exitCode,
    failure: t.failure,
    message: t.message === null ? null : JSON.stringify(t.message),
    result_attempt: t.resultAttempt,
    started_at: t.startedAt,
    ended_at: t.endedAt,
  };
}

export function attemptFrom(r: Row): AttemptRecord {
  return {
    jobId: String(r["job_id"]),
    index: Number(r["idx"]),
    attempt: Number(r["attempt"]),
    id: String(r["id"]),
    holder: String(r["holder"]),
    state: String(r["state"]) as AttemptRecord["state"],
    sandboxId: str(r["sandbox_id"]),
    startedAt: String(r["started_at"]),
    endedAt: str(r["ended_at"]),
    exitCode: num(r["exit_code"]),
    failure: str(r["failure"]) as FailureKind | null,
    message: r["message"] === null ? null : JSON.parse(String(r["message"])),
    logBytes: Number(r["log_bytes"]),
    logDroppedBytes: Number(r["log_dropped_bytes"]),
    artifacts: JSON.parse(String(r["artifacts"])),
    timings: JSON.parse(String(r["timings"])),
  };
}

export function attemptCols(a: AttemptRecord): Record<string, string | number | null> {
  return {
    job_id: a.jobId,
    idx: a.index,
    attempt: a.attempt,
    id: a.id,
    holder: a.holder,
    state: a.state,
    sandbox_id: a.sandboxId,
    started_at: a.startedAt,
    ended_at: a.endedAt,
    exit_code: a.exitCode,
    failure: a.failure,
    message: a.message === null ? null : JSON.stringify(a.message),
    log_bytes: a.logBytes,
    log_dropped_bytes: a.logDroppedBytes,
    artifacts: JSON.stringify(a.artifacts),
    timings: JSON.stringify(a.timings),
  };
}

export function logFrom(r: Row): LogChunk {
  const d = r["data"] as Uint8Array;
  return {
    seq: Number(r["seq"]),
    jobId: String(r["job_id"]),
    index: Number(r["idx"]),
    attempt: Number(r["attempt"]),
    stream: String(r["stream"]) as LogStream,
    data: new Uint8Array(d.buffer, d.byteOffset, d.byteLength),
    at: String(r["at"]),
  };
}

/** A job list cursor: the last row's seq in base 36. */
export function parseCursor(cursor: string | undefined): number | undefined {
  if (!cursor) return undefined;
  const n = Number.parseInt(cursor, 36);
  return Number.isFinite(n) ? Math.min(n, Number.MAX_SAFE_INTEGER) : 0;
}
