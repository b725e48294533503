// Create latency over three nodes, activation-aware placement vs random, side
// by side in one run (as root; real VMs):
//   node bench/placement.ts [--creates 20] [--burst 6] [--pool 8]
// The fleet is the multi-node tests' (test/multinode-harness.ts): a private
// PostgreSQL, three node daemons each in its own network namespace with the
// base template and its snapshot, and two control-plane replicas on the same
// database and nodes: one places by activation cost (the default), the other
// with FIREBREAK_PLACEMENT=random. The first node keeps a warm pool of
// `--pool` VMs of base (refilled after each claim); the other two have none.
// For each placement, before each phase the pool is full again:
//   sequential: `--creates` creates one after another, each deleted at once;
//   burst: `--burst` creates at once, deleted after.
// A create's latency is the API call (POST /v1/sandboxes to its 201: the
// sandbox is usable), measured by this client.
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { ApiClient } from "../packages/control-plane/src/testing/api-client.ts";
import { type Fleet, startFleet } from "../packages/control-plane/test/multinode-harness.ts";

const { values } = parseArgs({
  options: {
    creates: { type: "string", default: "20" },
    burst: { type: "string", default: "6" },
    pool: { type: "string", default: "8" },
  },
});
const CREATES = Number(values.creates);
const BURST = Number(values.burst);
const POOL = Number(values.pool);

interface Sample {
  ms: number;
  path: string;
  node: string;
}

function quantile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)]!;
}

async function poolFull(fleet: Fleet, nodeId: string, size: number): Promise<void> {
  const admin = fleet.replicas[0]!.api;
  const r = await admin.post(`/v1/nodes/${nodeId}/pools`, { template: "base", size });
  if (r.status !== 204) throw new Error(`setting the pool failed: ${r.status} ${r.text}`);
  const end = Date.now() + 600_000;
  for (;;) {
    const nodes = (await admin.get("/v1/nodes")).json.nodes as {
      id: string;
      templates?: { name: string; warm: Record<string, number> }[];
    }[];
    const warm = nodes.find((n) => n.id === nodeId)?.templates?.find((t) => t.name === "base")?.warm["1x256"];
    if ((warm ?? 0) >= size) return;
    if (Date.now() > end) throw new Error(`the pool on ${nodeId} did not fill (${warm} of ${size})`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** One create; a failed one (this host is shared and slow: a guest may miss its init deadline) is counted, not fatal. */
async function createOne(api: ApiClient): Promise<{ id: string } & Sample> {
  const t0 = performance.now();
  const r = await api.post("/v1/sandboxes", {});
  const ms = performance.now() - t0;
  if (r.status !== 201) {
    process.stderr.write(`create failed: ${r.status} ${r.text}\n`);
    return { id: "", ms, path: "failed", node: "?" };
  }
  const ev = await api.get(`/v1/sandboxes/${r.json.id}/events`);
  if (ev.status !== 200) throw new Error(`events: ${ev.status} ${ev.text}`);
  const events = ev.json.events as {
    type: string;
    detail: { node?: string };
  }[];
  const node = events.find((e) => e.type === "scheduled")?.detail.node ?? "?";
  return { id: r.json.id, ms, path: r.json.startPath, node };
}

function summary(name: string, all: Sample[], nodeIds: string[]) {
  const xs = all.filter((x) => x.path !== "failed");
  const ms = xs.map((x) => x.ms);
  const share = (p: string) => `${Math.round((100 * xs.filter((x) => x.path === p).length) / xs.length)}%`;
  return {
    name,
    p50: quantile(ms, 0.5),
    p99: quantile(ms, 0.99),
    max: Math.max(...ms),
    warm: share("warm"),
    snapshot: share("snapshot"),
    cold: share("cold"),
    perNode: nodeIds.map((id) => xs.filter((x) => x.node === id).length).join("/"),
    failed: all.length - xs.length,
  };
}

const fleet = await startFleet({
  nodes: 3,
  replicas: 2,
  seeded: 3,
  replicaEnv: [{ FIREBREAK_PLACEMENT: "cost" }, { FIREBREAK_PLACEMENT: "random" }],
});
const rows: ReturnType<typeof summary>[] = [];
try {
  const admin = fleet.replicas[0]!.api;
  const t = await admin.post("/v1/tenants", {
    name: `bench-${randomBytes(4).toString("hex")}`,
    limits: { maxSandboxes: 100 },
  });
  const k = await admin.post("/v1/keys", { name: "bench", tenantId: t.json.id, scopes: ["sandboxes"] });
  if (k.status !== 201) throw new Error(`key: ${k.text}`);
  const nodeIds = fleet.nodes.map((n) => n.id);
  const warmNode = nodeIds[0]!;
  const modes: [string, ApiClient][] = [
    ["activation-aware", await new ApiClient(fleet.replicas[0]!.url, fetch, k.json.key).init()],
    ["random", await new ApiClient(fleet.replicas[1]!.url, fetch, k.json.key).init()],
  ];
  for (const [mode, api] of modes) {
    await poolFull(fleet, warmNode, POOL);
    const seq: Sample[] = [];
    for (let i = 0; i < CREATES; i++) {
      const s = await createOne(api);
      seq.push(s);
      if (!s.id) continue;
      const d = await api.delete(`/v1/sandboxes/${s.id}`);
      if (d.status !== 204) throw new Error(`delete failed: ${d.status} ${d.text}`);
    }
    rows.push(summary(`${mode}, ${CREATES} sequential`, seq, nodeIds));
    await poolFull(fleet, warmNode, POOL);
    const burst = await Promise.all(Array.from({ length: BURST }, () => createOne(api)));
    for (const s of burst) if (s.id) await api.delete(`/v1/sandboxes/${s.id}`);
    rows.push(summary(`${mode}, burst of ${BURST}`, burst, nodeIds));
  }
  await admin.post(`/v1/nodes/${warmNode}/pools`, { template: "base", size: 0 });
} finally {
  await fleet.close();
}
const f = (n: number) => n.toFixed(0).padStart(8);
console.log(`create latency over 3 nodes (ms, POST to 201; node 1 pool of ${POOL} base VMs, nodes 2-3 none)`);
console.log(
  `${"placement".padEnd(34)}      p50      p99      max   warm  snapshot  cold  failed  creates per node (1/2/3)`,
);
for (const r of rows) {
  console.log(
    `${r.name.padEnd(34)} ${f(r.p50)} ${f(r.p99)} ${f(r.max)} ${r.warm.padStart(6)} ${r.snapshot.padStart(9)} ${r.cold.padStart(5)} ${String(r.failed).padStart(7)}  ${r.perNode}`,
  );
}
