// Cost reports: the ledger (one usage record per sandbox) priced with the
// operator's price sheet (prices.ts), grouped by sandbox, tenant, template,
// root request or a metadata key over a time range, as JSON or CSV; and for
// one root request the whole tree (every descendant: children created with
// its token or through its platform grant, fork children, theirs), each
// sandbox's cost and share of the tree's, and where its seconds went.
//
// Figures are summed unrounded and rounded once (money to millionths), so a
// report's total equals the sum of the ledger rows it covers within rounding.
import { TRAFFIC_CLASSES, type TrafficBytes } from "../node/node-client.ts";
import type { SandboxEvent, SandboxRecord, Store, UsageRecord } from "../store/store.ts";
import { parseMeterState, zeroTraffic } from "./meter.ts";
import {
  addCost,
  type Cost,
  costOf,
  loadPrices,
  type PriceSheet,
  ratesFor,
  roundCost,
  ZERO_COST,
} from "./prices.ts";

export type CostGroupBy = "sandbox" | "tenant" | "template" | "root" | { metadata: string };

export interface CostGroup {
  key: string | null;
  sandboxes: number;
  cpuSeconds: number;
  memoryGibSeconds: number;
  traffic: TrafficBytes;
  cost: Cost;
}

export interface CostReport {
  currency: string;
  groupBy: string;
  from: string | null;
  to: string | null;
  groups: CostGroup[];
  total: Cost;
  sandboxes: number;
}

/** At most this many ledger rows go into one report (narrow the range for more). */
export const MAX_REPORT_ROWS = 100_000;

function keyOf(u: UsageRecord, by: CostGroupBy): string | null {
  if (by === "sandbox") return u.sandboxId;
  if (by === "tenant") return u.tenantId;
  if (by === "template") return u.template;
  if (by === "root") return u.rootId;
  return u.metadata[by.metadata] ?? null;
}

function addTraffic(a: TrafficBytes, b: TrafficBytes): TrafficBytes {
  const out = zeroTraffic();
  for (const c of TRAFFIC_CLASSES) out[c] = { tx: a[c].tx + b[c].tx, rx: a[c].rx + b[c].rx };
  return out;
}

export function groupByLabel(by: CostGroupBy): string {
  return typeof by === "string" ? by : `metadata.${by.metadata}`;
}

/** Prices ledger rows and groups them. */
export function priceRows(
  rows: UsageRecord[],
  prices: PriceSheet,
  by: CostGroupBy,
): Omit<CostReport, "from" | "to"> {
  const groups = new Map<string | null, CostGroup>();
  let total: Cost = ZERO_COST;
  for (const u of rows) {
    const cost = costOf(u, ratesFor(prices, u.tenantId, u.template));
    total = addCost(total, cost);
    const key = keyOf(u, by);
    const g = groups.get(key) ?? {
      key,
      sandboxes: 0,
      cpuSeconds: 0,
      memoryGibSeconds: 0,
      traffic: zeroTraffic(),
      cost: ZERO_COST,
    };
    g.sandboxes++;
    g.cpuSeconds += u.cpuSeconds;
    g.memoryGibSeconds += u.memoryGibSeconds;
    g.traffic = addTraffic(g.traffic, u.traffic);
    g.cost = addCost(g.cost, cost);
    groups.set(key, g);
  }
  const out = [...groups.values()]
    .map((g) => ({
      ...g,
      cpuSeconds: round6(g.cpuSeconds),
      memoryGibSeconds: round6(g.memoryGibSeconds),
      cost: roundCost(g.cost),
    }))
    .sort((a, b) =>
      a.key === b.key ? 0 : a.key === null ? -1 : b.key === null ? 1 : a.key < b.key ? -1 : 1,
    );
  return {
    currency: prices.currency,
    groupBy: groupByLabel(by),
    groups: out,
    total: roundCost(total),
    sandboxes: rows.length,
  };
}

export async function costReport(
  store: Store,
  q: { tenantId: string | null; groupBy: CostGroupBy; from?: string; to?: string },
): Promise<CostReport> {
  const prices = await loadPrices(store);
  const rows = await store.listUsage({
    tenantId: q.tenantId,
    ...(q.from ? { from: q.from } : {}),
    ...(q.to ? { to: q.to } : {}),
    limit: MAX_REPORT_ROWS,
  });
  return { ...priceRows(rows, prices, q.groupBy), from: q.from ?? null, to: q.to ?? null };
}

/** A report as CSV (RFC 4180: quoted when needed, CRLF line ends). */
export function costReportCsv(r: CostReport): string {
  const head = [
    "key",
    "sandboxes",
    "cpu_seconds",
    "memory_gib_seconds",
    ...TRAFFIC_CLASSES.flatMap((c) => [`${c}_tx_bytes`, `${c}_rx_bytes`]),
    "cpu_cost",
    "memory_cost",
    "traffic_cost",
    "total_cost",
    "currency",
  ];
  const lines = [head.join(",")];
  for (const g of r.groups) {
    lines.push(
      [
        g.key ?? "",
        g.sandboxes,
        g.cpuSeconds,
        g.memoryGibSeconds,
        ...TRAFFIC_CLASSES.flatMap((c) => [g.traffic[c].tx, g.traffic[c].rx]),
        g.cost.cpu,
        g.cost.memory,
        g.cost.traffic,
        g.cost.total,
        r.currency,
      ]
        .map(csvField)
        .join(","),
    );
  }
  return `${lines.join("\r\n")}\r\n`;
}

export function csvField(v: string | number): string {
  const s = String(v);
  // A leading =, +, - or @ would be a formula in a spreadsheet: quote with a leading '.
  const safe = /^[=+\-@\t\r]/.test(s) && typeof v === "string" ? `'${s}` : s;
  return /[",\r\n]/.test(safe) || safe !== s ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** Where one sandbox's seconds went (from its events and meter). */
export interface LatencyBreakdown {
  /** Create request recorded -> placed on a node. */
  placementMs: number | null;
  /** Placed -> the node started creating it. */
  queueMs: number | null;
  /** The node's create (warm claim, restore or boot), and its phases. */
  startMs: number | null;
  startPhases: Record<string, number>;
  /** Ready -> ended (or now). */
  runMs: number | null;
  /** Its last busy sample -> its end (null while it runs or when it was never busy). */
  idleBeforeTeardownMs: number | null;
}

export interface CostTreeNode {
  sandboxId: string;
  parentId: string | null;
  template: string;
  state: string;
  startPath: string | null;
  createdAt: string;
  readyAt: string | null;
  endedAt: string | null;
  final: boolean;
  cpuSeconds: number;
  memoryGibSeconds: number;
  traffic: TrafficBytes;
  cost: Cost;
  /** This sandbox's share of the whole tree's cost (0-1). */
  share: number;
  /** Its cost plus its descendants'. */
  subtreeCost: Cost;
  latency: LatencyBreakdown;
  children: CostTreeNode[];
}

export interface CostTree {
  rootId: string;
  tenantId: string;
  currency: string;
  sandboxes: number;
  total: Cost;
  tree: CostTreeNode;
}

function ms(a: string | undefined | null, b: string | undefined | null): number | null {
  if (!a || !b) return null;
  return Math.max(0, Date.parse(b) - Date.parse(a));
}

export function latencyOf(
  rec: SandboxRecord,
  events: SandboxEvent[],
  usage: UsageRecord | undefined,
  now = Date.now(),
): LatencyBreakdown {
  const first = (type: string, pred: (e: SandboxEvent) => boolean = () => true) =>
    events.find((e) => e.type === type && pred(e))?.at;
  const requested = first("requested");
  const scheduled = first("scheduled");
  const starting = first("state", (e) => e.detail["to"] === "starting");
  const started = events.find((e) => e.type === "started");
  const startPhases = (started?.detail["phases"] ?? rec.timings?.phases ?? {}) as Record<string, number>;
  const startMs =
    typeof started?.detail["totalMs"] === "number"
      ? (started.detail["totalMs"] as number)
      : (rec.timings?.totalMs ?? null);
  const end = rec.endedAt ?? new Date(now).toISOString();
  const lastActive = parseMeterState(usage?.meterState)?.lastActiveAt;
  return {
    placementMs: ms(requested, scheduled),
    queueMs: ms(scheduled, starting),
    startMs,
    startPhases,
    runMs: ms(rec.readyAt, end),
    idleBeforeTeardownMs:
      rec.endedAt && typeof lastActive === "number"
        ? Math.max(0, Date.parse(rec.endedAt) - lastActive)
        : null,
  };
}

/**
 * The cost tree of a root request. Every sandbox of the tree has the root's
 * id as its rootId; parents link them. Undefined when the root is unknown.
 */
export async function costTree(store: Store, rootId: string): Promise<CostTree | undefined> {
  const root = await store.getSandbox(rootId);
  if (!root) return undefined;
  const prices = await loadPrices(store);
  const usage = await store.listUsage({
    tenantId: root.tenantId,
    rootId: root.rootId,
    limit: MAX_REPORT_ROWS,
  });
  const byId = new Map(usage.map((u) => [u.sandboxId, u]));
  const nodes = new Map<string, CostTreeNode>();
  let total: Cost = ZERO_COST;
  const raw = new Map<string, Cost>();
  for (const u of usage) {
    const rec = await store.getSandbox(u.sandboxId);
    if (!rec) continue;
    const cost = costOf(u, ratesFor(prices, u.tenantId, u.template));
    raw.set(u.sandboxId, cost);
    total = addCost(total, cost);
    nodes.set(u.sandboxId, {
      sandboxId: u.sandboxId,
      parentId: u.parentId,
      template: u.template,
      state: rec.state,
      startPath: u.startPath,
      createdAt: u.createdAt,
      readyAt: u.readyAt,
      endedAt: rec.endedAt,
      final: u.final,
      cpuSeconds: u.cpuSeconds,
      memoryGibSeconds: u.memoryGibSeconds,
      traffic: u.traffic,
      cost: roundCost(cost),
      share: 0,
      subtreeCost: ZERO_COST,
      latency: latencyOf(rec, await store.listEvents(u.sandboxId), byId.get(u.sandboxId)),
      children: [],
    });
  }
  const top = nodes.get(root.rootId);
  if (!top) return undefined;
  for (const n of nodes.values()) {
    if (n === top) continue;
    // A parent outside the tree (should not happen) hangs the node under the root.
    (nodes.get(n.parentId ?? "") ?? top).children.push(n);
  }
  const finish = (n: CostTreeNode): Cost => {
    n.children.sort(
      (a, b) => a.createdAt.localeCompare(b.createdAt) || a.sandboxId.localeCompare(b.sandboxId),
    );
    let sub = raw.get(n.sandboxId) ?? ZERO_COST;
    for (const c of n.children) sub = addCost(sub, finish(c));
    n.subtreeCost = roundCost(sub);
    n.share = total.total > 0 ? round6((raw.get(n.sandboxId)?.total ?? 0) / total.total) : 0;
    return sub;
  };
  finish(top);
  return {
    rootId: root.rootId,
    tenantId: root.tenantId,
    currency: prices.currency,
    sandboxes: nodes.size,
    total: roundCost(total),
    tree: top,
  };
}

function round6(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
