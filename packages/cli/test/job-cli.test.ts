// firebreak job run|list|get|logs|cancel|artifacts|usage as a user runs them,
// against the control plane's real routes, store and dispatcher served over
// HTTP, with the jobs fake node (task sandboxes run their commands as host
// processes): local files shipped, JSON Lines inputs, results in order,
// exit codes, downloads that stay inside their directory. No VMs, no root.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { getRequestListener } from "@hono/node-server";
import { JobsFakeNode } from "../../control-plane/src/jobs/testing/process-guest.ts";
import { inProcess } from "../../control-plane/src/testing/in-process.ts";
import { downloadPath } from "../src/commands/job.ts";
import { runCli } from "./api-helpers.ts";

let world: Awaited<ReturnType<typeof inProcess>>;
let node: JobsFakeNode;
let server: http.Server;
let url: string;
let key: string;
let dir: string;

const cli = (args: string[], opts: { input?: string } = {}) =>
  runCli(args, { env: { FIREBREAK_URL: url, FIREBREAK_API_KEY: key }, cwd: dir, ...opts });

const TASK_SH = `n=$(cat "$FIREBREAK_INPUT_FILE")
echo "task $FIREBREAK_TASK_INDEX: $n"
printf '{"square": %d}' "$((n * n))" > "$FIREBREAK_OUTPUT_DIR/result.json"
`;

describe("firebreak job (control plane over HTTP, jobs fake node)", { timeout: 180_000 }, () => {
  before(async () => {
    node = new JobsFakeNode();
    world = await inProcess({}, { node, jobs: { dispatchIntervalMs: 50, deferMs: 100 } });
    world.jobs.start();
    key = (await world.tenant()).key;
    server = http.createServer(getRequestListener(world.app.fetch));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-job-cli-"));
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await world.close();
    await node.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  test("job run --parallel 2 --inputs inputs.jsonl -- sh task.sh: task.sh shipped, results in order, artifacts, logs, usage", async () => {
    await fs.writeFile(path.join(dir, "task.sh"), TASK_SH);
    await fs.writeFile(path.join(dir, "inputs.jsonl"), "1\n2\n\n3\n4\n5\n6\n");
    const r = await cli(["job", "run", "--parallel", "2", "--inputs", "inputs.jsonl", "--", "sh", "task.sh"]);
    assert.equal(r.code, 0, r.stderr);
    const id = /^job (\S+): 6 tasks, 2 at a time/m.exec(r.stderr)?.[1];
    assert.ok(id, r.stderr);
    assert.match(r.stderr, new RegExp(`job ${id} succeeded: 6/6 done, 0 running`));
    const rows = r.stdout.trim().split("\n");
    assert.match(rows[0]!, /^TASK\s+STATE\s+EXIT\s+ATTEMPTS\s+FAILURE\s+ARTIFACTS$/);
    assert.deepEqual(
      rows.slice(1).map((l) => l.split(/\s+/)),
      [0, 1, 2, 3, 4, 5].map((i) => [String(i), "succeeded", "0", "1", "out/result.json"]),
    );
    assert.equal(node.live, 0, "every task sandbox was torn down");

    const logs = await cli(["job", "logs", id, "4"]);
    assert.equal(logs.code, 0, logs.stderr);
    assert.equal(logs.stdout, "task 4: 5\n");

    const out = path.join(dir, "dl");
    const dl = await cli(["job", "artifacts", id, "--download", out]);
    assert.equal(dl.code, 0, dl.stderr);
    assert.equal(dl.stdout.trim().split("\n").length, 6);
    for (const i of [0, 1, 2, 3, 4, 5]) {
      const text = await fs.readFile(path.join(out, String(i), "out", "result.json"), "utf8");
      assert.deepEqual(JSON.parse(text), { square: (i + 1) ** 2 });
    }
    const list = await cli(["job", "artifacts", id, "--task", "2"]);
    assert.match(list.stdout, /^2\s+1\s+out\/result.json\s+13\s+[0-9a-f]{64}$/m);

    const get = await cli(["job", "get", id]);
    assert.match(get.stdout, new RegExp(`^id\\s+${id}$`, "m"));
    assert.match(get.stdout, /^command\s+sh task.sh$/m);
    assert.match(get.stdout, /^tasks\s+6 \(2 at a time/m);
    const json = JSON.parse((await cli(["job", "get", id, "--json"])).stdout);
    assert.equal(json.job.files[0].path, "task.sh", "the command's local file was shipped");
    assert.equal(json.tasks.length, 6);

    const usage = JSON.parse((await cli(["job", "usage", id, "--json"])).stdout);
    const sum = usage.tasks.reduce(
      (s: number, t: { total: { lifetimeSeconds: number } }) => s + t.total.lifetimeSeconds,
      0,
    );
    assert.ok(Math.abs(usage.total.lifetimeSeconds - sum) < 0.005, "the job's cost is the sum of its tasks'");
    const table = await cli(["job", "usage", id]);
    assert.match(table.stdout, /^total\s+succeeded\s/m);
    assert.equal(table.stdout.trim().split("\n").length, 8, "header, 6 attempts, total");

    const jobs = await cli(["job", "list"]);
    assert.match(jobs.stdout, new RegExp(`^${id}\\s+succeeded\\s+base\\s+6/6\\s+0\\s`, "m"));
  });

  test("a task that exits 3: retried, then failed; job run exits 1 and names the failure; logs per attempt", async () => {
    const r = await cli([
      "job",
      "run",
      "--retries",
      "1",
      "--retry-on",
      "exit_code",
      "--backoff-ms",
      "0",
      "--",
      'echo "try $FIREBREAK_TASK_ATTEMPT"; exit 3',
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /^0\s+failed\s+3\s+2\s+exit code 3\s*$/m);
    const id = /^job (\S+) failed; see: firebreak job logs/m.exec(r.stderr)?.[1];
    assert.ok(id, r.stderr);
    const first = await cli(["job", "logs", id, "--attempt", "1"]);
    assert.equal(first.stdout, "try 1\n");
    assert.match(first.stderr, /attempt 1 failed \(exit code 3\)/);
    assert.equal((await cli(["job", "logs", id])).stdout, "try 2\n", "default: the result attempt");
    const failed = JSON.parse((await cli(["job", "list", "--state", "failed", "--json"])).stdout);
    assert.deepEqual(
      failed.map((j: { id: string }) => j.id),
      [id],
    );
  });

  test("job run --detach, logs --follow, cancel", async () => {
    const r = await cli(["job", "run", "--detach", "--", "sh", "-c", 'echo "up"; sleep 60']);
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    assert.match(id, /^\S+$/);
    const follow = cli(["job", "logs", id, "--follow"]);
    // Cancel once the task's first line is stored (the follower streams it).
    const api = world.api.withKey(key);
    for (let i = 0; ; i++) {
      const logs = await api.get(`/v1/jobs/${id}/tasks/0/logs`);
      if (logs.text.includes('"stdout"')) break;
      assert.ok(i < 800, "the task printed its first line");
      await new Promise((res) => setTimeout(res, 25));
    }
    const c = await cli(["job", "cancel", id]);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, new RegExp(`^job ${id} (cancelling|cancelled)$`, "m"));
    const f = await follow;
    assert.equal(f.code, 0, f.stderr);
    assert.equal(f.stdout, "up\n");
    assert.match(f.stderr, /attempt 1 cancelled/);
    const got = JSON.parse((await cli(["job", "get", id, "--json"])).stdout);
    assert.equal(got.tasks[0].state, "cancelled");
  });

  test("job run -- ./run.sh: the program is shipped when named as a path, executable", async () => {
    await fs.writeFile(path.join(dir, "run.sh"), '#!/bin/sh\necho "ran with $1"\n', { mode: 0o755 });
    const r = await cli(["job", "run", "--json", "--", "./run.sh", "x"]);
    assert.equal(r.code, 0, r.stderr);
    const { job, tasks } = JSON.parse(r.stdout);
    assert.deepEqual(
      job.files.map((f: { path: string; mode?: number }) => [f.path, f.mode]),
      [["run.sh", 0o755]],
    );
    assert.equal(tasks[0].state, "succeeded");
    assert.equal((await cli(["job", "logs", job.id])).stdout, "ran with x\n");
  });

  test("bad input: clear errors and the usage exit code", async () => {
    await fs.writeFile(path.join(dir, "bad.jsonl"), '1\n{"n": \n');
    const bad = await cli(["job", "run", "--inputs", "bad.jsonl", "--", "true"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /error \[VALIDATION_FAILED\]: bad\.jsonl:2 is not JSON/);
    const missing = await cli(["job", "run", "--inputs", "nope.jsonl", "--", "true"]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--inputs nope\.jsonl: no such file/);
    const kind = await cli(["job", "run", "--retry-on", "sometimes", "--", "true"]);
    assert.notEqual(kind.code, 0);
    assert.match(kind.stderr, /expected exit_code, timeout, killed, infrastructure/);
    const unknown = await cli(["job", "get", "job-nope"]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /error \[NOT_FOUND\]/);
    const fromStdin = await cli(["job", "run", "--inputs", "-", "--detach", "--", "true"], {
      input: "7\n8\n",
    });
    assert.equal(fromStdin.code, 0, fromStdin.stderr);
  });

  test("downloads stay inside their directory whatever path the guest chose", () => {
    assert.equal(downloadPath("/d", 1, "out/a.json"), "/d/1/out/a.json");
    assert.equal(downloadPath("/d", 1, "/tmp/x"), "/d/1/tmp/x");
    assert.equal(downloadPath("/d", 1, "out//b"), "/d/1/out/b");
    for (const bad of ["../x", "out/../../x", "./x", "", "/", "a/\0b", "..", "out/.."]) {
      assert.equal(downloadPath("/d", 1, bad), undefined, bad);
    }
  });
});
