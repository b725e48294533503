// The platform's overhead account: CPU the nodes spent that no tenant is
// charged for (warm pools, restores and boots before hand-over, snapshot
// preparation, template builds, failed starts). Nodes keep these records
// until a control plane has stored them (node-agent daemon/overhead.ts); the
// collector pulls them every sampler pass, stores them idempotently (by
// record id) and acknowledges what it stored on its next call, so a record
// is neither lost nor counted twice, whichever replica collects it.
//
// The report groups the account per node and template, with the CPU per kind
// of work, over a time range.
import type { Logger } from "pino";
import type { NodeDirectory } from "../node/directory.ts";
import type { OverheadRecord } from "../node/node-client.ts";
import type { OverheadUsageRecord, Store } from "../store/store.ts";

/** Records one collector call asks a node for (it asks again while a node has more). */
const MAX_ROUNDS = 20;

/** An overhead record as a store row: the control plane's sandbox id when the work was for one. */
export function toStored(r: OverheadRecord): OverheadUsageRecord {
  return {
    id: r.id,
    nodeId: r.nodeId,
    kind: r.kind,
    template: r.template,
    at: r.at,
    cpuSeconds: r.cpuSeconds,
    wallSeconds: r.wallSeconds,
    memoryMib: r.memoryMib,
    nodeSandboxId: r.nodeSandboxId ?? null,
    sandboxId: r.platformId ?? null,
  };
}

export class OverheadCollector {
  readonly #store: Store;
  readonly #nodes: NodeDirectory;
  readonly #log: Logger;
  /** What this replica stored per node (acknowledged on the next call). */
  readonly #acks = new Map<string, { epoch: string; seq: number }>();

  constructor(store: Store, nodes: NodeDirectory, log: Logger) {
    this.#store = store;
    this.#nodes = nodes;
    this.#log = log;
  }

  /** One pass over every node; returns how many new records were stored. */
  async collect(): Promise<number> {
    const counts = await Promise.all(
      this.#nodes.ids().map(async (id) => {
        try {
          return await this.#collectFrom(id);
        } catch (e) {
          this.#log.warn({ node: id, err: (e as Error).message }, "node overhead not collected");
          return 0;
        }
      }),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  async #collectFrom(nodeId: string): Promise<number> {
    const node = this.#nodes.node(nodeId);
    if (!node.overhead) return 0;
    let stored = 0;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const got = await node.overhead(this.#acks.get(nodeId));
      // SECURITY: a node reports its own overhead only (records name the node that sent them).
      const records = got.records.filter((r) => r.nodeId === nodeId && Number.isFinite(r.cpuSeconds));
      if (!records.length) {
        // Nothing new: the previous ack (if any) was consumed by this call.
        return stored;
      }
      stored += await this.#store.putOverhead(records.map(toStored));
      // INVARIANT: only records stored are acknowledged (the node drops them on the next call).
      this.#acks.set(nodeId, { epoch: got.epoch, seq: Math.max(...records.map((r) => r.seq)) });
    }
    return stored;
  }
}

export interface OverheadGroup {
  nodeId: string;
  template: string;
  records: number;
  cpuSeconds: number;
  wallSeconds: number;
  /** CPU seconds per kind of work (warm_pool, restore, boot, resume, fork, snapshot_prepare, template_build, failed_start). */
  cpuSecondsByKind: Record<string, number>;
  /** The earliest start and latest end of the work in this group. */
  from: string;
  to: string;
}

export interface OverheadReport {
  from: string | null;
  to: string | null;
  groups: OverheadGroup[];
  total: { records: number; cpuSeconds: number; wallSeconds: number };
}

/** At most this many records go into one report (narrow the range for more). */
export const MAX_OVERHEAD_ROWS = 100_000;

/** When a record's work began: its end less the wall time it held its VM. */
export function startOf(r: OverheadUsageRecord): string {
  return new Date(Date.parse(r.at) - r.wallSeconds * 1000).toISOString();
}

/** Groups overhead records per node and template. */
export function groupOverhead(rows: OverheadUsageRecord[]): Omit<OverheadReport, "from" | "to"> {
  const groups = new Map<string, OverheadGroup>();
  let cpu = 0;
  let wall = 0;
  for (const r of rows) {
    const key = `${r.nodeId}\u0000${r.template}`;
    const begin = startOf(r);
    const g = groups.get(key) ?? {
      nodeId: r.nodeId,
      template: r.template,
      records: 0,
      cpuSeconds: 0,
      wallSeconds: 0,
      cpuSecondsByKind: {},
      from: begin,
      to: r.at,
    };
    g.records++;
    g.cpuSeconds += r.cpuSeconds;
    g.wallSeconds += r.wallSeconds;
    g.cpuSecondsByKind[r.kind] = (g.cpuSecondsByKind[r.kind] ?? 0) + r.cpuSeconds;
    if (begin < g.from) g.from = begin;
    if (r.at > g.to) g.to = r.at;
    groups.set(key, g);
    cpu += r.cpuSeconds;
    wall += r.wallSeconds;
  }
  const out = [...groups.values()]
    .map((g) => ({
      ...g,
      cpuSeconds: round6(g.cpuSeconds),
      wallSeconds: round6(g.wallSeconds),
      cpuSecondsByKind: Object.fromEntries(
        Object.entries(g.cpuSecondsByKind).map(([k, v]) => [k, round6(v)]),
      ),
    }))
    .sort((a, b) => a.nodeId.localeCompare(b.nodeId) || a.template.localeCompare(b.template));
  return { groups: out, total: { records: rows.length, cpuSeconds: round6(cpu), wallSeconds: round6(wall) } };
}

export async function overheadReport(
  store: Store,
  q: { from?: string; to?: string },
): Promise<OverheadReport> {
  const rows = await store.listOverhead({
    ...(q.from ? { from: q.from } : {}),
    ...(q.to ? { to: q.to } : {}),
    limit: MAX_OVERHEAD_ROWS,
  });
  return { ...groupOverhead(rows), from: q.from ?? null, to: q.to ?? null };
}

function round6(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
