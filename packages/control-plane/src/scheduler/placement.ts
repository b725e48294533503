// Placement by activation cost: for each node, the predicted time until a
// sandbox of this template and shape is usable there, from what the node
// reported (warm slots, snapshots, images, recent latencies by path) and what
// it has free. The create goes to the fastest; ties go to the least loaded
// node, then the one with fewest sandboxes of the same tenant.
import type { NodeReport } from "@firebreak/node-agent";

export type PlacementPath = "warm" | "snapshot" | "cold" | "fetch";

/** Used until a node has measured a path for a template (ms; this host under TCG). */
export const DEFAULT_PATH_MS: Record<PlacementPath, number> = {
  warm: 15,
  snapshot: 400,
  cold: 5_000,
  // The image must first be copied to the node, then booted cold.
  fetch: 30_000,
};

/** Predictions within this ratio of the best count as a tie (then load decides). */
const TIE_RATIO = 1.25;

export interface NodeView {
  id: string;
  report: NodeReport;
  /** Holds its lease and answered its last report. */
  healthy: boolean;
  /** Live sandboxes per tenant on this node (for spreading). */
  tenantSandboxes?: Record<string, number>;
}

export interface PlacementRequest {
  template: string;
  vcpus: number;
  memoryMib: number;
  tenant: string;
}

export interface Candidate {
  nodeId: string;
  path: PlacementPath;
  predictedMs: number;
  /** Committed vCPUs over the node's vCPUs after this sandbox (load). */
  load: number;
  reason: string;
}

export interface Placement {
  /** Best first; the rest are fallbacks if the first fails to start. */
  candidates: Candidate[];
  /** Nodes left out, and why. */
  excluded: { nodeId: string; reason: string }[];
}

export interface CapacityPolicy {
  /** Committed vCPUs may reach vcpus x this. @default 4 */
  vcpuOvercommit: number;
  /** Committed guest memory may reach memory x this. @default 1 */
  memoryOvercommit: number;
  /** Host memory the node keeps for itself (MiB). @default 512 */
  reservedMemoryMib: number;
}

export const DEFAULT_CAPACITY: CapacityPolicy = {
  vcpuOvercommit: 4,
  memoryOvercommit: 1,
  reservedMemoryMib: 512,
};

function pathOn(
  report: NodeReport,
  req: PlacementRequest,
): { path: PlacementPath; detail: string; measuredMs?: number } {
  const shape = `${req.vcpus}x${req.memoryMib}`;
  const t = report.templates.find((x) => x.name === req.template);
  const measured = (p: PlacementPath) => t?.recentP50Ms[p];
  if (t && (t.warm[shape] ?? 0) > 0) {
    return { path: "warm", detail: `${t.warm[shape]} warm VM(s) ready`, measuredMs: measured("warm") };
  }
  if (t?.snapshotShapes.includes(shape)) {
    return { path: "snapshot", detail: `snapshot for ${shape}`, measuredMs: measured("snapshot") };
  }
  if (t?.image)
    return {
      path: "cold",
      detail: "image present, no snapshot for this shape",
      measuredMs: measured("cold"),
    };
  return { path: "fetch", detail: "template not on this node" };
}

/** Ranks the nodes for one create. Pure: no I/O. */
export function place(
  nodes: NodeView[],
  req: PlacementRequest,
  capacity: CapacityPolicy = DEFAULT_CAPACITY,
): Placement {
  const candidates: Candidate[] = [];
  const excluded: Placement["excluded"] = [];
  for (const n of nodes) {
    const r = n.report;
    if (!n.healthy) {
      excluded.push({ nodeId: n.id, reason: "lost (missed its lease)" });
      continue;
    }
    if (r.draining) {
      excluded.push({ nodeId: n.id, reason: "draining" });
      continue;
    }
    const p = pathOn(r, req);
    // A warm claim takes a pool VM the node already counts as committed: it
    // commits nothing more, so a node whose pool fills its capacity still
    // serves its warm VMs.
    const addVcpus = p.path === "warm" ? 0 : req.vcpus;
    const addMemoryMib = p.path === "warm" ? 0 : req.memoryMib;
    const vcpuCap = r.vcpus * capacity.vcpuOvercommit;
    const memCap = Math.max(0, r.memoryMib - capacity.reservedMemoryMib) * capacity.memoryOvercommit;
    if (r.committedVcpus + addVcpus > vcpuCap) {
      excluded.push({ nodeId: n.id, reason: `full: ${r.committedVcpus} vCPUs committed of ${vcpuCap}` });
      continue;
    }
    if (r.committedMemoryMib + addMemoryMib > memCap) {
      excluded.push({
        nodeId: n.id,
        reason: `full: ${r.committedMemoryMib} MiB committed of ${memCap}`,
      });
      continue;
    }
    const load = (r.committedVcpus + addVcpus) / Math.max(1, r.vcpus);
    const predictedMs = Math.round(p.measuredMs ?? DEFAULT_PATH_MS[p.path]);
    candidates.push({
      nodeId: n.id,
      path: p.path,
      predictedMs,
      load,
      reason: `${p.path}: ${p.detail}; predicted ${predictedMs} ms${p.measuredMs !== undefined ? " (measured p50)" : " (default)"}`,
    });
  }
  const tenantCount = (id: string) => nodes.find((n) => n.id === id)?.tenantSandboxes?.[req.tenant] ?? 0;
  const rank: Record<PlacementPath, number> = { warm: 0, snapshot: 1, cold: 2, fetch: 3 };
  candidates.sort((a, b) => a.predictedMs - b.predictedMs || rank[a.path] - rank[b.path]);
  // The nodes about as fast as the fastest are a tie: the least loaded wins,
  // then the one holding fewest of this tenant's sandboxes.
  const best = candidates[0]?.predictedMs ?? 0;
  const ties = candidates.filter((c) => c.predictedMs <= best * TIE_RATIO);
  ties.sort(
    (a, b) =>
      rank[a.path] - rank[b.path] ||
      a.load - b.load ||
      tenantCount(a.nodeId) - tenantCount(b.nodeId) ||
      a.predictedMs - b.predictedMs ||
      a.nodeId.localeCompare(b.nodeId),
  );
  candidates.splice(0, ties.length, ...ties);
  return { candidates, excluded };
}

/** Random placement among nodes with room (the benchmark's baseline). */
export function placeRandomly(
  nodes: NodeView[],
  req: PlacementRequest,
  random: () => number = Math.random,
  capacity: CapacityPolicy = DEFAULT_CAPACITY,
): Placement {
  const ranked = place(nodes, req, capacity);
  const shuffled = [...ranked.candidates];
  for (let i = shuffled.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  return { candidates: shuffled, excluded: ranked.excluded };
}
