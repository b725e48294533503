// The JobStore contract (store.jobs), run from store.contract.ts against every
// Store implementation: the queue's transitions, the job's end decided by its
// last task, cancel, logs and uploaded files; and, with a second store on the
// same database, claims and ends racing from two replicas.
import assert from "node:assert/strict";
import { describe, type TestContext, test } from "node:test";
import { DEFAULT_LIMITS } from "../config.ts";
import type { AttemptFinish, AttemptRecord, JobRecord, TaskRecord } from "./job-store.ts";
import type { Store } from "./store.ts";

type Fresh = (t: TestContext) => Promise<{ store: Store; another(): Promise<Store> }>;

const T0 = "2026-01-01T00:00:00.000Z";
const at = (s: number) => new Date(Date.parse(T0) + s * 1000).toISOString();

function jobRec(id: string, over: Partial<JobRecord> = {}): JobRecord {
  return {
    id,
    tenantId: "t1",
    createdByKey: "k1",
    state: "queued",
    spec: { template: "base", argv: ["true"], odd: 'q"\u0000' },
    taskCount: 0,
    createdAt: T0,
    startedAt: null,
    endedAt: null,
    cancelRequestedAt: null,
    ...over,
  };
}

function taskRec(jobId: string, index: number, over: Partial<TaskRecord> = {}): TaskRecord {
  return {
    jobId,
    index,
    state: "queued",
    input: { kind: "json", value: { n: index, s: "\u0000x" } },
    attempts: 0,
    interruptions: 0,
    notBefore: T0,
    exitCode: null,
    failure: null,
    message: null,
    resultAttempt: null,
    startedAt: null,
    endedAt: null,
    ...over,
  };
}

function attemptRec(jobId: string, index: number, attempt: number, over: Partial<AttemptRecord> = {}) {
  return {
    jobId,
    index,
    attempt,
    id: `a-${jobId}-${index}-${attempt}`,
    holder: "h1",
    state: "running",
    sandboxId: null,
    startedAt: at(1),
    endedAt: null,
    exitCode: null,
    failure: null,
    message: null,
    logBytes: 0,
    logDroppedBytes: 0,
    artifacts: [],
    timings: {},
    ...over,
  } satisfies AttemptRecord;
}

function finish(
  jobId: string,
  index: number,
  attempt: number,
  outcome: "succeeded" | "failed" | "retry" | "interrupted",
  holder = "h1",
): AttemptFinish {
  const failed = outcome === "failed" || outcome === "retry";
  return {
    jobId,
    index,
    attempt,
    holder,
    end: {
      state: outcome === "retry" ? "failed" : outcome,
      endedAt: at(10),
      exitCode: failed ? 3 : outcome === "succeeded" ? 0 : null,
      failure: failed ? "exit_code" : outcome === "interrupted" ? "infrastructure" : null,
      message: failed ? "exited 3 \u0000" : null,
      logBytes: 12,
      logDroppedBytes: 2,
      artifacts: [
        { path: "out/r.json", sha256: "ab".repeat(32), bytes: 5 },
        { path: "x", error: "missing" },
      ],
      timings: { command: 1.5 },
    },
    task: {
      state: outcome === "retry" || outcome === "interrupted" ? "queued" : outcome,
      ...(outcome === "retry" ? { notBefore: at(20) } : {}),
      exitCode: failed ? 3 : outcome === "succeeded" ? 0 : null,
      failure: failed ? "exit_code" : null,
      message: failed ? "exited 3 \u0000" : null,
      interrupted: outcome === "interrupted",
    },
  };
}

async function withJob(store: Store, id: string, tasks: number, over: Partial<JobRecord> = {}) {
  await store.jobs.createJob(
    jobRec(id, { taskCount: tasks, ...over }),
    Array.from({ length: tasks }, (_, i) => taskRec(id, i)),
  );
}

export function jobStoreContract(fresh: Fresh): void {
  const setup = async (t: TestContext) => {
    const s = await fresh(t);
    for (const id of ["t1", "t2"]) {
      await s.store.createTenant({ id, name: `n-${id}`, limits: DEFAULT_LIMITS, createdAt: T0 });
    }
    return s;
  };

  describe("jobs", () => {
    test("jobs and tasks read back as written; lists by tenant and state, newest first, in pages", async (t) => {
      const { store } = await setup(t);
      await withJob(store, "j1", 3);
      await withJob(store, "j2", 1, { tenantId: "t2" });
      await withJob(store, "j3", 2, { createdAt: at(5) });
      assert.deepEqual(await store.jobs.getJob("j1"), jobRec("j1", { taskCount: 3 }));
      assert.equal(await store.jobs.getJob("nope"), undefined);
      assert.equal(await store.jobs.getJob("j\u0000"), undefined);
      assert.deepEqual(await store.jobs.getTask("j1", 2), taskRec("j1", 2));
      assert.equal(await store.jobs.getTask("j1", 3), undefined);
      assert.deepEqual(
        (await store.jobs.listTasks("j1", { fromIndex: 1, limit: 10 })).map((x) => x.index),
        [1, 2],
      );
      const p1 = await store.jobs.listJobs({ tenantId: "t1", limit: 1 });
      assert.deepEqual(
        p1.jobs.map((j) => j.id),
        ["j3"],
      );
      assert.ok(p1.nextCursor);
      const p2 = await store.jobs.listJobs({ tenantId: "t1", limit: 1, cursor: p1.nextCursor! });
      assert.deepEqual(
        p2.jobs.map((j) => j.id),
        ["j1"],
      );
      assert.equal(p2.nextCursor, null);
      assert.deepEqual(
        (await store.jobs.listJobs({ tenantId: "t1", limit: 10, states: ["failed"] })).jobs,
        [],
      );
      assert.deepEqual(
        (await store.jobs.listActiveJobs()).map((j) => j.id),
        ["j1", "j2", "j3"],
      );
      const counts = await store.jobs.taskCounts(["j1", "j2", "none"]);
      assert.deepEqual(counts.get("j1"), { queued: 3, running: 0, succeeded: 0, failed: 0, cancelled: 0 });
      assert.equal(counts.get("none")?.queued, 0);
      await assert.rejects(store.jobs.createJob(jobRec("j1"), []), "job ids are unique");
    });

    test("claim: one running attempt per task; the job starts; a second claim of the same attempt fails", async (t) => {
      const { store } = await setup(t);
      await withJob(store, "j", 2);
      await store.jobs.createJob(jobRec("later", { taskCount: 1 }), [
        taskRec("later", 0, { notBefore: at(100) }),
      ]);
      assert.deepEqual(
        (await store.jobs.readyTasks("later", at(99), 5)).map((x) => x.index),
        [],
        "not before its time",
      );
      assert.equal((await store.jobs.readyTasks("later", at(100), 5)).length, 1);
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 2)), false, "wrong attempt number");
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 1)), true);
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 1, { id: "other" })), false);
      const job = await store.jobs.getJob("j");
      assert.equal(job?.state, "running");
      assert.equal(job?.startedAt, at(1));
      const task = await store.jobs.getTask("j", 0);
      assert.equal(task?.state, "running");
      assert.equal(task?.attempts, 1);
      assert.equal(task?.startedAt, at(1));
      assert.deepEqual(
        (await store.jobs.readyTasks("j", at(50), 5)).map((x) => x.index),
        [1],
      );
      assert.deepEqual(await store.jobs.listRunningAttempts(), [attemptRec("j", 0, 1)]);
      assert.equal(
        await store.jobs.updateAttempt("j", 0, 1, "h2", { sandboxId: "s1" }),
        false,
        "not its holder",
      );
      assert.equal(
        await store.jobs.updateAttempt("j", 0, 1, "h1", { sandboxId: "s1", timings: { sandbox: 2 } }),
        true,
      );
      assert.deepEqual(await store.jobs.listAttempts("j", 0), [
        attemptRec("j", 0, 1, { sandboxId: "s1", timings: { sandbox: 2 } }),
      ]);
    });

    test("finish: once, by its holder; retries queue the task again; the last task ends the job", async (t) => {
      const { store } = await setup(t);
      await withJob(store, "j", 2);
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 1)), true);
      assert.equal(await store.jobs.claimTask(attemptRec("j", 1, 1)), true);
      assert.equal(await store.jobs.finishAttempt(finish("j", 0, 1, "retry", "h2")), false, "not its holder");
      assert.equal(await store.jobs.finishAttempt(finish("j", 0, 1, "retry")), true);
      assert.equal(await store.jobs.finishAttempt(finish("j", 0, 1, "retry")), false, "an attempt ends once");
      const retried = await store.jobs.getTask("j", 0);
      assert.equal(retried?.state, "queued");
      assert.equal(retried?.notBefore, at(20));
      assert.equal(retried?.exitCode, 3);
      assert.equal(retried?.message, "exited 3 \u0000");
      assert.equal(retried?.resultAttempt, 1);
      assert.equal(retried?.endedAt, null);
      const [a1] = await store.jobs.listAttempts("j", 0);
      assert.equal(a1?.state, "failed");
      assert.deepEqual(a1?.artifacts, finish("j", 0, 1, "retry").end.artifacts);
      assert.equal(a1?.logDroppedBytes, 2);
      // Interrupted: queued again, counted as an interruption.
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 2)), true);
      assert.equal(await store.jobs.finishAttempt(finish("j", 0, 2, "interrupted")), true);
      assert.equal((await store.jobs.getTask("j", 0))?.interruptions, 1);
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 3)), true);
      assert.equal(await store.jobs.finishAttempt(finish("j", 0, 3, "succeeded")), true);
      assert.equal((await store.jobs.getJob("j"))?.state, "running", "task 1 still runs");
      assert.equal(await store.jobs.finishAttempt(finish("j", 1, 1, "failed")), true);
      const job = await store.jobs.getJob("j");
      assert.equal(job?.state, "failed");
      assert.equal(job?.endedAt, at(10));
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 4)), false, "an ended job claims nothing");
      const t0 = await store.jobs.getTask("j", 0);
      assert.equal(t0?.state, "succeeded");
      assert.equal(t0?.attempts, 3);
      assert.equal(t0?.resultAttempt, 3);
      assert.equal(t0?.endedAt, at(10));
      assert.deepEqual(
        (await store.jobs.listAttempts("j")).map((a) => [a.index, a.attempt, a.state]),
        [
          [0, 1, "failed"],
          [0, 2, "interrupted"],
          [0, 3, "succeeded"],
          [1, 1, "failed"],
        ],
      );
      assert.deepEqual(await store.jobs.listRunningAttempts(), []);
      assert.deepEqual(await store.jobs.listActiveJobs(), []);

      await withJob(store, "ok", 1);
      await store.jobs.claimTask(attemptRec("ok", 0, 1));
      await store.jobs.finishAttempt(finish("ok", 0, 1, "succeeded"));
      assert.equal((await store.jobs.getJob("ok"))?.state, "succeeded");
    });

    test("release: a claim taken back leaves the task as it was, not before the given time", async (t) => {
      const { store } = await setup(t);
      await withJob(store, "j", 1);
      await store.jobs.claimTask(attemptRec("j", 0, 1));
      assert.equal(await store.jobs.releaseClaim("j", 0, 1, "h2", { at: at(2), notBefore: at(3) }), false);
      assert.equal(await store.jobs.releaseClaim("j", 0, 1, "h1", { at: at(2), notBefore: at(3) }), true);
      const task = await store.jobs.getTask("j", 0);
      assert.deepEqual(task, taskRec("j", 0, { notBefore: at(3) }));
      assert.deepEqual(await store.jobs.listAttempts("j"), []);
      assert.equal(await store.jobs.claimTask(attemptRec("j", 0, 1)), true, "the same attempt number again");
    });

    test("cancel: queued tasks at once, running ones when they end (a retry is cancelled too)", async (t) => {
      const { store } = await setup(t);
      await withJob(store, "j", 3);
      await store.jobs.claimTask(attemptRec("j", 0, 1));
      assert.equal(await store.jobs.requestCancel("j", at(5)), true);
      assert.equal(await store.jobs.requestCancel("j", at(6)), true, "again while cancelling");
      let job = await store.jobs.getJob("j");
      assert.equal(job?.state, "cancelling");
      assert.equal(job?.cancelRequestedAt, at(5));
      const counts = (await store.jobs.taskCounts(["j"])).get("j");
      assert.deepEqual(counts, { queued: 0, running: 1, succeeded: 0, failed: 0, cancelled: 2 });
      assert.equal(await store.jobs.claimTask(attemptRec("j", 1, 1)), false, "nothing starts");
      assert.equal(await store.jobs.finishAttempt(finish("j", 0, 1, "retry")), true);
      assert.equal((await store.jobs.getTask("j", 0))?.state, "cancelled");
      job = await store.jobs.getJob("j");
      assert.equal(job?.state, "cancelled");
      assert.equal(await store.jobs.requestCancel("j", at(7)), false, "already ended");

      await withJob(store, "q", 2);
      assert.equal(await store.jobs.requestCancel("q", at(8)), true);
      const q = await store.jobs.getJob("q");
      assert.equal(q?.state, "cancelled", "nothing ran: cancelled at once");
      assert.equal(q?.endedAt, at(8));
      assert.equal(await store.jobs.requestCancel("none", at(8)), false);

      await withJob(store, "r", 1);
      await store.jobs.claimTask(attemptRec("r", 0, 1));
      await store.jobs.requestCancel("r", at(9));
      assert.equal(await store.jobs.releaseClaim("r", 0, 1, "h1", { at: at(9), notBefore: at(10) }), true);
      assert.equal((await store.jobs.getJob("r"))?.state, "cancelled", "a released claim of a cancelled job");
    });

    test("logs: appended chunks come back in order, bytes exact, paged by seq, per attempt", async (t) => {
      const { store } = await setup(t);
      await withJob(store, "j", 1);
      const bytes = (s: string) => new TextEncoder().encode(s);
      const raw = new Uint8Array([0, 255, 254, 10, 0]);
      await store.jobs.appendLogs([
        { seq: 0, jobId: "j", index: 0, attempt: 1, stream: "stdout", data: bytes("one\n"), at: at(1) },
        { seq: 0, jobId: "j", index: 0, attempt: 1, stream: "stderr", data: raw, at: at(1) },
        { seq: 0, jobId: "j", index: 0, attempt: 2, stream: "stdout", data: bytes("other"), at: at(1) },
      ]);
      await store.jobs.appendLogs([
        { seq: 0, jobId: "j", index: 0, attempt: 1, stream: "truncated", data: bytes("[cut]"), at: at(2) },
      ]);
      await store.jobs.appendLogs([]);
      const all = await store.jobs.readLogs("j", 0, 1, 0, 100);
      assert.deepEqual(
        all.map((c) => [c.stream, Buffer.from(c.data).toString("latin1")]),
        [
          ["stdout", "one\n"],
          ["stderr", Buffer.from(raw).toString("latin1")],
          ["truncated", "[cut]"],
        ],
      );
      assert.ok(all[0]!.seq < all[1]!.seq && all[1]!.seq < all[2]!.seq);
      const page = await store.jobs.readLogs("j", 0, 1, all[0]!.seq, 1);
      assert.deepEqual(
        page.map((c) => c.stream),
        ["stderr"],
      );
      assert.deepEqual(await store.jobs.readLogs("j", 0, 3, 0, 10), []);
    });

    test("files: recorded per tenant, again is harmless; another tenant's is not found", async (t) => {
      const { store } = await setup(t);
      const sha = "cd".repeat(32);
      await store.jobs.recordFile("t1", sha, 42, T0);
      await store.jobs.recordFile("t1", sha, 42, at(1));
      assert.deepEqual(await store.jobs.getFile("t1", sha), { sha256: sha, bytes: 42 });
      assert.equal(await store.jobs.getFile("t2", sha), undefined);
      assert.equal(await store.jobs.getFile("t1", "\u0000"), undefined);
    });

    test("two replicas: one of concurrent claims of a task wins; concurrent ends end the job once", async (t) => {
      const { store, another } = await setup(t);
      const other = await another();
      await withJob(store, "j", 8);
      const claims = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          Promise.all([
            store.jobs.claimTask(attemptRec("j", i, 1, { id: `x${i}`, holder: "h1" })),
            other.jobs.claimTask(attemptRec("j", i, 1, { id: `y${i}`, holder: "h2" })),
          ]),
        ),
      );
      for (const [a, b] of claims) assert.equal(Number(a) + Number(b), 1, "exactly one claim per task");
      const running = await store.jobs.listRunningAttempts();
      assert.equal(running.length, 8);
      const ended = await Promise.all(
        running.map((a, i) =>
          (i % 2 ? store : other).jobs.finishAttempt(
            finish("j", a.index, 1, a.index === 5 ? "failed" : "succeeded", a.holder),
          ),
        ),
      );
      assert.deepEqual(ended, Array(8).fill(true));
      const job = await other.jobs.getJob("j");
      assert.equal(job?.state, "failed", "the job ended, with the failed task counted");
      assert.equal(job?.endedAt, at(10));
    });
  });
}
