// The platform's overhead account: collected from the nodes exactly once
// (whichever replica collects), grouped per node and template, and kept out
// of the tenant's bill: a sandbox taken warm and killed at once is charged
// (nearly) nothing while the pool's work shows as overhead.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { StaticNodes } from "../node/directory.ts";
import { SqliteStore } from "../store/sqlite-store.ts";
import type { OverheadUsageRecord } from "../store/store.ts";
import { FakeNode } from "../testing/fake-node.ts";
import { inProcess } from "../testing/in-process.ts";
import { groupOverhead, OverheadCollector, startOf } from "./overhead.ts";

const log = pino({ level: "silent" });

describe("overhead collector", () => {
  let dir: string;
  let store: SqliteStore;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-overhead-"));
    store = new SqliteStore(path.join(dir, "cp.db"));
  });
  after(() => {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("two replicas collecting from the same nodes store every record once; the node drops what was stored", async () => {
    const n1 = new FakeNode("n1");
    const n2 = new FakeNode("n2");
    const nodes = new StaticNodes([n1, n2]);
    const a = new OverheadCollector(store, nodes, log);
    const b = new OverheadCollector(store, nodes, log);
    const add = (n: FakeNode, kind: "warm_pool" | "snapshot_prepare", template: string, cpuSeconds: number) =>
      n.overheadLedger.add({ kind, template, cpuSeconds, wallSeconds: 2, memoryMib: 256 });
    add(n1, "warm_pool", "base", 1.5);
    add(n1, "snapshot_prepare", "base", 4);
    add(n2, "warm_pool", "py", 0.25);
    assert.equal(await a.collect(), 3);
    // B gets the same records (A's ack has not reached the nodes yet): stored once.
    assert.equal(await b.collect(), 0);
    add(n1, "warm_pool", "base", 0.5);
    assert.equal(await a.collect(), 1);
    // A's acks reached the nodes: nothing waits there but what is new.
    assert.equal(n1.overheadLedger.pending, 0);
    assert.equal(n2.overheadLedger.pending, 0);
    const rows = await store.listOverhead({ limit: 100 });
    assert.equal(rows.length, 4);
    const report = groupOverhead(rows);
    assert.deepEqual(
      report.groups.map((g) => [g.nodeId, g.template, g.records, g.cpuSeconds, g.cpuSecondsByKind]),
      [
        ["n1", "base", 3, 6, { warm_pool: 2, snapshot_prepare: 4 }],
        ["n2", "py", 1, 0.25, { warm_pool: 0.25 }],
      ],
    );
    assert.equal(report.total.cpuSeconds, 6.25);
    assert.equal(report.total.wallSeconds, 8);
  });

  test("a node that does not answer keeps its records for the next pass; the others are collected", async () => {
    const up = new FakeNode("up");
    const down = new FakeNode("down");
    up.overheadLedger.add({ kind: "boot", template: "base", cpuSeconds: 1, wallSeconds: 1, memoryMib: 256 });
    down.overheadLedger.add({
      kind: "boot",
      template: "base",
      cpuSeconds: 2,
      wallSeconds: 1,
      memoryMib: 256,
    });
    down.down = true;
    const c = new OverheadCollector(store, new StaticNodes([up, down]), log);
    assert.equal(await c.collect(), 1);
    down.down = false;
    assert.equal(await c.collect(), 1);
  });

  test("a record says what the CPU was spent on and from when", () => {
    const r: OverheadUsageRecord = {
      id: "n:e:1",
      nodeId: "n",
      kind: "restore",
      template: "base",
      at: "2026-01-01T00:00:10.000Z",
      cpuSeconds: 1,
      wallSeconds: 2.5,
      memoryMib: 256,
      nodeSandboxId: "x",
      sandboxId: "sb",
    };
    assert.equal(startOf(r), "2026-01-01T00:00:07.500Z");
  });
});

describe("honest metering through the API", () => {
  let env: Awaited<ReturnType<typeof inProcess>>;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("a sandbox taken warm and killed at once is charged nearly nothing; the pool's 3 CPU-seconds are the platform's", async () => {
    const admin = await env.tenant({}, ["admin"]);
    const t = await env.tenant();
    env.node.warm.set("base", { "1x256": 1 });
    env.node.startCpuNanos = 3e9;
    await env.nodes.poll();
    const created = await t.api.post("/v1/sandboxes", { template: "base" });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    assert.equal(created.json.startPath, "warm");
    const killed = await t.api.delete(`/v1/sandboxes/${created.json.id}`);
    assert.equal(killed.status, 204);
    const rec = (await t.api.get(`/v1/usage/records?sandboxId=${created.json.id}`)).json.records[0];
    assert.equal(rec.final, true);
    assert.equal(rec.account, "tenant");
    // The fake burns 10% of a CPU after hand-over: a few ms at most, never the pool's 3 s.
    assert.ok(rec.cpuSeconds < 0.05, `charged ${rec.cpuSeconds} CPU-seconds`);
    // The pool's 3 s, plus the fake's 10% of a CPU between its start and the hand-over (a ms or so).
    assert.ok(rec.overheadCpuSeconds >= 3 && rec.overheadCpuSeconds < 3.01, `${rec.overheadCpuSeconds}`);
    assert.ok(rec.chargedFrom && rec.chargedFrom >= rec.createdAt && rec.chargedFrom <= rec.endedAt);

    // Before collection the account is empty; after it, the pool's work is there.
    assert.equal((await admin.api.get("/v1/usage/overhead")).json.total.records, 0);
    await env.sandboxes.overhead.collect();
    const report = await admin.api.get("/v1/usage/overhead");
    assert.equal(report.status, 200);
    assert.deepEqual(report.json.groups, [
      {
        nodeId: env.node.id,
        template: "base",
        records: 1,
        cpuSeconds: 3,
        wallSeconds: 1,
        cpuSecondsByKind: { warm_pool: 3 },
        from: report.json.groups[0].from,
        to: report.json.groups[0].to,
      },
    ]);
    const records = (await admin.api.get("/v1/usage/overhead/records")).json.records;
    assert.equal(records.length, 1);
    assert.equal(records[0].account, "platform");
    assert.equal(records[0].kind, "warm_pool");
    assert.equal(records[0].sandboxId, created.json.id);
    assert.ok(records[0].from < records[0].at);
    // The overhead account is the operator's.
    assert.equal((await t.api.get("/v1/usage/overhead")).status, 403);
    assert.equal((await t.api.get("/v1/usage/overhead/records")).status, 403);
    env.node.startCpuNanos = 0;
  });
});
