import assert from "node:assert/strict";
import { test } from "node:test";
import type { NodeReport } from "@firebreak/node-agent";
import { type NodeView, place, placeRandomly } from "./placement.ts";

function node(
  id: string,
  t: Partial<NodeReport["templates"][number]> | undefined,
  over: Partial<NodeReport> = {},
): NodeView {
  const report: NodeReport = {
    nodeId: id,
    accelerator: "tcg",
    acceleratorReason: "",
    vcpus: 2,
    memoryMib: 24_000,
    committedVcpus: 0,
    committedMemoryMib: 0,
    freeMemoryMib: 20_000,
    sandboxes: 0,
    draining: false,
    version: "x",
    templates: t
      ? [
          {
            name: "base",
            key: "k",
            image: true,
            snapshot: false,
            snapshotShapes: [],
            warm: {},
            recentP50Ms: {},
            ...t,
          },
        ]
      : [],
    ...over,
  };
  return { id, report, healthy: true };
}

const req = { template: "base", vcpus: 1, memoryMib: 256, tenant: "t1" };

test("warm beats snapshot beats cold beats a node without the template", () => {
  const nodes = [
    node("cold", {}),
    node("none", undefined),
    node("snap", { snapshotShapes: ["1x256"] }),
    node("warm", { snapshotShapes: ["1x256"], warm: { "1x256": 2 } }),
  ];
  const p = place(nodes, req);
  assert.deepEqual(
    p.candidates.map((c) => [c.nodeId, c.path]),
    [
      ["warm", "warm"],
      ["snap", "snapshot"],
      ["cold", "cold"],
      ["none", "fetch"],
    ],
  );
  assert.match(p.candidates[0]!.reason, /^warm: 2 warm VM\(s\) ready; predicted 15 ms \(default\)$/);
});

test("a warm slot of another shape does not count; its snapshot does not either", () => {
  const p = place([node("a", { warm: { "2x1024": 3 }, snapshotShapes: ["2x1024"] })], req);
  assert.equal(p.candidates[0]!.path, "cold");
});

test("measured latencies replace the defaults: a slow snapshot node loses to a fast cold one", () => {
  const p = place(
    [
      node("slowsnap", { snapshotShapes: ["1x256"], recentP50Ms: { snapshot: 9_000 } }),
      node("fastcold", { recentP50Ms: { cold: 2_000 } }),
    ],
    req,
  );
  assert.deepEqual(
    p.candidates.map((c) => c.nodeId),
    ["fastcold", "slowsnap"],
  );
  assert.match(p.candidates[0]!.reason, /measured p50/);
});

test("ties go to the least loaded node, then to the one with fewer of the tenant's sandboxes", () => {
  const busy = node("busy", { snapshotShapes: ["1x256"] }, { committedVcpus: 6 });
  const idle = node("idle", { snapshotShapes: ["1x256"] }, { committedVcpus: 1 });
  assert.equal(place([busy, idle], req).candidates[0]!.nodeId, "idle");
  const a = node("a", { snapshotShapes: ["1x256"] });
  const b = node("b", { snapshotShapes: ["1x256"] });
  a.tenantSandboxes = { t1: 5 };
  b.tenantSandboxes = { t1: 1, t2: 9 };
  assert.equal(place([a, b], req).candidates[0]!.nodeId, "b");
});

test("lost, draining and full nodes are left out, each with its reason", () => {
  const lost = node("lost", { warm: { "1x256": 1 } });
  lost.healthy = false;
  const p = place(
    [
      lost,
      node("draining", { warm: { "1x256": 1 } }, { draining: true }),
      node("cpufull", {}, { committedVcpus: 8 }),
      node("memfull", {}, { memoryMib: 1000, committedMemoryMib: 400 }),
      node("ok", {}),
    ],
    req,
  );
  assert.deepEqual(
    p.candidates.map((c) => c.nodeId),
    ["ok"],
  );
  assert.deepEqual(Object.fromEntries(p.excluded.map((e) => [e.nodeId, e.reason.split(":")[0]])), {
    lost: "lost (missed its lease)",
    draining: "draining",
    cpufull: "full",
    memfull: "full",
  });
});

test("a node whose warm pool fills its capacity still serves its warm VMs (a claim commits nothing more)", () => {
  const full = { committedVcpus: 8, committedMemoryMib: 23_488 }; // exactly the cap (2 x 4 vCPUs; 24000 - 512 MiB)
  const p = place(
    [
      node("warmfull", { warm: { "1x256": 2 } }, full),
      node("snapfull", { snapshot: true, snapshotShapes: ["1x256"] }, full),
    ],
    req,
  );
  assert.deepEqual(
    p.candidates.map((c) => [c.nodeId, c.path]),
    [["warmfull", "warm"]],
  );
  assert.deepEqual(
    p.excluded.map((e) => e.nodeId),
    ["snapfull"],
  );
});

test("random placement keeps the same candidates and exclusions in another order", () => {
  const nodes = [node("a", {}), node("b", { warm: { "1x256": 1 } }), node("c", {})];
  let i = 0;
  const seq = [0.9, 0.1, 0.5];
  const r = placeRandomly(nodes, req, () => seq[i++ % seq.length]!);
  assert.deepEqual(r.candidates.map((c) => c.nodeId).sort(), ["a", "b", "c"]);
});
