// The job tables in the PostgreSQL store (store.jobs of PgStore), shared by
// control-plane replicas. Concurrency: every method that changes a job's
// tasks (claimTask, releaseClaim, finishAttempt, requestCancel) first locks
// the job's row (SELECT ... FOR UPDATE), so they run one at a time per job:
// the count of unfinished tasks that decides the job's end always sees the
// other transactions' task updates, and two claims of one task cannot both
// pass. Logs are bytea; every other free text is JSON-encoded (no NUL reaches
// a text column).
import type pg from "pg";
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

const C = 'COLLATE "C"';

/** The job tables: PostgreSQL migration 2 (pg-store.ts PG_MIGRATIONS). */
export const PG_JOBS_MIGRATION = `
  CREATE TABLE jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT ${C} NOT NULL UNIQUE,
    tenant_id TEXT ${C} NOT NULL REFERENCES tenants(id),
    created_by_key TEXT ${C} NOT NULL,
    state TEXT ${C} NOT NULL,
    spec TEXT NOT NULL,
    task_count INTEGER NOT NULL,
    created_at TEXT ${C} NOT NULL,
    started_at TEXT ${C},
    ended_at TEXT ${C},
    cancel_requested_at TEXT ${C}
  );
  CREATE INDEX jobs_tenant_seq ON jobs(tenant_id, seq);
  CREATE INDEX jobs_state ON jobs(state, seq);
  CREATE TABLE job_tasks (
    job_id TEXT ${C} NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT ${C} NOT NULL,
    input TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    interruptions INTEGER NOT NULL,
    not_before TEXT ${C} NOT NULL,
    exit_code INTEGER,
    failure TEXT ${C},
    message TEXT,
    result_attempt INTEGER,
    started_at TEXT ${C},
    ended_at TEXT ${C},
    PRIMARY KEY (job_id, idx)
  );
  CREATE INDEX job_tasks_state ON job_tasks(job_id, state, idx);
  CREATE TABLE job_attempts (
    job_id TEXT ${C} NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    id TEXT ${C} NOT NULL UNIQUE,
    holder TEXT ${C} NOT NULL,
    state TEXT ${C} NOT NULL,
    sandbox_id TEXT ${C},
    started_at TEXT ${C} NOT NULL,
    ended_at TEXT ${C},
    exit_code INTEGER,
    failure TEXT ${C},
    message TEXT,
    log_bytes BIGINT NOT NULL,
    log_dropped_bytes BIGINT NOT NULL,
    artifacts TEXT NOT NULL,
    timings TEXT NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
  );
  CREATE INDEX job_attempts_state ON job_attempts(state);
  CREATE TABLE job_logs (
    seq BIGSERIAL PRIMARY KEY,
    job_id TEXT ${C} NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    stream TEXT ${C} NOT NULL,
    data BYTEA NOT NULL,
    at TEXT ${C} NOT NULL
  );
  CREATE INDEX job_logs_attempt ON job_logs(job_id, idx, attempt, seq);
  CREATE TABLE job_files (
    tenant_id TEXT ${C} NOT NULL,
    sha256 TEXT ${C} NOT NULL,
    bytes BIGINT NOT NULL,
    created_at TEXT ${C} NOT NULL,
    PRIMARY KEY (tenant_id, sha256)
  );
`;

type Row = Record<string, unknown>;
type Queryable = Pick<pg.Pool, "query"> | pg.PoolClient;
const RETRYABLE = new Set(["40001", "40P01"]);
const hasNul = (...v: unknown[]) => v.some((x) => typeof x === "string" && x.includes("\u0000"));

async function insert(on: Queryable, table: string, cols: Record<string, unknown>): Promise<void> {
  const names = Object.keys(cols);
  await on.query(
    `INSERT INTO ${table} (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})`,
    Object.values(cols),
  );
}

export class PgJobStore implements JobStore {
  readonly #pool: pg.Pool;

  constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  async #tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = await this.#pool.connect();
      let broken: Error | undefined;
      try {
        await c.query("BEGIN");
        const out = await fn(c);
        await c.query("COMMIT");
        return out;
      } catch (e) {
        await c.query("ROLLBACK").catch((re: Error) => {
          broken = re;
        });
        const code = (e as { code?: string }).code;
        if (code && RETRYABLE.has(code) && attempt < 8) {
          await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
          continue;
        }
        throw e;
      } finally {
        c.release(broken);
      }
    }
  }

  async #rows(sql: string, args: unknown[] = [], on: Queryable = this.#pool): Promise<Row[]> {
    return (await on.query(sql, args)).rows as Row[];
  }

  /** Locks the job's row for this transaction; its state and cancel time, or undefined. */
  async #lockJob(c: pg.PoolClient, jobId: string) {
    const [r] = await this.#rows(
      "SELECT state, cancel_requested_at FROM jobs WHERE id = $1 FOR UPDATE",
      [jobId],
      c,
    );
    return r ? { state: String(r["state"]), cancelRequested: r["cancel_requested_at"] !== null } : undefined;
  }

  async createJob(job: JobRecord, tasks: TaskRecord[]): Promise<void> {
    await this.#tx(async (c) => {
      await insert(c, "jobs", jobCols(job));
      // Tasks in batches of one multi-row INSERT each (a job may have thousands).
      for (let i = 0; i < tasks.length; i += 500) {
        const batch = tasks.slice(i, i + 500).map(taskCols);
        const names = Object.keys(batch[0]!);
        const args: unknown[] = [];
        const values = batch.map((cols) => {
          const ph = Object.values(cols).map((v) => {
            args.push(v);
            return `$${args.length}`;
          });
          return `(${ph.join(", ")})`;
        });
        await c.query(`INSERT INTO job_tasks (${names.join(", ")}) VALUES ${values.join(", ")}`, args);
      }
    });
  }

  async getJob(id: string): Promise<JobRecord | undefined> {
    if (hasNul(id)) return undefined;
    const [r] = await this.#rows("SELECT * FROM jobs WHERE id = $1", [id]);
    return r ? jobFrom(r) : undefined;
  }

  async listJobs(q: { tenantId: string; states?: JobState[]; limit: number; cursor?: string }) {
    if (hasNul(q.tenantId, ...(q.states ?? []))) return { jobs: [], nextCursor: null };
    const limit = Math.max(1, Math.floor(q.limit));
    const args: unknown[] = [q.tenantId];
    const where = ["tenant_id = $1"];
    if (q.states?.length) {
      args.push(q.states);
      where.push(`state = ANY($${args.length}::text[])`);
    }
    const after = parseCursor(q.cursor);
    if (after !== undefined) {
      args.push(after);
      where.push(`seq < $${args.length}`);
    }
    args.push(limit + 1);
    const rows = await this.#rows(
      `SELECT * FROM jobs WHERE ${where.join(" AND ")} ORDER BY seq DESC LIMIT $${args.length}`,
      args,
    );
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      jobs: page.map(jobFrom),
      nextCursor: rows.length > limit && last ? Number(last["seq"]).toString(36) : null,
    };
  }

  async listActiveJobs(): Promise<JobRecord[]> {
    return (
      await this.#rows("SELECT * FROM jobs WHERE state IN ('queued', 'running', 'cancelling') ORDER BY seq")
    ).map(jobFrom);
  }

  async taskCounts(jobIds: string[]): Promise<Map<string, Record<TaskState, number>>> {
    const out = new Map<string, Record<TaskState, number>>();
    const ids = jobIds.filter((id) => !hasNul(id));
    for (const id of ids) out.set(id, emptyCounts());
    if (!ids.length) return out;
    const rows = await this.#rows(
      "SELECT job_id, state, COUNT(*) AS n FROM job_tasks WHERE job_id = ANY($1::text[]) GROUP BY job_id, state",
      [ids],
    );
    for (const r of rows) out.get(String(r["job_id"]))![String(r["state"]) as TaskState] = Number(r["n"]);
    return out;
  }

  async getTask(jobId: string, index: number): Promise<TaskRecord | undefined> {
    if (hasNul(jobId)) return undefined;
    const [r] = await this.#rows("SELECT * FROM job_tasks WHERE job_id = $1 AND idx = $2", [jobId, index]);
    return r ? taskFrom(r) : undefined;
  }

  async listTasks(jobId: string, q: { fromIndex?: number; limit: number }): Promise<TaskRecord[]> {
    if (hasNul(jobId)) return [];
    return (
      await this.#rows("SELECT * FROM job_tasks WHERE job_id = $1 AND idx >= $2 ORDER BY idx LIMIT $3", [
        jobId,
        q.fromIndex ?? 0,
        Math.max(1, Math.floor(q.limit)),
      ])
    ).map(taskFrom);
  }

  async readyTasks(jobId: string, now: string, limit: number): Promise<TaskRecord[]> {
    if (limit < 1 || hasNul(jobId)) return [];
    return (
      await this.#rows(
        "SELECT * FROM job_tasks WHERE job_id = $1 AND state = 'queued' AND not_before <= $2 ORDER BY idx LIMIT $3",
        [jobId, now, Math.floor(limit)],
      )
    ).map(taskFrom);
  }

  async listAttempts(jobId: string, index?: number): Promise<AttemptRecord[]> {
    if (hasNul(jobId)) return [];
    const rows =
      index === undefined
        ? await this.#rows("SELECT * FROM job_attempts WHERE job_id = $1 ORDER BY idx, attempt", [jobId])
        : await this.#rows("SELECT * FROM job_attempts WHERE job_id = $1 AND idx = $2 ORDER BY attempt", [
            jobId,
            index,
          ]);
    return rows.map(attemptFrom);
  }

  async listRunningAttempts(): Promise<AttemptRecord[]> {
    return (
      await this.#rows("SELECT * FROM job_attempts WHERE state = 'running' ORDER BY started_at, job_id, idx")
    ).map(attemptFrom);
  }

  async claimTask(a: AttemptRecord): Promise<boolean> {
    return this.#tx(async (c) => {
      const job = await this.#lockJob(c, a.jobId);
      if (!job || (job.state !== "queued" && job.state !== "running")) return false;
      // INVARIANT: one running attempt per task: claimed only while queued with the expected attempt count.
      const r = await c.query(
        `UPDATE job_tasks SET state = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, $1)
         WHERE job_id = $2 AND idx = $3 AND state = 'queued' AND attempts = $4`,
        [a.startedAt, a.jobId, a.index, a.attempt - 1],
      );
      if (r.rowCount !== 1) return false;
      await insert(c, "job_attempts", attemptCols({ ...a, state: "running" }));
      await c.query("UPDATE jobs SET state = 'running', started_at = $1 WHERE id = $2 AND state = 'queued'", [
        a.startedAt,
        a.jobId,
      ]);
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
    if (hasNul(jobId, holder)) return false;
    return this.#tx(async (c) => {
      const job = await this.#lockJob(c, jobId);
      if (!job) return false;
      const gone = await c.query(
        "DELETE FROM job_attempts WHERE job_id = $1 AND idx = $2 AND attempt = $3 AND state = 'running' AND holder = $4",
        [jobId, index, attempt, holder],
      );
      if (gone.rowCount !== 1) return false;
      const state = job.cancelRequested ? "cancelled" : "queued";
      await c.query(
        `UPDATE job_tasks SET state = $1, attempts = attempts - 1, not_before = $2,
           started_at = CASE WHEN attempts - 1 = 0 THEN NULL ELSE started_at END,
           ended_at = CASE WHEN $1 = 'cancelled' THEN $3 ELSE ended_at END
         WHERE job_id = $4 AND idx = $5 AND state = 'running'`,
        [state, when.notBefore, when.at, jobId, index],
      );
      await this.#settleJob(c, jobId, when.at);
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
    if (hasNul(jobId, holder)) return false;
    const sets: string[] = [];
    const args: unknown[] = [];
    if (patch.sandboxId !== undefined) {
      args.push(patch.sandboxId);
      sets.push(`sandbox_id = $${args.length}`);
    }
    if (patch.timings !== undefined) {
      args.push(JSON.stringify(patch.timings));
      sets.push(`timings = $${args.length}`);
    }
    if (!sets.length) return true;
    const n = args.length;
    const r = await this.#pool.query(
      `UPDATE job_attempts SET ${sets.join(", ")}
       WHERE job_id = $${n + 1} AND idx = $${n + 2} AND attempt = $${n + 3} AND state = 'running' AND holder = $${n + 4}`,
      [...args, jobId, index, attempt, holder],
    );
    return r.rowCount === 1;
  }

  /** Ends the job when none of its tasks is queued or running (the job's row is locked). */
  async #settleJob(c: pg.PoolClient, jobId: string, at: string): Promise<void> {
    const counts = emptyCounts();
    for (const r of await this.#rows(
      "SELECT state, COUNT(*) AS n FROM job_tasks WHERE job_id = $1 GROUP BY state",
      [jobId],
      c,
    )) {
      counts[String(r["state"]) as TaskState] = Number(r["n"]);
    }
    if (counts.queued + counts.running > 0) return;
    await c.query(
      "UPDATE jobs SET state = $1, ended_at = $2 WHERE id = $3 AND state IN ('queued', 'running', 'cancelling')",
      [finalJobState(counts), at, jobId],
    );
  }

  async finishAttempt(f: AttemptFinish): Promise<boolean> {
    if (hasNul(f.jobId, f.holder)) return false;
    return this.#tx(async (c) => {
      const job = await this.#lockJob(c, f.jobId);
      if (!job) return false;
      // INVARIANT: an attempt ends once, by its holder; its task and job move in the same transaction.
      const e = f.end;
      const r = await c.query(
        `UPDATE job_attempts SET state = $1, ended_at = $2, exit_code = $3, failure = $4, message = $5, log_bytes = $6,
           log_dropped_bytes = $7, artifacts = $8, timings = $9
         WHERE job_id = $10 AND idx = $11 AND attempt = $12 AND state = 'running' AND holder = $13`,
        [
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
        ],
      );
      if (r.rowCount !== 1) return false;
      // A retry of a job being cancelled does not run: the task is cancelled.
      const state = f.task.state === "queued" && job.cancelRequested ? "cancelled" : f.task.state;
      await c.query(
        `UPDATE job_tasks SET state = $1, not_before = COALESCE($2, not_before), exit_code = $3, failure = $4,
           message = $5, result_attempt = $6, interruptions = interruptions + $7, ended_at = $8
         WHERE job_id = $9 AND idx = $10 AND state = 'running'`,
        [
          state,
          f.task.notBefore ?? null,
          f.task.exitCode,
          f.task.failure,
          f.task.message === null ? null : JSON.stringify(f.task.message),
          f.attempt,
          f.task.interrupted ? 1 : 0,
          state !== "queued" ? e.endedAt : null,
          f.jobId,
          f.index,
        ],
      );
      await this.#settleJob(c, f.jobId, e.endedAt);
      return true;
    });
  }

  async requestCancel(jobId: string, at: string): Promise<boolean> {
    if (hasNul(jobId)) return false;
    return this.#tx(async (c) => {
      const job = await this.#lockJob(c, jobId);
      if (!job || !["queued", "running", "cancelling"].includes(job.state)) return false;
      await c.query(
        "UPDATE jobs SET state = 'cancelling', cancel_requested_at = COALESCE(cancel_requested_at, $1) WHERE id = $2",
        [at, jobId],
      );
      await c.query(
        "UPDATE job_tasks SET state = 'cancelled', ended_at = $1 WHERE job_id = $2 AND state = 'queued'",
        [at, jobId],
      );
      await this.#settleJob(c, jobId, at);
      return true;
    });
  }

  async appendLogs(chunks: LogChunk[]): Promise<void> {
    if (!chunks.length) return;
    const args: unknown[] = [];
    const values = chunks.map((ch) => {
      args.push(ch.jobId, ch.index, ch.attempt, ch.stream, Buffer.from(ch.data), ch.at);
      const n = args.length;
      return `($${n - 5}, $${n - 4}, $${n - 3}, $${n - 2}, $${n - 1}, $${n})`;
    });
    // One statement: the chunks get increasing seq in the order given.
    await this.#pool.query(
      `INSERT INTO job_logs (job_id, idx, attempt, stream, data, at) VALUES ${values.join(", ")}`,
      args,
    );
  }

  async readLogs(
    jobId: string,
    index: number,
    attempt: number,
    afterSeq: number,
    limit: number,
  ): Promise<LogChunk[]> {
    if (hasNul(jobId)) return [];
    return (
      await this.#rows(
        "SELECT * FROM job_logs WHERE job_id = $1 AND idx = $2 AND attempt = $3 AND seq > $4 ORDER BY seq LIMIT $5",
        [jobId, index, attempt, Math.floor(afterSeq), Math.max(1, Math.floor(limit))],
      )
    ).map(logFrom);
  }

  async recordFile(tenantId: string, sha256: string, bytes: number, at: string): Promise<void> {
    await this.#pool.query(
      "INSERT INTO job_files (tenant_id, sha256, bytes, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
      [tenantId, sha256, bytes, at],
    );
  }

  async getFile(tenantId: string, sha256: string) {
    if (hasNul(tenantId, sha256)) return undefined;
    const [r] = await this.#rows("SELECT sha256, bytes FROM job_files WHERE tenant_id = $1 AND sha256 = $2", [
      tenantId,
      sha256,
    ]);
    return r ? { sha256: String(r["sha256"]), bytes: Number(r["bytes"]) } : undefined;
  }
}
