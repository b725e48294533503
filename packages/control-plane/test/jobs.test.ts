// Jobs with real microVMs, kept small (guests run under TCG): `firebreak job
// run --parallel 2 --inputs inputs.jsonl -- python3 task.py` over 6 inputs
// through the CLI (6 results in order, every artifact downloaded, logs, the
// job's cost = the sum of its tasks'), a task that exits 3 retried and
// failed, a task over its timeout killed, and SIGKILL of the control plane in
// the middle of a job (it finishes after a restart, no result lost or
// duplicated, nothing orphaned). Every /v1 answer is checked against
// /openapi.json.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { runCli } from "../../cli/test/api-helpers.ts";
import type { RunningServer } from "../src/index.ts";
import { ApiClient } from "../src/testing/api-client.ts";
import {
  ADMIN_KEY,
  assertNoLeftovers,
  nodeIds,
  orphans,
  ServerProcess,
  server,
  skipUnlessRoot,
  tenant,
  waitFor,
} from "./helpers.ts";

const TASK_PY = `
import json, os
n = json.load(open(os.environ["FIREBREAK_INPUT_FILE"]))["n"]
print(f"task {os.environ['FIREBREAK_TASK_INDEX']}: {n} squared")
with open(os.path.join(os.environ["FIREBREAK_OUTPUT_DIR"], "result.json"), "w") as f:
    json.dump({"n": n, "square": n * n}, f)
`;

async function finished(api: ApiClient, id: string, timeoutMs: number) {
  return waitFor(
    `job ${id} to end`,
    async () => {
      const j = (await api.get(`/v1/jobs/${id}`)).json;
      return ["succeeded", "failed", "cancelled"].includes(j.state) ? j : undefined;
    },
    timeoutMs,
  );
}

function decode(lines: { type: string; data?: string }[], type: string): string {
  return lines
    .filter((l) => l.type === type)
    .map((l) => Buffer.from(l.data!, "base64").toString())
    .join("");
}

describe("jobs with real microVMs", { skip: skipUnlessRoot }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  const sandboxIds: string[] = [];

  before(async () => {
    ({ srv, admin } = await server({ warmPools: { base: 2 }, config: { usageIntervalMs: 1000 } }));
  });
  after(async () => {
    const ids = await nodeIds(srv, sandboxIds);
    await srv.close();
    await assertNoLeftovers(ids);
  });

  test("firebreak job run --parallel 2 --inputs inputs.jsonl -- python3 task.py over 6 inputs: results in order, artifacts, logs, cost = sum of tasks", async (t) => {
    const tn = await tenant(admin);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-jobs-it-"));
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    await fs.writeFile(path.join(dir, "task.py"), TASK_PY);
    await fs.writeFile(
      path.join(dir, "inputs.jsonl"),
      Array.from({ length: 6 }, (_, i) => JSON.stringify({ n: i + 1 })).join("\n"),
    );
    const cli = (args: string[]) =>
      runCli(args, {
        env: { FIREBREAK_URL: srv.url, FIREBREAK_API_KEY: tn.key },
        cwd: dir,
        timeoutMs: 600_000,
      });
    const t0 = performance.now();
    const run = await cli([
      "job",
      "run",
      "--template",
      "base",
      "--parallel",
      "2",
      "--inputs",
      "inputs.jsonl",
      "--timeout-ms",
      "300000",
      "--retries",
      "1",
      "--",
      "python3",
      "task.py",
    ]);
    const wallMs = performance.now() - t0;
    const id = /^job (\S+): 6 tasks, 2 at a time/m.exec(run.stderr)?.[1];
    assert.ok(id, run.stderr);
    const job = (await tn.api.get(`/v1/jobs/${id}`)).json;
    const tasks = (await tn.api.get(`/v1/jobs/${id}/tasks`)).json.tasks;
    for (const task of tasks) if (task.sandboxId) sandboxIds.push(task.sandboxId);
    assert.equal(run.code, 0, `${run.stderr}\n${run.stdout}`);
    assert.equal(job.state, "succeeded", JSON.stringify(job.tasks));
    assert.deepEqual(
      run.stdout
        .trim()
        .split("\n")
        .slice(1)
        .map((l) => l.split(/\s+/).slice(0, 3)),
      [0, 1, 2, 3, 4, 5].map((i) => [String(i), "succeeded", "0"]),
      "the CLI prints the six results in order",
    );
    assert.deepEqual(
      tasks.map((x: { index: number }) => x.index),
      [...Array(6).keys()],
    );

    const dl = await cli(["job", "artifacts", id, "--download", "results"]);
    assert.equal(dl.code, 0, dl.stderr);
    const overheads: number[] = [];
    const phases: Record<string, number[]> = {};
    const paths: Record<string, number> = {};
    for (const task of tasks) {
      assert.equal(task.state, "succeeded");
      assert.equal(task.exitCode, 0);
      const n = task.index + 1;
      const file = path.join(dir, "results", String(task.index), "out", "result.json");
      assert.deepEqual(JSON.parse(await fs.readFile(file, "utf8")), { n, square: n * n });
      const art = await tn.api.get(`/v1/jobs/${id}/tasks/${task.index}/artifacts?path=out/result.json`);
      assert.equal(art.status, 200);
      assert.deepEqual(JSON.parse(art.text), { n, square: n * n });
      const logs = await cli(["job", "logs", id, String(task.index)]);
      assert.equal(logs.stdout, `task ${task.index}: ${n} squared\n`);
      const detail = (await tn.api.get(`/v1/jobs/${id}/tasks/${task.index}`)).json;
      const a = detail.history.at(-1);
      overheads.push(Date.parse(a.endedAt) - Date.parse(a.startedAt) - a.timings.command);
      for (const [k, v] of Object.entries(a.timings as Record<string, number>)) {
        phases[k] = [...(phases[k] ?? []), v];
      }
      const sb = (await tn.api.get(`/v1/sandboxes/${task.sandboxId}`)).json;
      assert.equal(sb.state, "killed", "the task's sandbox was torn down");
      assert.equal(sb.rootId, id);
      paths[sb.startPath] = (paths[sb.startPath] ?? 0) + 1;
    }
    // Usage is final once each sandbox has ended; the job's total is the sum of its tasks'.
    const usage = await waitFor(
      "every task's final usage",
      async () => {
        const u = (await tn.api.get(`/v1/jobs/${id}/usage`)).json;
        return u.tasks.every((x: { attempts: { final: boolean }[] }) => x.attempts.every((a) => a.final))
          ? u
          : undefined;
      },
      60_000,
    );
    const sum = (k: "cpuSeconds" | "lifetimeSeconds" | "memoryGibSeconds") =>
      usage.tasks.reduce((s: number, x: { total: Record<string, number> }) => s + x.total[k]!, 0);
    for (const k of ["cpuSeconds", "lifetimeSeconds", "memoryGibSeconds"] as const) {
      assert.ok(Math.abs(usage.total[k] - sum(k)) < 0.01, `${k}: total ${usage.total[k]} = sum ${sum(k)}`);
    }
    assert.ok(usage.total.cpuSeconds > 0 && usage.total.lifetimeSeconds > 0);
    const group = (await tn.api.get("/v1/usage?groupBy=root")).json.groups.find(
      (g: { key: string }) => g.key === id,
    );
    assert.equal(group.sandboxes, usage.total.sandboxes);
    assert.ok(Math.abs(group.cpuSeconds - usage.total.cpuSeconds) < 0.01, "the ledger agrees");
    overheads.sort((x, y) => x - y);
    t.diagnostic(
      `6-input job through the CLI, end to end: ${Math.round(wallMs)} ms; per-task overhead (attempt minus command) p50 ${Math.round(overheads[3]!)} ms, max ${Math.round(overheads[5]!)} ms; phase p50s ${Object.entries(
        phases,
      )
        .map(([k, v]) => `${k} ${Math.round(v.sort((x, y) => x - y)[Math.floor(v.length / 2)]!)} ms`)
        .join(
          ", ",
        )}; start paths ${JSON.stringify(paths)}; job cpu ${usage.total.cpuSeconds} s, lifetime ${usage.total.lifetimeSeconds} s`,
    );
  });

  test("a task that exits 3 is retried as the policy says, then failed with its code and logs; a task over its timeout is killed", async () => {
    const tn = await tenant(admin);
    const three = await tn.api.post("/v1/jobs", {
      cmd: 'echo "attempt $FIREBREAK_TASK_ATTEMPT"; exit 3',
      retry: { maxAttempts: 2, on: ["exit_code"], backoffMs: 100 },
    });
    const slow = await tn.api.post("/v1/jobs", { cmd: "echo begun; sleep 600", taskTimeoutMs: 5_000 });
    const j3 = await finished(tn.api, three.json.id, 300_000);
    const js = await finished(tn.api, slow.json.id, 300_000);
    assert.equal(j3.state, "failed");
    const d3 = (await tn.api.get(`/v1/jobs/${j3.id}/tasks/0`)).json;
    assert.equal(d3.exitCode, 3);
    assert.equal(d3.failure, "exit_code");
    assert.equal(d3.history.length, 2);
    for (const a of d3.history) {
      sandboxIds.push(a.sandboxId);
      const logs = await tn.api.get(`/v1/jobs/${j3.id}/tasks/0/logs?attempt=${a.attempt}`);
      assert.equal(decode(logs.json, "stdout"), `attempt ${a.attempt}\n`);
    }
    const u3 = (await tn.api.get(`/v1/jobs/${j3.id}/usage`)).json;
    assert.deepEqual(
      u3.tasks[0].attempts.map((a: { kind: string }) => a.kind),
      ["initial", "retry"],
    );

    assert.equal(js.state, "failed");
    const ds = (await tn.api.get(`/v1/jobs/${js.id}/tasks/0`)).json;
    sandboxIds.push(ds.sandboxId);
    assert.equal(ds.failure, "timeout");
    assert.equal(ds.history.length, 1);
    assert.ok(ds.history[0].timings.command >= 5_000 && ds.history[0].timings.command < 60_000);
    // What it printed before the kill is kept; under a loaded TCG host the
    // shell may not have reached its echo within the 5 s, so only a prefix.
    const slowLogs = (await tn.api.get(`/v1/jobs/${js.id}/tasks/0/logs`)).json;
    assert.ok("begun\n".startsWith(decode(slowLogs, "stdout")));
    assert.deepEqual(slowLogs.at(-1), {
      type: "end",
      attempt: 1,
      state: "failed",
      exitCode: null,
      failure: "timeout",
    });
    const sb = (await tn.api.get(`/v1/sandboxes/${ds.sandboxId}`)).json;
    assert.equal(sb.state, "killed");
    assert.equal(sb.endReason, "job_task_timeout");
    const live = (await tn.api.get("/v1/sandboxes?state=requested,starting,running,stopping")).json.sandboxes;
    assert.deepEqual(live, [], "nothing of this tenant is left running");
  });
});

describe("jobs across a control plane SIGKILL", { skip: skipUnlessRoot }, () => {
  const procs: ServerProcess[] = [];
  after(async () => {
    for (const p of procs) await p.stop();
  });
  afterEach((t) => {
    // biome-ignore lint/suspicious/noExplicitAny: node:test's context
    if ((t as any).passed === false || process.env["FIREBREAK_TEST_LOG"]) {
      for (const [i, p] of procs.entries()) t.diagnostic(`server ${i} output:\n${p.output.slice(-4000)}`);
    }
  });

  test("kill -9 mid-job, restart: the job finishes, no result lost or duplicated, no sandbox orphaned", async (t) => {
    const first = new ServerProcess();
    procs.push(first);
    await first.start();
    const admin = await new ApiClient(first.url, fetch, ADMIN_KEY).init();
    const tn = await tenant(admin);
    // Four tasks, two at a time, each a few seconds: some finish before the kill, some run through it.
    const created = await tn.api.post("/v1/jobs", {
      cmd: 'sleep 3; echo "$FIREBREAK_TASK_INDEX/$FIREBREAK_TASK_ATTEMPT" > "$FIREBREAK_OUTPUT_DIR/done"',
      inputs: [0, 1, 2, 3],
      parallelism: 2,
    });
    assert.equal(created.status, 201, created.text);
    const id = created.json.id;
    const before = await waitFor(
      "a finished task and a running one",
      async () => {
        const tasks = (await tn.api.get(`/v1/jobs/${id}/tasks`)).json.tasks as {
          state: string;
          sandboxId: string;
        }[];
        const ok =
          tasks.some((x) => x.state === "succeeded") &&
          tasks.some((x) => x.state === "running" && x.sandboxId);
        return ok ? tasks : undefined;
      },
      300_000,
    );
    // Let the running commands get well under way.
    await new Promise((r) => setTimeout(r, 1500));
    await first.kill9();
    const killedAt = performance.now();
    const doneBefore = before.filter((x) => x.state === "succeeded").length;

    const second = new ServerProcess();
    procs.push(second);
    await second.start();
    const api = new ApiClient(second.url, fetch, tn.key);
    api.validator = admin.validator;
    const job = await finished(api, id, 600_000);
    t.diagnostic(
      `from the SIGKILL to the job's end after the restart: ${Math.round(performance.now() - killedAt)} ms`,
    );
    assert.equal(job.state, "succeeded", JSON.stringify(job.tasks));
    const tasks = (await api.get(`/v1/jobs/${id}/tasks`)).json.tasks as {
      index: number;
      state: string;
      attempts: number;
      interruptions: number;
    }[];
    assert.ok(
      tasks.some((x) => x.interruptions === 1),
      "a task was interrupted by the kill and ran again",
    );
    for (const task of tasks) {
      assert.equal(task.state, "succeeded");
      const h = (await api.get(`/v1/jobs/${id}/tasks/${task.index}`)).json.history as {
        attempt: number;
        state: string;
      }[];
      assert.equal(h.filter((a) => a.state === "succeeded").length, 1, `task ${task.index}: one result`);
      assert.equal(h.filter((a) => a.state === "running").length, 0);
      assert.ok(h.every((a) => a.state === "succeeded" || a.state === "interrupted"));
      const art = await api.get(`/v1/jobs/${id}/tasks/${task.index}/artifacts?path=out/done`);
      assert.equal(art.text, `${task.index}/${task.attempts}\n`, "the result is the last attempt's");
    }
    assert.ok(tasks.filter((x) => x.interruptions === 0).length >= doneBefore, "finished results were kept");
    // Every sandbox the job made has ended and was billed once, interrupted ones included.
    const usage = (await api.get(`/v1/jobs/${id}/usage`)).json;
    const attempts = usage.tasks.flatMap((x: { attempts: unknown[] }) => x.attempts) as {
      kind: string;
      sandboxId: string | null;
      final: boolean;
    }[];
    assert.ok(attempts.some((a) => a.kind === "rerun"));
    for (const a of attempts) {
      assert.ok(a.sandboxId, "every attempt's sandbox is known");
      assert.equal(a.final, true, "and has its final usage record");
    }
    const records = (await api.get("/v1/usage/records?limit=1000")).json.records as { sandboxId: string }[];
    for (const a of attempts) assert.equal(records.filter((r) => r.sandboxId === a.sandboxId).length, 1);
    assert.deepEqual(await orphans(), []);
    await second.stop();
    assert.deepEqual(await orphans(), []);
  });
});
