import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import pino from "pino";
import { DEFAULT_LIMITS } from "../config.ts";
import { StaticNodes } from "../node/directory.ts";
import { SqliteStore } from "../store/sqlite-store.ts";
import { sandboxRec } from "../store/store.contract.ts";
import { FakeNode } from "../testing/fake-node.ts";
import { DEFAULT_CAPACITY } from "./placement.ts";
import { PoolAutoscaler } from "./pool-autoscaler.ts";

/** A fake node that records the pool targets it is sent. */
class RecordingNode extends FakeNode {
  readonly calls: [string, number, string][] = [];
  override async setPool(template: string, size: number, shape = { vcpus: 1, memoryMib: 256 }) {
    this.calls.push([template, size, `${shape.vcpus}x${shape.memoryMib}`]);
    return super.setPool(template, size, shape);
  }
}

async function fixture(t: import("node:test").TestContext) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-pools-"));
  const store = new SqliteStore(path.join(dir, "cp.db"));
  t.after(() => {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const limits = { ...DEFAULT_LIMITS, maxSandboxes: 1000 };
  for (const id of ["t1", "t2"])
    await store.createTenant({ id, name: id, limits, createdAt: new Date(0).toISOString() });
  const a = new RecordingNode("a");
  const b = new RecordingNode("b");
  b.hostCapacity = { vcpus: 16, memoryMib: 4096 };
  const nodes = new StaticNodes([a, b]);
  await nodes.poll();
  const scaler = new PoolAutoscaler({
    store,
    nodes,
    log: pino({ level: "silent" }),
    capacity: DEFAULT_CAPACITY,
  });
  let n = 0;
  const created = async (tenantId: string, atMs: number, over: Parameters<typeof sandboxRec>[1] = {}) =>
    store.insertSandboxWithinQuota(
      sandboxRec(`s${++n}`, {
        tenantId,
        createdAt: new Date(atMs).toISOString(),
        state: "killed",
        memoryMib: 256,
        ...over,
      }),
      limits,
    );
  return { store, a, b, nodes, scaler, created };
}

test("recent creates of every tenant in the window count; older ones and forks do not", async (t) => {
  const { scaler, created } = await fixture(t);
  const now = Date.now();
  await created("t1", now - 400_000); // outside the 5-minute window
  await created("t1", now - 2000);
  await created("t2", now - 1000, { vcpus: 2, memoryMib: 512 });
  await created("t2", now - 500, { parentId: "s2" }); // a fork
  const got = await scaler.recentCreates(now);
  assert.deepEqual(got.map((c) => [c.template, c.shape]).sort(), [
    ["base", "1x256"],
    ["base", "2x512"],
  ]);
});

test("a burst of creates sets pool targets across the nodes; no demand later sets them to 0 once", async (t) => {
  const { scaler, created, a, b, nodes } = await fixture(t);
  const now = Date.now();
  for (let i = 0; i < 5; i++) await created(i % 2 ? "t1" : "t2", now - 3000 + i * 100);
  const plan = await scaler.tick(now);
  const total = (plan.get("a")?.get("base\x001x256") ?? 0) + (plan.get("b")?.get("base\x001x256") ?? 0);
  assert.equal(total, 5, "the pool holds the burst");
  // The node with more room (a: 64 GiB against 4 GiB) holds more of it.
  assert.ok((plan.get("a")!.get("base\x001x256") ?? 0) > (plan.get("b")!.get("base\x001x256") ?? 0));
  await new Promise((r) => setImmediate(r));
  const sent = (n: RecordingNode) => n.calls.reduce((s, c) => s + c[1], 0);
  assert.equal(sent(a) + sent(b), 5);
  await nodes.poll();
  assert.equal(
    (await a.report()).templates[0]!.warm["1x256"]! + (await b.report()).templates[0]!.warm["1x256"]!,
    5,
    "the fake nodes filled their pools",
  );

  // Unchanged demand: nothing is sent again.
  const before = a.calls.length + b.calls.length;
  await scaler.tick(now + 1000);
  assert.equal(a.calls.length + b.calls.length, before);

  // Ten minutes on, no creates in the window: every target goes to 0, once.
  await nodes.poll();
  await scaler.tick(now + 600_000);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(a.calls.at(-1), ["base", 0, "1x256"]);
  assert.deepEqual(b.calls.at(-1), ["base", 0, "1x256"]);
  const after = a.calls.length + b.calls.length;
  await scaler.tick(now + 601_000);
  assert.equal(a.calls.length + b.calls.length, after);
});

test("a draining node gets no pool; a target that failed to apply is sent again", async (t) => {
  const { scaler, created, a, b, nodes } = await fixture(t);
  const now = Date.now();
  for (let i = 0; i < 3; i++) await created("t1", now - 1000 + i);
  await b.drain(true);
  await nodes.poll();
  a.down = true; // a stops answering after its report: its setPool fails
  const plan = await scaler.tick(now);
  assert.equal(plan.has("b"), false, "a draining node is left out");
  assert.equal(plan.get("a")!.get("base\x001x256"), 3);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(a.calls.length, 1);
  a.down = false;
  assert.equal((await a.report()).templates[0]!.warm["1x256"] ?? 0, 0, "not applied");
  await scaler.tick(now + 10);
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(a.calls.at(-1), ["base", 3, "1x256"], "told again on the next pass");
  assert.equal((await a.report()).templates[0]!.warm["1x256"], 3);
  assert.equal(b.calls.length, 0);
});
