// The native API end to end through a real server and real microVMs: create,
// stream a command, files, list, kill; tenant isolation; the reaper on a 3 s
// timeout with its usage record; parent attribution through the guest's token;
// pause/resume. Every /v1 response is checked against /openapi.json.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import {
  assertNoLeftovers,
  commandOutput,
  nodeIds,
  server,
  skipUnlessRoot,
  tenant,
  waitFor,
} from "./helpers.ts";

async function create(api: ApiClient, body: unknown, headers: Record<string, string> = {}) {
  const r = await api.post("/v1/sandboxes", body, { headers });
  assert.equal(r.status, 201, r.text);
  return r.json;
}

describe("native API with real microVMs", { skip: skipUnlessRoot }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  const ours: string[] = [];

  before(async () => {
    ({ srv, admin } = await server({ config: { usageIntervalMs: 1000 } }));
  });
  after(async () => {
    const ids = await nodeIds(srv, ours);
    await srv.close();
    await assertNoLeftovers(ids);
  });

  test("create, stream a command, write and read a file, list, kill; one final usage record", async () => {
    const t = await tenant(admin);
    const c = await t.api.post("/v1/sandboxes", {
      metadata: { purpose: "e2e" },
      envVars: { GREETING: "hello" },
    });
    assert.equal(c.status, 201, c.text);
    const sb = c.json;
    ours.push(sb.id);
    assert.equal(sb.state, "running");
    assert.ok(["warm", "snapshot", "cold"].includes(sb.startPath));
    assert.ok(sb.timings.totalMs > 0);

    const run = await t.api.post(`/v1/sandboxes/${sb.id}/commands`, {
      cmd: 'for i in 1 2 3; do echo "$GREETING $i"; done; echo oops >&2; exit 7',
    });
    assert.equal(run.status, 200);
    assert.equal(run.headers.get("content-type"), "application/x-ndjson");
    assert.equal(run.json[0].type, "start");
    const out = commandOutput(run.json);
    assert.equal(out.stdout, "hello 1\nhello 2\nhello 3\n");
    assert.equal(out.stderr, "oops\n");
    assert.equal(out.exitCode, 7);

    const argv = await t.api.post(`/v1/sandboxes/${sb.id}/commands`, { argv: ["cat"], stdin: "from stdin" });
    assert.equal(commandOutput(argv.json).stdout, "from stdin");

    const bytes = Buffer.from("line one\nline two\n\u00e9\n");
    const put = await t.api.put(`/v1/sandboxes/${sb.id}/files?path=notes/today.txt`, {
      body: bytes,
      headers: { "content-type": "application/octet-stream" },
    });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.path, "/home/user/notes/today.txt");
    assert.equal(put.json.bytes, bytes.length);
    const get = await t.api.get(`/v1/sandboxes/${sb.id}/files?path=notes/today.txt`);
    assert.equal(get.status, 200);
    assert.equal(get.text, bytes.toString());
    const list = await t.api.get(`/v1/sandboxes/${sb.id}/files/list?path=/home/user/notes`);
    assert.deepEqual(
      list.json.entries.map((e: { name: string; type: string; size: number }) => [e.name, e.type, e.size]),
      [["today.txt", "file", bytes.length]],
    );
    const mk = await t.api.post(`/v1/sandboxes/${sb.id}/files/mkdir`, { path: "/tmp/a/b" });
    assert.equal(mk.status, 201);
    assert.equal(mk.json.type, "dir");
    const mv = await t.api.post(`/v1/sandboxes/${sb.id}/files/move`, {
      from: "/home/user/notes/today.txt",
      to: "/tmp/a/b/moved.txt",
    });
    assert.equal(mv.json.path, "/tmp/a/b/moved.txt");
    assert.equal(
      (await t.api.get(`/v1/sandboxes/${sb.id}/files/stat?path=/tmp/a/b/moved.txt`)).json.size,
      bytes.length,
    );
    assert.equal((await t.api.delete(`/v1/sandboxes/${sb.id}/files?path=/tmp/a`)).status, 204);
    const missing = await t.api.get(`/v1/sandboxes/${sb.id}/files/stat?path=/tmp/a`);
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.code, "NOT_FOUND");

    const listed = await t.api.get("/v1/sandboxes?state=running&metadata=purpose:e2e");
    assert.deepEqual(
      listed.json.sandboxes.map((s: { id: string }) => s.id),
      [sb.id],
    );

    assert.equal((await t.api.delete(`/v1/sandboxes/${sb.id}`)).status, 204);
    const ended = (await t.api.get(`/v1/sandboxes/${sb.id}`)).json;
    assert.equal(ended.state, "killed");
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].final, true);
    assert.ok(recs[0].cpuSeconds > 0, "CPU seconds come from the cgroup");
    assert.ok(recs[0].memoryPeakMib > 0);
    assert.deepEqual(recs[0].metadata, { purpose: "e2e" });
    const events = (await t.api.get(`/v1/sandboxes/${sb.id}/events`)).json.events.map(
      (e: { type: string }) => e.type,
    );
    for (const ty of ["requested", "scheduled", "started", "ready", "kill", "ended"])
      assert.ok(events.includes(ty), ty);
  });

  test("tenant B gets 404 on every sandbox endpoint for tenant A's sandbox", async () => {
    const a = await tenant(admin);
    const b = await tenant(admin);
    const sb = await create(a.api, {});
    ours.push(sb.id);
    const id = sb.id;
    const calls: [string, string, Record<string, unknown>?][] = [
      ["GET", `/v1/sandboxes/${id}`],
      ["DELETE", `/v1/sandboxes/${id}`],
      ["POST", `/v1/sandboxes/${id}/timeout`, { json: { timeoutMs: 5000 } }],
      ["POST", `/v1/sandboxes/${id}/pause`],
      ["POST", `/v1/sandboxes/${id}/resume`],
      ["POST", `/v1/sandboxes/${id}/fork`, { json: { count: 1 } }],
      ["GET", `/v1/sandboxes/${id}/events`],
      ["POST", `/v1/sandboxes/${id}/commands`, { json: { cmd: "touch /tmp/pwned" } }],
      ["GET", `/v1/sandboxes/${id}/commands`],
      ["POST", `/v1/sandboxes/${id}/commands/1/signal`, { json: { signal: "SIGKILL" } }],
      ["POST", `/v1/sandboxes/${id}/commands/1/stdin`, { json: { data: "", eof: true } }],
      ["GET", `/v1/sandboxes/${id}/files?path=/etc/hostname`],
      ["PUT", `/v1/sandboxes/${id}/files?path=/tmp/pwned`, { body: "x" }],
      ["DELETE", `/v1/sandboxes/${id}/files?path=/etc/hostname`],
      ["GET", `/v1/sandboxes/${id}/files/list?path=/`],
      ["GET", `/v1/sandboxes/${id}/files/stat?path=/`],
      ["POST", `/v1/sandboxes/${id}/files/move`, { json: { from: "/etc/hostname", to: "/tmp/h" } }],
      ["POST", `/v1/sandboxes/${id}/files/mkdir`, { json: { path: "/tmp/pwned-dir" } }],
    ];
    for (const [m, p, opts] of calls) {
      const r = await b.api.call(m, p, opts);
      assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
      assert.equal(r.json.error.code, "NOT_FOUND");
    }
    const still = await a.api.get(`/v1/sandboxes/${id}`);
    assert.equal(still.json.state, "running");
    const check = await a.api.post(`/v1/sandboxes/${id}/commands`, {
      cmd: "ls /tmp/pwned /tmp/pwned-dir 2>&1; cat /etc/hostname",
    });
    assert.equal(check.status, 200, check.text);
    const out = commandOutput(check.json).stdout;
    assert.match(out, /No such file/);
    assert.doesNotMatch(out, /^\/tmp\/pwned$/m);
    await a.api.delete(`/v1/sandboxes/${id}`);
  });

  test("a sandbox with a 3 s timeout is gone within 2 s after its deadline, billed for its lifetime", async () => {
    const t = await tenant(admin);
    const sb = await create(t.api, { timeoutMs: 3000 });
    ours.push(sb.id);
    const deadline = Date.parse(sb.timeoutAt);
    const ended = await waitFor(
      "the reaper to kill the sandbox",
      async () => {
        const s = (await t.api.get(`/v1/sandboxes/${sb.id}`)).json;
        return s.state === "killed" ? s : undefined;
      },
      20_000,
    );
    assert.equal(ended.endReason, "timeout");
    assert.equal(ended.endedBy, "reaper");
    const endedAt = Date.parse(ended.endedAt);
    assert.ok(endedAt >= deadline, "not before the deadline");
    assert.ok(endedAt - deadline <= 2000, `ended ${endedAt - deadline} ms after the deadline`);
    await assertNoLeftovers(await nodeIds(srv, [sb.id]));
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records;
    assert.equal(recs.length, 1);
    const u = recs[0];
    assert.equal(u.final, true);
    assert.equal(u.endReason, "timeout");
    assert.equal(u.endedAt, ended.endedAt);
    assert.ok(Math.abs(u.lifetimeSeconds - (endedAt - Date.parse(sb.createdAt)) / 1000) < 0.002);
    assert.ok(u.lifetimeSeconds >= 3);
  });

  test("a sandbox created with the guest's token records its parent; usage rolls up to the root", async () => {
    const t = await tenant(admin);
    const parent = await create(t.api, { metadata: { job: "fanout" } });
    ours.push(parent.id);
    const env = await t.api.post(`/v1/sandboxes/${parent.id}/commands`, {
      argv: ["printenv", "FIREBREAK_SANDBOX_TOKEN", "FIREBREAK_SANDBOX_ID"],
    });
    const [token, idInGuest] = commandOutput(env.json).stdout.trim().split("\n");
    assert.match(token!, /^fbs_[0-9a-f]{64}$/);
    assert.equal(idInGuest, parent.id);
    const child = await create(
      t.api,
      { metadata: { job: "fanout" } },
      { "x-firebreak-sandbox-token": token! },
    );
    ours.push(child.id);
    assert.equal(child.parentId, parent.id);
    assert.equal(child.rootId, parent.id);

    // pause and resume the child on the way: its processes and files survive
    await t.api.post(`/v1/sandboxes/${child.id}/commands`, { cmd: "echo kept > /tmp/state" });
    assert.equal((await t.api.post(`/v1/sandboxes/${child.id}/pause`)).json.state, "paused");
    const resumed = await t.api.post(`/v1/sandboxes/${child.id}/resume`);
    assert.equal(resumed.json.state, "running", resumed.text);
    const kept = await t.api.post(`/v1/sandboxes/${child.id}/commands`, { cmd: "cat /tmp/state" });
    assert.equal(commandOutput(kept.json).stdout, "kept\n");

    await t.api.delete(`/v1/sandboxes/${child.id}`);
    await t.api.delete(`/v1/sandboxes/${parent.id}`);
    const groups = (await t.api.get("/v1/usage?groupBy=root")).json.groups;
    const g = groups.find((x: { key: string }) => x.key === parent.id);
    assert.equal(g.sandboxes, 2);
    assert.ok(g.cpuSeconds > 0);
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${child.id}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].parentId, parent.id);
    assert.equal(recs[0].rootId, parent.id);
  });

  test("background commands: list, stdin, signal", async () => {
    const t = await tenant(admin);
    const sb = await create(t.api, {});
    ours.push(sb.id);
    const bg = await t.api.post(`/v1/sandboxes/${sb.id}/commands`, {
      cmd: "cat > /tmp/in.txt",
      stdin: "",
      background: true,
    });
    assert.equal(bg.status, 201, bg.text);
    const slow = await t.api.post(`/v1/sandboxes/${sb.id}/commands`, {
      argv: ["sleep", "600"],
      background: true,
    });
    const pids = (await t.api.get(`/v1/sandboxes/${sb.id}/commands`)).json.commands.map(
      (c: { pid: number }) => c.pid,
    );
    assert.ok(pids.includes(slow.json.pid));
    assert.equal(
      (await t.api.post(`/v1/sandboxes/${sb.id}/commands/${slow.json.pid}/signal`, { signal: "SIGKILL" }))
        .status,
      204,
    );
    await waitFor("sleep to be gone", async () => {
      const now = (await t.api.get(`/v1/sandboxes/${sb.id}/commands`)).json.commands.map(
        (c: { pid: number }) => c.pid,
      );
      return !now.includes(slow.json.pid);
    });
    await t.api.delete(`/v1/sandboxes/${sb.id}`);
  });
});
