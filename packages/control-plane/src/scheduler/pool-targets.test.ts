import assert from "node:assert/strict";
import { test } from "node:test";
import type { NodeReport } from "@firebreak/node-agent";
import {
  DEFAULT_POOL_DEMAND,
  demandTargets,
  type PoolNode,
  peakBurst,
  planKey,
  planPools,
  type RecentCreate,
} from "./pool-targets.ts";

const NOW = 1_000_000_000;
const K = planKey("base", "1x256");

function report(id: string, over: Partial<NodeReport> = {}, warm: Record<string, number> = {}): NodeReport {
  return {
    nodeId: id,
    accelerator: "tcg",
    acceleratorReason: "",
    vcpus: 2,
    memoryMib: 8192,
    committedVcpus: 0,
    committedMemoryMib: 0,
    freeMemoryMib: 8192,
    sandboxes: 0,
    draining: false,
    version: "test",
    templates: [
      {
        name: "base",
        key: "k",
        image: true,
        snapshot: true,
        snapshotShapes: ["1x256"],
        warm,
        recentP50Ms: {},
      },
    ],
    ...over,
  };
}

const node = (id: string, over: Partial<NodeReport> = {}, usable = true, warm = {}): PoolNode => ({
  id,
  report: report(id, over, warm),
  usable,
});

const creates = (template: string, times: number[], shape = "1x256"): RecentCreate[] =>
  times.map((atMs) => ({ template, shape, atMs }));

test("peakBurst: the most creates within any burst span", () => {
  assert.equal(peakBurst([], 10_000), 0);
  assert.equal(peakBurst([5], 10_000), 1);
  // Three within 10 s, then two more far apart.
  assert.equal(peakBurst([0, 1000, 9999, 50_000, 90_000], 10_000), 3);
  // A span is half-open: 0 and 10 000 are not in the same 10 s.
  assert.equal(peakBurst([10_000, 0], 10_000), 1);
  assert.equal(peakBurst([3, 1, 2, 2], 10), 4, "order does not matter");
});

test("demandTargets: the largest recent burst per template and shape; old and future creates do not count", () => {
  const t = demandTargets(
    [
      ...creates("base", [NOW - 1000, NOW - 2000, NOW - 3000, NOW - 200_000]),
      ...creates("base", [NOW - 1000], "2x512"),
      ...creates("py", [NOW - DEFAULT_POOL_DEMAND.windowMs - 1, NOW + 5000]),
    ],
    NOW,
  );
  assert.deepEqual(
    [...t].sort(),
    [
      [K, 3],
      [planKey("base", "2x512"), 1],
    ].sort(),
  );
});

test("demandTargets: capped at maxPerTemplate", () => {
  const many = creates(
    "base",
    Array.from({ length: 100 }, (_, i) => NOW - i),
  );
  assert.equal(demandTargets(many, NOW, { ...DEFAULT_POOL_DEMAND, maxPerTemplate: 7 }).get(K), 7);
});

test("planPools: a target is spread over the nodes with the snapshot, most room first", () => {
  const plan = planPools(new Map([[K, 5]]), [
    node("a", { committedMemoryMib: 768, committedVcpus: 3 }),
    node("b"),
    node("c", { templates: [] }), // no snapshot here
  ]);
  // b starts with 768 MiB more room: it takes three VMs, then the two alternate (ties: fewer pool VMs).
  assert.equal(plan.get("a")!.get(K), 1);
  assert.equal(plan.get("b")!.get(K), 4);
  assert.equal(plan.get("c")!.get(K), undefined, "a node without the template gets no entry for it");
  const total = [...plan.values()].reduce((n, m) => n + (m.get(K) ?? 0), 0);
  assert.equal(total, 5);
});

test("planPools: draining or lost nodes get nothing; a node's room and maxPerNode bound it", () => {
  const plan = planPools(
    new Map([[K, 10]]),
    [
      node("gone", {}, false),
      // Room: 2048 x 1 - 512 reserved - 768 committed = 768 MiB: three 256 MiB VMs.
      node("small", { memoryMib: 2048, committedMemoryMib: 768, committedVcpus: 1 }),
      node("big", { memoryMib: 65_536 }),
    ],
    { ...DEFAULT_POOL_DEMAND, maxPerNode: 4 },
  );
  assert.equal(plan.has("gone"), false);
  assert.equal(plan.get("small")!.get(K), 3);
  assert.equal(plan.get("big")!.get(K), 4);
});

test("planPools: the node's own pool VMs are given back before its room is counted", () => {
  // 6 of its 8 GiB are committed, all of it its own pool of 24 x 256 MiB: that room is the plan's to give.
  const n = node("a", { committedMemoryMib: 6144, committedVcpus: 24 }, true, { "1x256": 24 });
  const plan = planPools(new Map([[K, 8]]), [n], { ...DEFAULT_POOL_DEMAND, maxPerNode: 100 });
  assert.equal(plan.get("a")!.get(K), 8);
});

test("planPools: no demand: every usable node's pools go to 0 (refills stop)", () => {
  const plan = planPools(new Map(), [node("a", {}, true, { "1x256": 3 }), node("b")]);
  assert.equal(plan.get("a")!.get(K), 0);
  assert.equal(plan.get("b")!.get(K), 0);
});

test("planPools: larger targets are placed first when room is short", () => {
  const py = planKey("py", "1x256");
  const templates = [
    {
      name: "base",
      key: "k",
      image: true,
      snapshot: true,
      snapshotShapes: ["1x256"],
      warm: {},
      recentP50Ms: {},
    },
    {
      name: "py",
      key: "p",
      image: true,
      snapshot: true,
      snapshotShapes: ["1x256"],
      warm: {},
      recentP50Ms: {},
    },
  ];
  // Room for 4 VMs in all.
  const plan = planPools(
    new Map([
      [K, 1],
      [py, 6],
    ]),
    [node("a", { memoryMib: 1536, templates })],
  );
  assert.equal(plan.get("a")!.get(py), 4);
  assert.equal(plan.get("a")!.get(K), 0);
});
