// The job tables in the SQLite store (store.jobs of SqliteStore). Every
// method that must be atomic is one BEGIN IMMEDIATE transaction: SQLite's
// single writer serializes them.
import type { DatabaseSync, SQLInputValue } from "node:sqlite";
import {
  attemptCols,
  attemptFrom,
  jobCols,
  jobFrom,
  logFrom,
  parseCursor,
  taskCols,
  taskFrom,
} from "./job-rows.ts";
import {
  type AttemptFinish,
  type AttemptRecord,
  emptyCounts,
  finalJobState,
  type JobRecord,
  type JobState,
  type JobStore,
  type LogChunk,
  type TaskRecord,
  type TaskState,
} from "./job-store.ts";

/** The job tables: SQLite migration 5 (sqlite-store.ts MIGRATIONS). */
export const SQLITE_JOBS_MIGRATION = `
  CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    created_by_key TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    task_count INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    cancel_requested_at TEXT
  );
  CREATE INDEX jobs_tenant_seq ON jobs(tenant_id, seq);
  CREATE INDEX jobs_state ON jobs(state, seq);
  CREATE TABLE job_tasks (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    interruptions INTEGER NOT NULL,
    not_before TEXT NOT NULL,
    exit_code INTEGER,
    failure TEXT,
    message TEXT,
    result_attempt INTEGER,
    started_at TEXT,
    ended_at TEXT,
    PRIMARY KEY (job_id, idx)
  );
  CREATE INDEX job_tasks_state ON job_tasks(job_id, state, idx);
  CREATE TABLE job_attempts (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    holder TEXT NOT NULL,
    state TEXT NOT NULL,
    sandbox_id TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    exit_code INTEGER,
    failure TEXT,
    message TEXT,
    log_bytes INTEGER NOT NULL,
    log_dropped_bytes INTEGER NOT NULL,
    artifacts TEXT NOT NULL,
    timings TEXT NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
  );
  CREATE INDEX job_attempts_state ON job_attempts(state);
  CREATE TABLE job_logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stream TEXT NOT NULL,
    data BLOB NOT NULL,
    at TEXT NOT NULL
  );
  CREATE INDEX job_logs_attempt ON job_logs(job_id, idx, attempt, seq);
  CREATE TABLE job_files (
    tenant_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, sha256)
  );
`;

type Row = Record<string, SQLInputValue>;

function insert(db: DatabaseSync, table: string, cols: Record<string, SQLInputValue>): void {
  const names = Object.keys(cols);
  db.prepare(`INSERT INTO ${table} (${names.join(", ")}) VALUES (${names.map(() => "?").join(", ")})`).run(
    ...Object.values(cols),
  );
}

export class SqliteJobStore implements JobStore {
  readonly #db: DatabaseSync;

  constructor(db: DatabaseSync) {
    this.#db = db;
  }

  #tx<T>(fn: () => T): T {
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      const out = fn();
      this.#db.exec("COMMIT");
      return out;
    } catch (e) {
      this.#db.exec("ROLLBACK");
      throw e;
    }
  }

  async createJob(job: JobRecord, tasks: TaskRecord[]): Promise<void> {
    this.#tx(() => {
      insert(this.#db, "jobs", jobCols(job));
      for (const t of tasks) insert(this.#db, "job_tasks", taskCols(t));
    });
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    const r = this.#db.prepare("SELECT * FROM jobs WHERE id = ?").get(id) as Row | undefined;
    return r ? jobFrom(r) : undefined;
  }

  async listJobs(q: { tenantId: string; states?: JobState[]; limit: number; cursor?: string }) {
    const limit = Math.max(1, Math.floor(q.limit));
    const where = ["tenant_id = ?"];
    const args: SQLInputValue[] = [q.tenantId];
    if (q.states?.length) {
      where.push(`state IN (${q.states.map(() => "?").join(", ")})`);
      args.push(...q.states);
    }
    const after = parseCursor(q.cursor);
    if (after !== undefined) {
      where.push("seq < ?");
      args.push(after);
    }
    const rows = this.#db
      .prepare(`SELECT * FROM jobs WHERE ${where.join(" AND ")} ORDER BY seq DESC LIMIT ?`)
      .all(...args, limit + 1) as Row[];
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      jobs: page.map(jobFrom),
      nextCursor: rows.length > limit && last ? Number(last["seq"]).toString(36) : null,
    };
  }

  async listActiveJobs(): Promise<JobRecord[]> {
    return (
      this.#db
        .prepare("SELECT * FROM jobs WHERE state IN ('queued', 'running', 'cancelling') ORDER BY seq")
        .all() as Row[]
    ).map(jobFrom);
  }

  async taskCounts(jobIds: string[]): Promise<Map<string, Record<TaskState, number>>> {
    const out = new Map<string, Record<TaskState, number>>();
    if (!jobIds.length) return out;
    for (const id of jobIds) out.set(id, emptyCounts());
    const rows = this.#db
      .prepare(
        `SELECT job_id, state, COUNT(*) AS n FROM job_tasks WHERE job_id IN (${jobIds.map(() => "?").join(", ")}) GROUP BY job_id, state`,
      )
      .all(...jobIds) as Row[];
    for (const r of rows) out.get(String(r["job_id"]))![String(r["state"]) as TaskState] = Number(r["n"]);
    return out;
  }

  async getTask(jobId: string, index: number): Promise<TaskRecord | undefined> {
    const r = this.#db.prepare("SELECT * FROM job_tasks WHERE job_id = ? AND idx = ?").get(jobId, index) as
      | Row
      | undefined;
    return r ? taskFrom(r) : undefined;
  }

  async listTasks(jobId: string, q: { fromIndex?: number; limit: number }): Promise<TaskRecord[]> {
    return (
      this.#db
        .prepare("SELECT * FROM job_tasks WHERE job_id = ? AND idx >= ? ORDER BY idx LIMIT ?")
        .all(jobId, q.fromIndex ?? 0, Math.max(1, Math.floor(q.limit))) as Row[]
    ).map(taskFrom);
  }

  async readyTasks(jobId: string, now: string, limit: number): Promise<TaskRecord[]> {
    if (limit < 1) return [];
    return (
      this.#db
        .prepare(
          "SELECT * FROM job_tasks WHERE job_id = ? AND state = 'queued' AND not_before <= ? ORDER BY idx LIMIT ?",
        )
        .all(jobId, now, Math.floor(limit)) as Row[]
    ).map(taskFrom);
  }

  async listAttempts(jobId: string, index?: number): Promise<AttemptRecord[]> {
    const rows =
      index === undefined
        ? this.#db.prepare("SELECT * FROM job_attempts WHERE job_id = ? ORDER BY idx, attempt").all(jobId)
        : this.#db
            .prepare("SELECT * FROM job_attempts WHERE job_id = ? AND idx = ? ORDER BY attempt")
            .all(jobId, index);
    return (rows as Row[]).map(attemptFrom);
  }

  async listRunningAttempts(): Promise<AttemptRecord[]> {
    return (
      this.#db
        .prepare("SELECT * FROM job_attempts WHERE state = 'running' ORDER BY started_at, job_id, idx")
        .all() as Row[]
    ).map(attemptFrom);
  }

  async claimTask(a: AttemptRecord): Promise<boolean> {
    return this.#tx(() => {
      const job = this.#db.prepare("SELECT state FROM jobs WHERE id = ?").get(a.jobId) as Row | undefined;
      if (!job || (job["state"] !== "queued" && job["state"] !== "running")) return false;
      // INVARIANT: one running attempt per task: claimed only while queued with the expected attempt count.
      const r = this.#db
        .prepare(
          `UPDATE job_tasks SET state = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, ?)
           WHERE job_id = ? AND idx = ? AND state = 'queued' AND attempts = ?`,
        )
        .run(a.startedAt, a.jobId, a.index, a.attempt - 1);
      if (Number(r.changes) !== 1) return false;
      insert(this.#db, "job_attempts", attemptCols({ ...a, state: "running" }));
      this.#db
        .prepare("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'")
        .run(a.startedAt, a.jobId);
      return true;
    });
  }

  async releaseClaim(
    jobId: string,
    index: number,
    attempt: number,
    holder: string,
    when: { at: string; notBefore: string },
  ): Promise<boolean> {
    return this.#tx(() => {
      const gone = this.#db
        .prepare(
          "DELETE FROM job_attempts WHERE job_id = ? AND idx = ? AND attempt = ? AND state = 'running' AND holder = ?",
        )
        .run(jobId, index, attempt, holder);
      if (Number(gone.changes) !== 1) return false;
      const cancelled = this.#cancelRequested(jobId);
      this.#db
        .prepare(
          `UPDATE job_tasks SET state = ?, attempts = attempts - 1, not_before = ?,
             started_at = CASE WHEN attempts - 1 = 0 THEN NULL ELSE started_at END,
             ended_at = CASE WHEN ? = 'cancelled' THEN ? ELSE ended_at END
           WHERE job_id = ? AND idx = ? AND state = 'running'`,
        )
        .run(
          cancelled ? "cancelled" : "queued",
          when.notBefore,
          cancelled ? "cancelled" : "queued",
          when.at,
          jobId,
          index,
        );
      this.#settleJob(jobId, when.at);
      return true;
    });
  }

  async updateAttempt(
    jobId: string,
    index: number,
    attempt: number,
    holder: string,
    patch: { sandboxId?: string; timings?: Record<string, number> },
  ): Promise<boolean> {
    const sets: string[] = [];
    const args: SQLInputValue[] = [];
    if (patch.sandboxId !== undefined) {
      sets.push("sandbox_id = ?");
      args.push(patch.sandboxId);
    }
    if (patch.timings !== undefined) {
      sets.push("timings = ?");
      args.push(JSON.stringify(patch.timings));
    }
    if (!sets.length) return true;
    const r = this.#db
      .prepare(
        `UPDATE job_attempts SET ${sets.join(", ")} WHERE job_id = ? AND idx = ? AND attempt = ? AND state = 'running' AND holder = ?`,
      )
      .run(...args, jobId, index, attempt, holder);
    return Number(r.changes) === 1;
  }

  #cancelRequested(jobId: string): boolean {
    const r = this.#db.prepare("SELECT cancel_requested_at FROM jobs WHERE id = ?").get(jobId) as
      | Row
      | undefined;
    return r !== undefined && r["cancel_requested_at"] !== null;
  }

  /** Ends the job when none of its tasks is queued or running (inside a transaction). */
  #settleJob(jobId: string, at: string): void {
    const counts = emptyCounts();
    for (const r of this.#db
      .prepare("SELECT state, COUNT(*) AS n FROM job_tasks WHERE job_id = ? GROUP BY state")
      .all(jobId) as Row[]) {
      counts[String(r["state"]) as TaskState] = Number(r["n"]);
    }
    if (counts.queued + counts.running > 0) return;
    this.#db
      .prepare(
        "UPDATE jobs SET state = ?, ended_at = ? WHERE id = ? AND state IN ('queued', 'running', 'cancelling')",
      )
      .run(finalJobState(counts), at, jobId);
  }

  async finishAttempt(f: AttemptFinish): Promise<boolean> {
    return this.#tx(() => {
      // INVARIANT: an attempt ends once, by its holder; its task and job move in the same transaction.
      const e = f.end;
      const r = this.#db
        .prepare(
          `UPDATE job_attempts SET state = ?, ended_at = ?, exit_code = ?, failure = ?, message = ?, log_bytes = ?,
             log_dropped_bytes = ?, artifacts = ?, timings = ?
           WHERE job_id = ? AND idx = ? AND attempt = ? AND state = 'running' AND holder = ?`,
        )
        .run(
          e.state,
          e.endedAt,
          e.exitCode,
          e.failure,
          e.message === null ? null : JSON.stringify(e.message),
          e.logBytes,
          e.logDroppedBytes,
          JSON.stringify(e.artifacts),
          JSON.stringify(e.timings),
          f.jobId,
          f.index,
          f.attempt,
          f.holder,
        );
      if (Number(r.changes) !== 1) return false;
      // A retry of a job being cancelled does not run: the task is cancelled.
      const state = f.task.state === "queued" && this.#cancelRequested(f.jobId) ? "cancelled" : f.task.state;
      const final = state !== "queued";
      this.#db
        .prepare(
          `UPDATE job_tasks SET state = ?, not_before = COALESCE(?, not_before), exit_code = ?, failure = ?, message = ?,
             result_attempt = ?, interruptions = interruptions + ?, ended_at = ?
           WHERE job_id = ? AND idx = ? AND state = 'running'`,
        )
        .run(
          state,
          f.task.notBefore ?? null,
          f.task.exitCode,
          f.task.failure,
          f.task.message === null ? null : JSON.stringify(f.task.message),
          f.attempt,
          f.task.interrupted ? 1 : 0,
          final ? e.endedAt : null,
          f.jobId,
          f.index,
        );
      this.#settleJob(f.jobId, e.endedAt);
      return true;
    });
  }

  async requestCancel(jobId: string, at: string): Promise<boolean> {
    return this.#tx(() => {
      const r = this.#db
        .prepare(
          "UPDATE jobs SET state = 'cancelling', cancel_requested_at = COALESCE(cancel_requested_at, ?) WHERE id = ? AND state IN ('queued', 'running', 'cancelling')",
        )
        .run(at, jobId);
      if (Number(r.changes) !== 1) return false;
      this.#db
        .prepare(
          "UPDATE job_tasks SET state = 'cancelled', ended_at = ? WHERE job_id = ? AND state = 'queued'",
        )
        .run(at, jobId);
      this.#settleJob(jobId, at);
      return true;
    });
  }

  async appendLogs(chunks: LogChunk[]): Promise<void> {
    if (!chunks.length) return;
    this.#tx(() => {
      const stmt = this.#db.prepare(
        "INSERT INTO job_logs (job_id, idx, attempt, stream, data, at) VALUES (?, ?, ?, ?, ?, ?)",
      );
      for (const c of chunks) stmt.run(c.jobId, c.index, c.attempt, c.stream, c.data, c.at);
    });
  }

  async readLogs(
    jobId: string,
    index: number,
    attempt: number,
    afterSeq: number,
    limit: number,
  ): Promise<LogChunk[]> {
    return (
      this.#db
        .prepare(
          "SELECT * FROM job_logs WHERE job_id = ? AND idx = ? AND attempt = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .all(jobId, index, attempt, Math.floor(afterSeq), Math.max(1, Math.floor(limit))) as Row[]
    ).map(logFrom);
  }

  async recordFile(tenantId: string, sha256: string, bytes: number, at: string): Promise<void> {
    this.#db
      .prepare(
        "INSERT INTO job_files (tenant_id, sha256, bytes, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
      )
      .run(tenantId, sha256, bytes, at);
  }

  async getFile(tenantId: string, sha256: string) {
    const r = this.#db
      .prepare("SELECT sha256, bytes FROM job_files WHERE tenant_id = ? AND sha256 = ?")
      .get(tenantId, sha256) as Row | undefined;
    return r ? { sha256: String(r["sha256"]), bytes: Number(r["bytes"]) } : undefined;
  }
}
