// Jobs over the real routes, store and dispatcher, with the fake node: every
// task sandbox is a ProcessGuest (its commands run as host processes in a
// home of their own), so files, inputs, exit codes, output, timeouts, kills
// and artifacts are real. Every answer is checked against /openapi.json.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, describe, test } from "node:test";
import type { ControlPlaneConfig } from "../config.ts";
import type { ApiClient } from "../testing/api-client.ts";
import { inProcess } from "../testing/in-process.ts";
import type { JobsConfig } from "./config.ts";
import { truncationMarker } from "./log-sink.ts";
import { JobsFakeNode } from "./testing/process-guest.ts";

const envs: { close(): Promise<void> }[] = [];
after(async () => {
  for (const e of envs) await e.close();
});

async function setup(cfg: Partial<ControlPlaneConfig> = {}, jobs: Partial<JobsConfig> = {}) {
  const node = new JobsFakeNode();
  const env = await inProcess(cfg, { node, jobs: { dispatchIntervalMs: 50, deferMs: 100, ...jobs } });
  env.jobs.start();
  // The most task sandboxes alive at once.
  let maxLive = 0;
  const timer = setInterval(() => {
    maxLive = Math.max(maxLive, node.live);
  }, 5);
  const e = {
    ...env,
    node,
    get maxLive() {
      return maxLive;
    },
    async close() {
      clearInterval(timer);
      await env.close();
      await node.close();
    },
  };
  envs.push(e);
  return e;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function upload(api: ApiClient, text: string): Promise<string> {
  const r = await api.put("/v1/jobs/files", {
    body: text,
    headers: { "content-type": "application/octet-stream" },
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.sha256, createHash("sha256").update(text).digest("hex"));
  return r.json.sha256;
}

async function waitJob(api: ApiClient, id: string, timeoutMs = 30_000) {
  const t0 = Date.now();
  for (;;) {
    const r = await api.get(`/v1/jobs/${id}`);
    assert.equal(r.status, 200, r.text);
    if (["succeeded", "failed", "cancelled"].includes(r.json.state)) return r.json;
    if (Date.now() - t0 > timeoutMs)
      assert.fail(`job ${id} still ${r.json.state}: ${JSON.stringify(r.json.tasks)}`);
    await sleep(25);
  }
}

async function tasksOf(api: ApiClient, id: string) {
  const r = await api.get(`/v1/jobs/${id}/tasks?limit=1000`);
  assert.equal(r.status, 200, r.text);
  return r.json.tasks as {
    index: number;
    state: string;
    exitCode: number | null;
    failure: string | null;
    message: string | null;
    attempts: number;
    interruptions: number;
    sandboxId: string | null;
    artifacts: { path: string; sha256?: string; bytes?: number; error?: string }[];
    logBytes: number;
    logDroppedBytes: number;
  }[];
}

/** All of an attempt's output, decoded per stream. */
async function logs(api: ApiClient, id: string, index: number, q = "") {
  const r = await api.get(`/v1/jobs/${id}/tasks/${index}/logs${q}`);
  assert.equal(r.status, 200, r.text);
  const out = { stdout: "", stderr: "", truncated: "", lines: r.json as { type: string; data?: string }[] };
  for (const l of out.lines) {
    if (l.data && (l.type === "stdout" || l.type === "stderr" || l.type === "truncated")) {
      out[l.type] += Buffer.from(l.data, "base64").toString();
    }
  }
  return out;
}

const TASK_SH = `
set -e
n=$(cat "$FIREBREAK_INPUT_FILE")
echo "task $FIREBREAK_TASK_INDEX of $FIREBREAK_TASK_COUNT got $n (attempt $FIREBREAK_TASK_ATTEMPT)"
echo "to stderr" >&2
sleep 0.1
printf '{"square": %d}' $((n * n)) > "$FIREBREAK_OUTPUT_DIR/result.json"
`;

describe("jobs over the fake node", () => {
  test("12 inputs, parallelism 4: 12 results in order, artifacts and logs, cost = sum of tasks, nothing left", async () => {
    const env = await setup();
    const t = await env.tenant();
    const sha = await upload(t.api, TASK_SH);
    const inputs = Array.from({ length: 12 }, (_, i) => i + 1);
    const created = await t.api.post("/v1/jobs", {
      argv: ["sh", "task.sh"],
      files: [{ path: "task.sh", sha256: sha }],
      inputs,
      parallelism: 4,
      metadata: { project: "squares" },
    });
    assert.equal(created.status, 201, created.text);
    assert.equal(created.json.taskCount, 12);
    assert.deepEqual(created.json.outputs, ["out"]);
    const job = await waitJob(t.api, created.json.id);
    assert.equal(job.state, "succeeded");
    assert.deepEqual(job.tasks, { queued: 0, running: 0, succeeded: 12, failed: 0, cancelled: 0 });
    assert.ok(env.maxLive <= 4, `at most 4 task sandboxes at once (saw ${env.maxLive})`);
    assert.ok(env.maxLive >= 2, "tasks ran in parallel");

    const tasks = await tasksOf(t.api, job.id);
    assert.deepEqual(
      tasks.map((x) => x.index),
      [...inputs.keys()],
    );
    for (const [i, task] of tasks.entries()) {
      assert.equal(task.state, "succeeded");
      assert.equal(task.exitCode, 0);
      assert.equal(task.attempts, 1);
      assert.deepEqual(
        task.artifacts.map((a) => a.path),
        ["out/result.json"],
      );
      const dl = await t.api.get(`/v1/jobs/${job.id}/tasks/${i}/artifacts?path=out/result.json`);
      assert.equal(dl.status, 200);
      assert.deepEqual(JSON.parse(dl.text), { square: (i + 1) ** 2 });
      assert.equal(dl.headers.get("x-firebreak-sha256"), task.artifacts[0]!.sha256);
      const out = await logs(t.api, job.id, i);
      assert.equal(out.stdout, `task ${i} of 12 got ${i + 1} (attempt 1)\n`);
      assert.equal(out.stderr, "to stderr\n");
      assert.deepEqual(out.lines.at(-1), {
        type: "end",
        attempt: 1,
        state: "succeeded",
        exitCode: 0,
        failure: null,
      });
    }
    const all = await t.api.get(`/v1/jobs/${job.id}/artifacts`);
    assert.deepEqual(
      all.json.artifacts.map((a: { task: number }) => a.task),
      [...inputs.keys()],
    );

    // The cost tree: every task sandbox has the job as parent and root.
    const usage = await t.api.get(`/v1/jobs/${job.id}/usage`);
    assert.equal(usage.status, 200, usage.text);
    assert.equal(usage.json.tasks.length, 12);
    let cpu = 0;
    let life = 0;
    for (const task of usage.json.tasks) {
      assert.equal(task.attempts.length, 1);
      assert.equal(task.attempts[0].kind, "initial");
      assert.equal(task.attempts[0].final, true);
      cpu += task.total.cpuSeconds;
      life += task.total.lifetimeSeconds;
    }
    assert.equal(usage.json.total.sandboxes, 12);
    assert.ok(Math.abs(usage.json.total.cpuSeconds - cpu) < 0.005, "total = sum of the tasks' CPU");
    assert.ok(
      Math.abs(usage.json.total.lifetimeSeconds - life) < 0.005,
      "total = sum of the tasks' lifetimes",
    );
    assert.ok(usage.json.total.lifetimeSeconds > 0);
    const byRoot = (await t.api.get("/v1/usage?groupBy=root")).json.groups.find(
      (g: { key: string }) => g.key === job.id,
    );
    assert.equal(byRoot.sandboxes, 12, "the ledger rolls the task sandboxes up to the job");
    assert.ok(Math.abs(byRoot.cpuSeconds - usage.json.total.cpuSeconds) < 0.005);
    const sb = await t.api.get(`/v1/sandboxes/${tasks[0]!.sandboxId}`);
    assert.equal(sb.json.rootId, job.id);
    assert.equal(sb.json.parentId, job.id);
    assert.equal(sb.json.state, "killed");
    assert.equal(sb.json.metadata["firebreak.job"], job.id);
    assert.equal(sb.json.metadata.project, "squares");

    assert.equal(env.node.live, 0, "every task sandbox was torn down");
    assert.equal(env.node.created, 12);
    assert.equal(env.jobs.running, 0);
  });

  test("exit 3 is retried as the policy says, then failed with its exit code and every attempt's logs", async () => {
    const env = await setup();
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", {
      cmd: 'echo "try $FIREBREAK_TASK_ATTEMPT"; exit 3',
      retry: { maxAttempts: 3, on: ["exit_code"], backoffMs: 20 },
    });
    assert.equal(created.status, 201, created.text);
    const job = await waitJob(t.api, created.json.id);
    assert.equal(job.state, "failed");
    const [task] = await tasksOf(t.api, job.id);
    assert.equal(task!.state, "failed");
    assert.equal(task!.exitCode, 3);
    assert.equal(task!.failure, "exit_code");
    assert.equal(task!.attempts, 3);
    assert.match(task!.message!, /exited with code 3/);
    const detail = await t.api.get(`/v1/jobs/${job.id}/tasks/0`);
    assert.deepEqual(
      detail.json.history.map((a: { attempt: number; state: string; exitCode: number }) => [
        a.attempt,
        a.state,
        a.exitCode,
      ]),
      [
        [1, "failed", 3],
        [2, "failed", 3],
        [3, "failed", 3],
      ],
    );
    for (const n of [1, 2, 3])
      assert.equal((await logs(t.api, job.id, 0, `?attempt=${n}`)).stdout, `try ${n}\n`);
    assert.equal((await logs(t.api, job.id, 0)).stdout, "try 3\n", "default: the result attempt");
    const usage = await t.api.get(`/v1/jobs/${job.id}/usage`);
    assert.deepEqual(
      usage.json.tasks[0].attempts.map((a: { kind: string }) => a.kind),
      ["initial", "retry", "retry"],
    );
    assert.equal(usage.json.total.sandboxes, 3, "retries are billed to the job");
    assert.equal(env.node.live, 0);

    // Only the named exit codes are retried.
    const other = await t.api.post("/v1/jobs", {
      cmd: "exit 4",
      retry: { maxAttempts: 3, on: ["exit_code"], exitCodes: [3], backoffMs: 0 },
    });
    const j2 = await waitJob(t.api, other.json.id);
    const [t2] = await tasksOf(t.api, j2.id);
    assert.equal(t2!.attempts, 1);
    assert.equal(t2!.exitCode, 4);
  });

  test("a task over its timeout is killed and reported as timeout; nothing is left running", async () => {
    const env = await setup();
    const t = await env.tenant();
    const t0 = Date.now();
    const created = await t.api.post("/v1/jobs", {
      cmd: "echo started; sleep 60",
      taskTimeoutMs: 1000,
      retry: { maxAttempts: 2, on: ["exit_code"] },
    });
    const job = await waitJob(t.api, created.json.id);
    assert.ok(Date.now() - t0 < 20_000, "killed at its timeout, not after the sleep");
    const [task] = await tasksOf(t.api, job.id);
    assert.equal(task!.state, "failed");
    assert.equal(task!.failure, "timeout");
    assert.equal(task!.exitCode, null);
    assert.equal(task!.attempts, 1, "timeouts are not in the policy: no retry");
    assert.match(task!.message!, /task timeout \(1000 ms\)/);
    assert.equal((await logs(t.api, job.id, 0)).stdout, "started\n");
    const sb = await t.api.get(`/v1/sandboxes/${task!.sandboxId}`);
    assert.equal(sb.json.state, "killed");
    assert.equal(sb.json.endReason, "job_task_timeout");
    assert.equal(env.node.live, 0);
  });

  test("cancel: queued tasks at once, running ones killed; the job ends cancelled", async () => {
    const env = await setup();
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", {
      cmd: "sleep 60",
      inputs: [1, 2, 3, 4, 5, 6],
      parallelism: 2,
    });
    const id = created.json.id;
    for (let i = 0; i < 400 && env.node.live < 2; i++) await sleep(25);
    assert.equal(env.node.live, 2);
    await sleep(200); // the commands are running
    const c = await t.api.post(`/v1/jobs/${id}/cancel`);
    assert.equal(c.status, 200, c.text);
    assert.ok(["cancelling", "cancelled"].includes(c.json.state));
    assert.equal(c.json.tasks.queued, 0, "queued tasks are cancelled in the same request");
    const job = await waitJob(t.api, id);
    assert.equal(job.state, "cancelled");
    assert.deepEqual(job.tasks, { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 6 });
    const tasks = await tasksOf(t.api, id);
    assert.equal(tasks.filter((x) => x.attempts === 1).length, 2, "only the running two had started");
    assert.equal(env.node.live, 0);
    assert.equal(env.node.created, 2);
    assert.equal((await t.api.post(`/v1/jobs/${id}/cancel`)).json.state, "cancelled", "again: as it is");
  });

  test("output over maxLogBytes: the head, a clear marker with the omitted count, and the tail", async () => {
    const env = await setup();
    const t = await env.tenant();
    // 200,000 bytes of digits, then a last line.
    const created = await t.api.post("/v1/jobs", {
      cmd: "head -c 200000 /dev/zero | tr '\\0' 7; echo; echo the-end",
      maxLogBytes: 100_000,
    });
    const job = await waitJob(t.api, created.json.id);
    assert.equal(job.state, "succeeded");
    const [task] = await tasksOf(t.api, job.id);
    const total = 200_000 + 1 + 8;
    assert.equal(task!.logBytes, total);
    const tail = 64 * 1024;
    assert.equal(task!.logDroppedBytes, total - 100_000 - tail);
    const out = await logs(t.api, job.id, 0);
    assert.equal(out.truncated, truncationMarker(total - 100_000 - tail, tail));
    assert.equal(out.stdout.length, 100_000 + tail);
    assert.ok(out.stdout.endsWith("7\nthe-end\n"));
    const kinds = out.lines.map((l) => l.type);
    assert.ok(kinds.indexOf("truncated") > 0 && kinds.indexOf("truncated") < kinds.lastIndexOf("stdout"));
  });

  test("logs stream while the task runs (follow), through a retry to the end", async () => {
    const env = await setup();
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", {
      cmd: 'echo "first $FIREBREAK_TASK_ATTEMPT"; sleep 1; echo "second $FIREBREAK_TASK_ATTEMPT"; [ "$FIREBREAK_TASK_ATTEMPT" = 2 ]',
      retry: { maxAttempts: 2, on: ["exit_code"], backoffMs: 0 },
    });
    const id = created.json.id;
    const res = await env.app.fetch(
      new Request(`http://in-process/v1/jobs/${id}/tasks/0/logs?follow=true`, {
        headers: { authorization: `Bearer ${t.key}` },
      }),
    );
    assert.equal(res.status, 200);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    const events: { type: string; data?: string; attempt?: number; state?: string }[] = [];
    let sawWhileRunning = false;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += value;
      let nl = text.indexOf("\n");
      while (nl >= 0) {
        const ev = JSON.parse(text.slice(0, nl));
        text = text.slice(nl + 1);
        events.push(ev);
        if (ev.type === "stdout" && events.length === 1) {
          sawWhileRunning = (await t.api.get(`/v1/jobs/${id}/tasks/0`)).json.state === "running";
        }
        nl = text.indexOf("\n");
      }
    }
    assert.ok(sawWhileRunning, "the first line arrived while the task ran");
    const out = events
      .filter((e) => e.type === "stdout")
      .map((e) => `${e.attempt}:${Buffer.from(e.data!, "base64").toString()}`);
    assert.deepEqual(out, ["1:first 1\n", "1:second 1\n", "2:first 2\n", "2:second 2\n"]);
    assert.deepEqual(
      events.filter((e) => e.type !== "stdout").map((e) => [e.type, e.attempt, e.state ?? null]),
      [
        ["end", 1, "failed"],
        ["attempt", 2, null],
        ["end", 2, "succeeded"],
      ],
    );
    assert.equal((await waitJob(t.api, id)).state, "succeeded");
  });

  test("a restart takes over: lost attempts' sandboxes are killed first, their tasks run again, once each", async () => {
    const env = await setup();
    await env.jobs.close(); // this process's dispatcher is replaced below by "a dead one" and a new one
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", {
      cmd: 'echo "ran $FIREBREAK_TASK_ATTEMPT" > "$FIREBREAK_OUTPUT_DIR/ran"',
      inputs: [0, 1, 2],
      parallelism: 3,
    });
    const id = created.json.id;
    // A dispatcher that died mid-job: tasks 0 and 1 claimed, task 0's sandbox running.
    const dead = "jobs/dead/1";
    const claim = (index: number) => ({
      jobId: id,
      index,
      attempt: 1,
      id: `attdead${index}`,
      holder: dead,
      state: "running" as const,
      sandboxId: null,
      startedAt: new Date().toISOString(),
      endedAt: null,
      exitCode: null,
      failure: null,
      message: null,
      logBytes: 0,
      logDroppedBytes: 0,
      artifacts: [],
      timings: {},
    });
    assert.equal(await env.store.jobs.claimTask(claim(0)), true);
    assert.equal(await env.store.jobs.claimTask(claim(1)), true);
    const tenant = (await env.store.getTenant(t.id))!;
    const orphan = await env.sandboxes.create(
      { keyId: t.keyId, tenant },
      {
        template: "base",
        vcpus: 1,
        memoryMib: 256,
        timeoutMs: 60_000,
        envVars: {},
        metadata: { "firebreak.attempt": "attdead0" },
        lineage: { parentId: id, rootId: id },
      },
    );
    assert.equal(env.node.live, 1);

    const { JobService } = await import("./job-service.ts");
    const { FileArtifactStore } = await import("./artifact-store.ts");
    const second = new JobService({
      store: env.store,
      sandboxes: env.sandboxes,
      artifacts: env.jobs.artifacts as InstanceType<typeof FileArtifactStore>,
      config: { ...env.jobs.config },
      controlPlane: env.config,
      log: (await import("pino")).default({ level: "silent" }),
    });
    second.start();
    try {
      const job = await waitJob(t.api, id);
      assert.equal(job.state, "succeeded");
      assert.equal((await t.api.get(`/v1/sandboxes/${orphan.id}`)).json.endReason, "job_attempt_lost");
      const tasks = await tasksOf(t.api, id);
      assert.deepEqual(
        tasks.map((x) => [x.attempts, x.interruptions]),
        [
          [2, 1],
          [2, 1],
          [1, 0],
        ],
      );
      for (const [i, n] of [2, 2, 1].entries()) {
        const dl = await t.api.get(`/v1/jobs/${id}/tasks/${i}/artifacts?path=out/ran`);
        assert.equal(dl.text, `ran ${n}\n`, "one result per task, from its rerun");
      }
      const usage = await t.api.get(`/v1/jobs/${id}/usage`);
      assert.deepEqual(
        usage.json.tasks[0].attempts.map((a: { kind: string; state: string }) => [a.kind, a.state]),
        [
          ["initial", "interrupted"],
          ["rerun", "succeeded"],
        ],
      );
      assert.equal(
        usage.json.tasks[0].attempts[0].sandboxId,
        orphan.id,
        "the lost attempt's sandbox is found and billed",
      );
      assert.equal(env.node.live, 0);
    } finally {
      await second.close();
    }
  });

  test("a dispatcher without the jobs lease claims nothing", async () => {
    const env = await setup();
    await env.jobs.close();
    const { JobService } = await import("./job-service.ts");
    const follower = new JobService({
      store: env.store,
      sandboxes: env.sandboxes,
      artifacts: env.jobs.artifacts,
      config: env.jobs.config,
      controlPlane: env.config,
      log: (await import("pino")).default({ level: "silent" }),
    });
    follower.start({ isLeader: () => false });
    try {
      const t = await env.tenant();
      const created = await t.api.post("/v1/jobs", { cmd: "true" });
      await sleep(300);
      assert.equal((await t.api.get(`/v1/jobs/${created.json.id}`)).json.state, "queued");
      assert.equal(env.node.created, 0);
    } finally {
      await follower.close();
    }
  });

  test("shutdown interrupts running tasks; they are not failed and run again at the next start", async () => {
    const env = await setup();
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", { cmd: "sleep 60", inputs: [1, 2] });
    for (let i = 0; i < 400 && env.node.live < 2; i++) await sleep(25);
    await sleep(100);
    await env.jobs.close();
    assert.equal(env.node.live, 0, "their sandboxes are killed");
    const tasks = await tasksOf(t.api, created.json.id);
    assert.deepEqual(
      tasks.map((x) => [x.state, x.interruptions]),
      [
        ["queued", 1],
        ["queued", 1],
      ],
    );
    assert.equal(
      (await t.api.get(`/v1/jobs/${created.json.id}/tasks/0`)).json.history[0].state,
      "interrupted",
    );
  });

  test("platform failures: a sandbox that does not boot is retried when the policy says; quota defers, never fails", async () => {
    const env = await setup();
    const t = await env.tenant({ maxSandboxes: 1 });
    const { FirebreakError } = await import("@firebreak/node-agent");
    env.node.failNextCreate = new FirebreakError("SANDBOX_BOOT_FAILED", "the fake VM did not boot");
    const retried = await t.api.post("/v1/jobs", { cmd: "true", retry: { maxAttempts: 2, backoffMs: 0 } });
    const j1 = await waitJob(t.api, retried.json.id);
    assert.equal(j1.state, "succeeded");
    const [t1] = await tasksOf(t.api, j1.id);
    assert.equal(t1!.attempts, 2);
    const h = (await t.api.get(`/v1/jobs/${j1.id}/tasks/0`)).json.history;
    assert.equal(h[0].failure, "infrastructure");
    assert.match(h[0].message, /SANDBOX_BOOT_FAILED/);

    env.node.failNextCreate = new FirebreakError("SANDBOX_BOOT_FAILED", "again");
    const once = await t.api.post("/v1/jobs", { cmd: "true", retry: { maxAttempts: 1 } });
    const j2 = await waitJob(t.api, once.json.id);
    assert.equal(j2.state, "failed");
    assert.equal((await tasksOf(t.api, j2.id))[0]!.failure, "infrastructure");

    // maxSandboxes 1 and parallelism 4: one at a time, every task succeeds, no attempt wasted.
    const many = await t.api.post("/v1/jobs", { cmd: "sleep 0.1", inputs: [1, 2, 3, 4], parallelism: 4 });
    const j3 = await waitJob(t.api, many.json.id);
    assert.equal(j3.state, "succeeded");
    assert.ok((await tasksOf(t.api, j3.id)).every((x) => x.attempts === 1));
    assert.equal(env.maxLive, 1);
  });

  test("a task whose sandbox is killed from outside is reported killed", async () => {
    const env = await setup();
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", { cmd: "sleep 60" });
    let sandboxId: string | null = null;
    for (let i = 0; i < 400 && !sandboxId; i++) {
      sandboxId = (await tasksOf(t.api, created.json.id))[0]!.sandboxId;
      await sleep(25);
    }
    await sleep(200);
    assert.equal((await t.api.delete(`/v1/sandboxes/${sandboxId}`)).status, 204);
    const job = await waitJob(t.api, created.json.id);
    const [task] = await tasksOf(t.api, job.id);
    assert.equal(task!.state, "failed");
    assert.equal(task!.failure, "killed");
    assert.match(task!.message!, /sandbox ended .*killed \(by key:/);
  });

  test("inputs as files and a file mode; declared outputs: files, directories, missing ones", async () => {
    const env = await setup();
    const t = await env.tenant();
    const a = await upload(t.api, "alpha\n");
    const b = await upload(t.api, "beta\n");
    const run = await upload(
      t.api,
      '#!/bin/sh\nmkdir -p res/sub\ncp "$FIREBREAK_INPUT_FILE" res/sub/copy\nwc -c < "$FIREBREAK_INPUT_FILE" > size\n',
    );
    const created = await t.api.post("/v1/jobs", {
      argv: ["./run.sh"],
      files: [{ path: "run.sh", sha256: run, mode: 0o755 }],
      inputFiles: [
        { sha256: a, name: "a.txt" },
        { sha256: b, name: "b.txt" },
      ],
      outputs: ["size", "res", "nothing-here"],
    });
    assert.equal(created.status, 201, created.text);
    const job = await waitJob(t.api, created.json.id);
    assert.equal(job.state, "succeeded", JSON.stringify(await tasksOf(t.api, created.json.id)));
    const tasks = await tasksOf(t.api, job.id);
    assert.deepEqual(
      tasks[1]!.artifacts.map((x) => [x.path, x.bytes ?? x.error]),
      [
        ["size", 2],
        ["res/sub/copy", 5],
        ["nothing-here", "missing"],
      ],
    );
    const copy = await t.api.get(`/v1/jobs/${job.id}/tasks/1/artifacts?path=res/sub/copy`);
    assert.equal(copy.text, "beta\n");
    const missing = await t.api.get(`/v1/jobs/${job.id}/tasks/1/artifacts?path=nothing-here`);
    assert.equal(missing.status, 404);
  });

  test("artifacts over the size limit are refused and recorded, not stored", async () => {
    const env = await setup({}, { maxArtifactBytes: 1000, maxArtifactBytesPerTask: 1500 });
    const t = await env.tenant();
    const created = await t.api.post("/v1/jobs", {
      cmd: 'head -c 2000 /dev/zero > "$FIREBREAK_OUTPUT_DIR/big"; head -c 900 /dev/zero > "$FIREBREAK_OUTPUT_DIR/m1"; head -c 900 /dev/zero > "$FIREBREAK_OUTPUT_DIR/m2"',
    });
    const job = await waitJob(t.api, created.json.id);
    const [task] = await tasksOf(t.api, job.id);
    assert.deepEqual(
      task!.artifacts.map((x) => [x.path, x.error ?? x.bytes]),
      [
        ["out/big", "too_large"],
        ["out/m1", 900],
        ["out/m2", "limit"],
      ],
    );
  });

  test("bad input and other tenants: clear errors, 404 for another tenant's job and files", async () => {
    const env = await setup({}, { maxUploadBytes: 100 });
    const t = await env.tenant();
    const other = await env.tenant();
    const big = await t.api.put("/v1/jobs/files", {
      body: "x".repeat(101),
      headers: { "content-type": "application/octet-stream" },
    });
    assert.equal(big.status, 413);
    assert.equal(big.json.error.code, "PAYLOAD_TOO_LARGE");
    const sha = await upload(t.api, "mine");
    const cases: [unknown, RegExp, number?][] = [
      [{ cmd: "true", argv: ["true"] }, /exactly one of cmd/],
      [{}, /exactly one of cmd/],
      [{ cmd: "true", files: [{ path: "../x", sha256: sha }] }, /files\.0\.path/],
      [{ cmd: "true", files: [{ path: "x", sha256: "0".repeat(64) }] }, /files\.0\.sha256: no uploaded file/],
      [{ cmd: "true", inputs: [1], inputFiles: [{ sha256: sha, name: "a" }] }, /not both/],
      [{ cmd: "true", inputs: [] }, /inputs/],
      [{ cmd: "true", outputs: ["a/../../b"] }, /outputs\.0/],
      [{ cmd: "true", metadata: { "firebreak.job": "x" } }, /firebreak\./],
      [{ cmd: "true", retry: { on: ["oops"] } }, /retry\.on/],
      [{ cmd: "true", parallelism: 0 }, /parallelism/],
      [{ cmd: "true", surprise: 1 }, /unknown field/],
      [{ cmd: "true", template: "nope" }, /no built template named nope/, 404],
    ];
    for (const [b, re, status] of cases) {
      const r = await t.api.post("/v1/jobs", b);
      assert.equal(r.status, status ?? 400, `${JSON.stringify(b)}: ${r.text}`);
      assert.match(r.json.error.message, re, JSON.stringify(b));
    }
    // Another tenant can use neither this tenant's upload nor its job.
    const theirs = await other.api.post("/v1/jobs", { cmd: "true", files: [{ path: "f", sha256: sha }] });
    assert.equal(theirs.status, 400);
    assert.match(theirs.json.error.message, /no uploaded file/);
    const mine = await t.api.post("/v1/jobs", { cmd: "true" });
    const id = mine.json.id;
    for (const [m, p] of [
      ["GET", `/v1/jobs/${id}`],
      ["POST", `/v1/jobs/${id}/cancel`],
      ["GET", `/v1/jobs/${id}/tasks`],
      ["GET", `/v1/jobs/${id}/tasks/0`],
      ["GET", `/v1/jobs/${id}/tasks/0/logs`],
      ["GET", `/v1/jobs/${id}/tasks/0/artifacts?path=x`],
      ["GET", `/v1/jobs/${id}/artifacts`],
      ["GET", `/v1/jobs/${id}/usage`],
    ] as const) {
      const r = await other.api.call(m, p);
      assert.equal(r.status, 404, `${m} ${p}`);
      assert.equal(r.json.error.code, "NOT_FOUND");
    }
    assert.deepEqual((await other.api.get("/v1/jobs")).json.jobs, []);
    assert.equal((await t.api.get("/v1/jobs?state=queued,running,succeeded")).json.jobs.length, 1);
    assert.equal((await t.api.get("/v1/jobs/nope/tasks/0")).status, 404);
    assert.equal((await t.api.get(`/v1/jobs/${id}/tasks/5`)).status, 404);
  });
});
