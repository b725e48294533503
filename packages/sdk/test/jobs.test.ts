// firebreak.jobs against the control plane's real /v1/jobs routes, store and
// dispatcher, in-process over the jobs fake node (each task sandbox runs its
// commands as host processes): submit with uploads, wait, list, get, tasks,
// logs (also followed while a task runs), artifacts, usage, cancel, errors.
// No VMs, no root; real microVMs are in control-plane/test/jobs.test.ts.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { JobsFakeNode } from "../../control-plane/src/jobs/testing/process-guest.ts";
import { inProcess } from "../../control-plane/src/testing/in-process.ts";
import {
  type ConnectionOptions,
  Firebreak,
  FirebreakApiError,
  type JobLogEvent,
  NotFoundError,
  ValidationError,
} from "../src/index.ts";

type World = Awaited<ReturnType<typeof inProcess>>;
let world: World;
let node: JobsFakeNode;
let fb: Firebreak;
let other: Firebreak;

const over = (w: World, apiKey: string): ConnectionOptions => ({
  baseUrl: "http://in-process",
  apiKey,
  fetch: (url, init) => Promise.resolve(w.app.fetch(new Request(url as string, init))),
});

const TASK_SH = `n=$(cat "$FIREBREAK_INPUT_FILE")
echo "task $FIREBREAK_TASK_INDEX got $n"
echo "warn $n" >&2
printf '%s' "$((n * n))" > "$FIREBREAK_OUTPUT_DIR/square"
`;

async function collect(it: AsyncIterable<JobLogEvent>) {
  const out = { stdout: "", stderr: "", events: [] as JobLogEvent[] };
  for await (const ev of it) {
    out.events.push(ev);
    if (ev.type === "stdout" || ev.type === "stderr") out[ev.type] += ev.text;
  }
  return out;
}

describe("firebreak.jobs over the control plane's routes (fake node)", { timeout: 120_000 }, () => {
  before(async () => {
    node = new JobsFakeNode();
    world = await inProcess({}, { node, jobs: { dispatchIntervalMs: 50, deferMs: 100 } });
    world.jobs.start();
    fb = new Firebreak(over(world, (await world.tenant()).key));
    other = new Firebreak(over(world, (await world.tenant()).key));
  });
  after(async () => {
    await world.close();
    await node.close();
  });

  test("run: files and JSON inputs uploaded, results in order, logs, artifacts, usage = sum of tasks", async () => {
    const onUpdate: string[] = [];
    const { job, tasks } = await fb.jobs.run({
      command: ["sh", "task.sh"],
      files: [{ path: "task.sh", data: TASK_SH }],
      inputs: [1, 2, 3, 4, 5],
      parallelism: 2,
      metadata: { run: "sdk" },
      pollMs: 50,
      onUpdate: (j) => onUpdate.push(j.state),
    });
    assert.equal(job.state, "succeeded");
    assert.equal(job.taskCount, 5);
    assert.equal(job.parallelism, 2);
    assert.deepEqual(job.tasks, { queued: 0, running: 0, succeeded: 5, failed: 0, cancelled: 0 });
    assert.equal(onUpdate.at(-1), "succeeded");
    assert.equal(job.files[0]?.path, "task.sh");
    assert.match(job.files[0]!.sha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(
      tasks.map((t) => [t.index, t.state, t.exitCode, t.input]),
      [1, 2, 3, 4, 5].map((n, i) => [i, "succeeded", 0, { kind: "json", value: n }]),
    );

    for (const t of tasks) {
      const n = t.index + 1;
      const logs = await collect(fb.jobs.logs(job.id, t.index));
      assert.equal(logs.stdout, `task ${t.index} got ${n}\n`);
      assert.equal(logs.stderr, `warn ${n}\n`);
      assert.deepEqual(logs.events.at(-1), {
        type: "end",
        attempt: 1,
        state: "succeeded",
        exitCode: 0,
        failure: null,
      });
      const bytes = await fb.jobs.downloadArtifact(job.id, t.index, "out/square");
      assert.equal(new TextDecoder().decode(bytes), String(n * n));
      const stream = await fb.jobs.downloadArtifact(job.id, t.index, "out/square", { format: "stream" });
      assert.equal(await new Response(stream).text(), String(n * n));
    }
    const arts = await fb.jobs.artifacts(job.id);
    assert.deepEqual(
      arts.map((a) => [a.task, a.attempt, a.path, a.bytes]),
      tasks.map((t) => [t.index, 1, "out/square", String((t.index + 1) ** 2).length]),
    );
    await assert.rejects(fb.jobs.downloadArtifact(job.id, 0, "out/nothing"), NotFoundError);

    const usage = await fb.jobs.usage(job.id);
    assert.equal(usage.jobId, job.id);
    assert.equal(usage.tasks.length, 5);
    assert.equal(usage.total.sandboxes, 5);
    const sum = usage.tasks.reduce((s, t) => s + t.total.lifetimeSeconds, 0);
    assert.ok(
      Math.abs(usage.total.lifetimeSeconds - sum) < 0.005,
      "the job's total is the sum of its tasks'",
    );
    for (const t of usage.tasks)
      assert.deepEqual(
        t.attempts.map((a) => [a.attempt, a.kind, a.final]),
        [[1, "initial", true]],
      );

    const detail = await fb.jobs.task(job.id, 2);
    assert.equal(detail.history.length, 1);
    assert.equal(detail.history[0]!.state, "succeeded");
    assert.ok(detail.history[0]!.sandboxId);
    assert.equal(node.live, 0, "every task sandbox was torn down");
  });

  test("inputFiles: one task per uploaded file; uploadFile is content-addressed", async () => {
    const up = await fb.jobs.uploadFile("hello");
    assert.equal(up.bytes, 5);
    assert.equal((await fb.jobs.uploadFile(new TextEncoder().encode("hello"))).sha256, up.sha256);
    const job = await fb.jobs.create({
      command: 'cat input/*; echo " from $FIREBREAK_TASK_INDEX"',
      inputFiles: [
        { name: "a.txt", sha256: up.sha256 },
        { name: "b.txt", data: "bonjour" },
      ],
    });
    assert.equal(job.cmd, 'cat input/*; echo " from $FIREBREAK_TASK_INDEX"');
    const done = await fb.jobs.wait(job.id, { pollMs: 50 });
    assert.equal(done.state, "succeeded");
    const tasks = await fb.jobs.tasks(job.id);
    assert.deepEqual(
      tasks.map((t) => t.input.kind === "file" && [t.input.name, t.input.bytes]),
      [
        ["a.txt", 5],
        ["b.txt", 7],
      ],
    );
    assert.equal((await collect(fb.jobs.logs(job.id, 1))).stdout, "bonjour from 1\n");
  });

  test("a task that exits 3: retried by policy, failed with its code; every attempt's logs; retries in the usage", async () => {
    const job = await fb.jobs.create({
      command: 'echo "try $FIREBREAK_TASK_ATTEMPT"; exit 3',
      retry: { maxAttempts: 2, on: ["exit_code"], backoffMs: 20 },
    });
    assert.deepEqual(job.retry.on, ["exit_code"]);
    const done = await fb.jobs.wait(job.id, { pollMs: 50 });
    assert.equal(done.state, "failed");
    const [t] = await fb.jobs.tasks(job.id);
    assert.equal(t!.exitCode, 3);
    assert.equal(t!.failure, "exit_code");
    assert.equal(t!.attempts, 2);
    for (const attempt of [1, 2]) {
      assert.equal((await collect(fb.jobs.logs(job.id, 0, { attempt }))).stdout, `try ${attempt}\n`);
    }
    const usage = await fb.jobs.usage(job.id);
    assert.deepEqual(
      usage.tasks[0]!.attempts.map((a) => a.kind),
      ["initial", "retry"],
    );
  });

  test("logs follow a running task to its end; cancel stops it and the queued ones", async () => {
    const job = await fb.jobs.create({
      command: 'echo "start $FIREBREAK_TASK_INDEX"; sleep 0.3; echo "middle"; sleep 60',
      inputs: [0, 1, 2],
      parallelism: 1,
    });
    // Follow the first task; cancel once its second line has arrived while the stream is open.
    const it = fb.jobs.logs(job.id, 0, { follow: true })[Symbol.asyncIterator]();
    let stdout = "";
    while (!stdout.includes("middle\n")) {
      const { value, done } = await it.next();
      assert.ok(!done, `the stream ended early: ${stdout}`);
      if (value.type === "stdout") stdout += value.text;
    }
    assert.equal(stdout, "start 0\nmiddle\n");
    const cancelled = await fb.jobs.cancel(job.id);
    assert.ok(["cancelling", "cancelled"].includes(cancelled.state), cancelled.state);
    const rest = await collect({ [Symbol.asyncIterator]: () => it });
    assert.equal(rest.stdout, "");
    const end = rest.events.at(-1);
    assert.equal(end?.type, "end");
    assert.equal(end?.type === "end" && end.state, "cancelled");
    const done = await fb.jobs.wait(job.id, { pollMs: 50 });
    assert.equal(done.state, "cancelled");
    assert.deepEqual(
      (await fb.jobs.tasks(job.id)).map((t) => t.state),
      ["cancelled", "cancelled", "cancelled"],
    );
    assert.equal(node.live, 0);
  });

  test("list pages newest first and filters by state; another tenant sees nothing", async () => {
    const all = await fb.jobs.list({ limit: 2 }).all();
    assert.ok(all.length >= 4);
    const created = all.map((j) => j.createdAt);
    assert.deepEqual(created, [...created].sort().reverse());
    const failed = await fb.jobs.list({ state: "failed" }).all();
    assert.ok(failed.length >= 1 && failed.every((j) => j.state === "failed"));
    const both = await fb.jobs.list({ state: ["failed", "cancelled"] }).all();
    assert.ok(both.some((j) => j.state === "cancelled") && both.some((j) => j.state === "failed"));
    assert.deepEqual(await other.jobs.list().all(), []);
    await assert.rejects(other.jobs.get(all[0]!.id), NotFoundError);
    await assert.rejects(other.jobs.usage(all[0]!.id), NotFoundError);
  });

  test("bad input: typed errors that say what to fix; wait can be aborted", async () => {
    await assert.rejects(fb.jobs.create({ command: [] }), (e: FirebreakApiError) => {
      assert.equal(e.code, "VALIDATION_FAILED");
      return true;
    });
    await assert.rejects(fb.jobs.create({ command: "true", parallelism: 0 }), ValidationError);
    await assert.rejects(
      fb.jobs.create({ command: "true", files: [{ path: "x", sha256: "0".repeat(64) }] }),
      (e: FirebreakApiError) => {
        assert.ok(e instanceof FirebreakApiError && e.status >= 400, String(e));
        return true;
      },
    );
    await assert.rejects(fb.jobs.get("job-nope"), NotFoundError);
    const job = await fb.jobs.create({ command: "sleep 60" });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 100);
    await assert.rejects(fb.jobs.wait(job.id, { pollMs: 20, signal: ctl.signal }), (e: FirebreakApiError) => {
      assert.equal(e.code, "ABORTED");
      return true;
    });
    await fb.jobs.cancel(job.id);
    assert.equal((await fb.jobs.wait(job.id, { pollMs: 50 })).state, "cancelled");
  });
});
