// Warm pool targets that follow demand: for each template, how many pool VMs
// the fleet should hold, from its recent creates, and on which nodes, bounded
// by what each node can still commit. Pure: the lease holder's pass
// (pool-autoscaler.ts) feeds it the creates and node reports and applies the
// result with setPool.
//
// The target of a template is the most creates of it seen in any burst window
// (default 10 s) within the demand window (default 5 min): a pool that holds
// the largest recent burst serves it warm while the node refills behind it
// (a refill is a snapshot restore, well under a burst window). No creates in
// the window: target 0 (the pool stops refilling). The target is split over
// the nodes that can restore the template (snapshot for its shape, active,
// not draining), one VM at a time to the node with the most room left, so a
// lost node takes only its share of the pool with it.
import type { NodeReport } from "@firebreak/node-agent";
import { type CapacityPolicy, DEFAULT_CAPACITY } from "./placement.ts";

export interface PoolDemandOptions {
  /** How far back creates count. @default 300_000 */
  windowMs: number;
  /** The burst the pool must hold: the most creates within this long. @default 10_000 */
  burstMs: number;
  /** At most this many pool VMs of one template across the fleet. @default 32 */
  maxPerTemplate: number;
  /** At most this many pool VMs on one node (all templates). @default 16 */
  maxPerNode: number;
}

export const DEFAULT_POOL_DEMAND: PoolDemandOptions = {
  windowMs: 300_000,
  burstMs: 10_000,
  maxPerTemplate: 32,
  maxPerNode: 16,
};

export interface RecentCreate {
  template: string;
  /** The shape key "<vcpus>x<memoryMib>". */
  shape: string;
  atMs: number;
}

export interface PoolNode {
  id: string;
  report: NodeReport;
  /** Active (holds its lease) and not draining. */
  usable: boolean;
}

/** node id -> "<template>\0<shape>" -> pool size. */
export type PoolPlan = Map<string, Map<string, number>>;

export const planKey = (template: string, shape: string) => `${template}\0${shape}`;

/** The most creates within any `burstMs` span (a sliding window over the sorted times). */
export function peakBurst(timesMs: number[], burstMs: number): number {
  const t = [...timesMs].sort((a, b) => a - b);
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < t.length; hi++) {
    while (t[hi]! - t[lo]! >= burstMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}

/** Fleet-wide target per template and shape, from the creates in the window. */
export function demandTargets(
  creates: RecentCreate[],
  nowMs: number,
  opts: PoolDemandOptions = DEFAULT_POOL_DEMAND,
): Map<string, number> {
  const byKey = new Map<string, number[]>();
  for (const c of creates) {
    if (c.atMs <= nowMs - opts.windowMs || c.atMs > nowMs) continue;
    const k = planKey(c.template, c.shape);
    byKey.set(k, [...(byKey.get(k) ?? []), c.atMs]);
  }
  const out = new Map<string, number>();
  for (const [k, times] of byKey) out.set(k, Math.min(opts.maxPerTemplate, peakBurst(times, opts.burstMs)));
  return out;
}

/**
 * Memory (MiB) and vCPUs a node can still give to pool VMs: its capacity
 * under the overcommit policy, less what it has committed that is not its
 * own pool (pool VMs count as committed in a report; they are what this
 * plan decides, so they are given back first).
 */
function room(node: NodeReport, cap: CapacityPolicy): { memoryMib: number; vcpus: number } {
  let poolMemory = 0;
  let poolVcpus = 0;
  for (const t of node.templates) {
    for (const [shape, n] of Object.entries(t.warm)) {
      const [v, m] = shape.split("x").map(Number) as [number, number];
      poolMemory += n * m;
      poolVcpus += n * v;
    }
  }
  return {
    memoryMib:
      node.memoryMib * cap.memoryOvercommit - cap.reservedMemoryMib - (node.committedMemoryMib - poolMemory),
    vcpus: node.vcpus * cap.vcpuOvercommit - (node.committedVcpus - poolVcpus),
  };
}

/**
 * Splits each template's target over the nodes that can restore it, one VM
 * at a time to the node with the most memory left (ties: fewest pool VMs,
 * then id), never past a node's room or maxPerNode. Templates with the
 * largest targets are placed first. Every usable node that reports a
 * template gets an entry (0 when it gets none), so a target that fell is
 * applied too.
 */
export function planPools(
  targets: Map<string, number>,
  nodes: PoolNode[],
  opts: PoolDemandOptions = DEFAULT_POOL_DEMAND,
  cap: CapacityPolicy = DEFAULT_CAPACITY,
): PoolPlan {
  const plan: PoolPlan = new Map();
  const left = new Map<string, { memoryMib: number; vcpus: number; vms: number }>();
  for (const n of nodes) {
    if (!n.usable) continue;
    plan.set(n.id, new Map());
    left.set(n.id, { ...room(n.report, cap), vms: 0 });
    for (const t of n.report.templates) {
      for (const shape of new Set([...t.snapshotShapes, ...Object.keys(t.warm)]))
        plan.get(n.id)!.set(planKey(t.name, shape), 0);
    }
  }
  const ordered = [...targets].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  for (const [k, target] of ordered) {
    const [template, shape] = k.split("\0") as [string, string];
    const [vcpus, memoryMib] = shape.split("x").map(Number) as [number, number];
    const able = nodes.filter(
      (n) =>
        n.usable && n.report.templates.some((t) => t.name === template && t.snapshotShapes.includes(shape)),
    );
    for (let i = 0; i < target; i++) {
      const fits = able.filter((n) => {
        const l = left.get(n.id)!;
        return l.memoryMib >= memoryMib && l.vcpus >= vcpus && l.vms < opts.maxPerNode;
      });
      if (!fits.length) break;
      fits.sort((a, b) => {
        const la = left.get(a.id)!;
        const lb = left.get(b.id)!;
        return lb.memoryMib - la.memoryMib || la.vms - lb.vms || (a.id < b.id ? -1 : 1);
      });
      const n = fits[0]!;
      const l = left.get(n.id)!;
      l.memoryMib -= memoryMib;
      l.vcpus -= vcpus;
      l.vms++;
      const m = plan.get(n.id)!;
      m.set(k, (m.get(k) ?? 0) + 1);
    }
  }
  return plan;
}
