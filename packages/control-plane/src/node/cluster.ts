// The nodes a control plane places sandboxes on: their clients, their last
// reports, and their leases. Every replica keeps its own view (reports every
// `reportIntervalMs`); only the holder of the `nodes` lease decides that a
// node is lost (its lease ran out) or back, and ends or reconciles its
// sandboxes accordingly.
import type { NodeReport } from "@firebreak/node-agent";
import type { Logger } from "pino";
import { ApiError } from "../errors.ts";
import type { NodeView } from "../scheduler/placement.ts";
import type { NodeRecord, Store } from "../store/store.ts";
import { type NodeDirectory, notePlacedOn } from "./directory.ts";
import type { NodeClient } from "./node-client.ts";
import { RemoteNode } from "./remote-node.ts";

export interface ClusterOptions {
  /** A node that has not answered for this long is lost. @default 15_000 */
  leaseMs: number;
  /** How often each replica asks every node for its report. @default 2_000 */
  reportIntervalMs: number;
}

export const DEFAULT_CLUSTER: ClusterOptions = { leaseMs: 15_000, reportIntervalMs: 2_000 };

interface Known {
  record: NodeRecord;
  client: NodeClient;
  report: NodeReport | undefined;
  reportedAt: number;
}

export class Cluster implements NodeDirectory {
  readonly #store: Store;
  readonly #log: Logger;
  readonly #opts: ClusterOptions;
  readonly #nodes = new Map<string, Known>();
  /** Clients this process made itself (the in-process node); kept when the record changes. */
  readonly #pinned = new Map<string, NodeClient>();
  #timer: NodeJS.Timeout | undefined;
  #polling = false;

  constructor(store: Store, log: Logger, opts: Partial<ClusterOptions> = {}) {
    this.#store = store;
    this.#log = log;
    this.#opts = { ...DEFAULT_CLUSTER, ...opts };
  }

  get options(): ClusterOptions {
    return this.#opts;
  }

  /** Registers a node this process runs itself (firebreak up's local node). */
  async addLocal(
    client: NodeClient,
    record: Omit<NodeRecord, "state" | "leaseUntil" | "report" | "lastSeenAt">,
  ) {
    this.#pinned.set(client.id, client);
    const report = await client.report();
    const now = Date.now();
    await this.#store.upsertNode({
      ...record,
      state: report.draining ? "draining" : "active",
      leaseUntil: new Date(now + this.#opts.leaseMs).toISOString(),
      report,
      lastSeenAt: new Date(now).toISOString(),
    });
    await this.sync();
  }

  /** Reads the registry: clients for new nodes, away with removed ones. */
  async sync(): Promise<void> {
    const records = await this.#store.listNodes();
    const seen = new Set<string>();
    for (const r of records) {
      seen.add(r.id);
      const k = this.#nodes.get(r.id);
      if (k && k.record.address === r.address && k.record.secret === r.secret) {
        k.record = r;
        continue;
      }
      await k?.client.close().catch(() => {});
      const client = this.#pinned.get(r.id) ?? new RemoteNode(r.id, { address: r.address, secret: r.secret });
      this.#nodes.set(r.id, {
        record: r,
        client,
        report: (r.report as NodeReport | null) ?? undefined,
        reportedAt: r.lastSeenAt ? Date.parse(r.lastSeenAt) : 0,
      });
    }
    for (const [id, k] of this.#nodes) {
      if (seen.has(id)) continue;
      this.#nodes.delete(id);
      if (!this.#pinned.has(id)) await k.client.close().catch(() => {});
    }
  }

  /** The client of a node; NODE_UNAVAILABLE when this control plane does not know it. */
  node(id: string): NodeClient {
    const k = this.#nodes.get(id);
    if (!k) throw new ApiError("NODE_UNAVAILABLE", `node ${id} is not registered with this control plane`);
    return k.client;
  }

  ids(): string[] {
    return [...this.#nodes.keys()];
  }

  /** What the scheduler sees: healthy = reported within its lease and not lost. */
  views(): NodeView[] {
    const now = Date.now();
    const out: NodeView[] = [];
    for (const [id, k] of this.#nodes) {
      if (!k.report) continue;
      const fresh = now - k.reportedAt <= this.#opts.leaseMs;
      out.push({
        id,
        report: { ...k.report, draining: k.report.draining || k.record.state === "draining" },
        healthy: fresh && k.record.state !== "lost",
      });
    }
    return out;
  }

  /**
   * After placing a create on a node, count it there until the next report,
   * so a burst of creates does not all see the same warm slot.
   */
  notePlaced(nodeId: string, template: string, shape: { vcpus: number; memoryMib: number }, warm: boolean) {
    notePlacedOn(this.#nodes.get(nodeId)?.report, template, shape, warm);
  }

  /** Node ids this process runs itself (firebreak up's local node). */
  localIds(): string[] {
    return [...this.#pinned.keys()];
  }

  /** The registry's record of a node (as of the last sync). */
  record(id: string): NodeRecord | undefined {
    return this.#nodes.get(id)?.record;
  }

  /** Asks every node for its report now; a node that answers renews its lease. */
  async poll(): Promise<void> {
    if (this.#polling) return;
    this.#polling = true;
    try {
      await this.sync();
      await Promise.all(
        [...this.#nodes.entries()].map(async ([id, k]) => {
          try {
            const report = await k.client.report();
            const now = Date.now();
            k.report = report;
            k.reportedAt = now;
            await this.#store.updateNode(id, {
              report,
              lastSeenAt: new Date(now).toISOString(),
              leaseUntil: new Date(now + this.#opts.leaseMs).toISOString(),
            });
          } catch (e) {
            this.#log.debug({ node: id, err: (e as Error).message }, "node did not report");
          }
        }),
      );
    } finally {
      this.#polling = false;
    }
  }

  /** Nodes whose lease ran out while marked active or draining (for the lease holder to end). */
  async expired(): Promise<NodeRecord[]> {
    const now = Date.now();
    return (await this.#store.listNodes()).filter(
      (n) => n.state !== "lost" && n.leaseUntil !== null && Date.parse(n.leaseUntil) < now,
    );
  }

  /** Lost nodes that reported again within their lease (for the lease holder to reconcile). */
  async returned(): Promise<NodeRecord[]> {
    const now = Date.now();
    return (await this.#store.listNodes()).filter(
      (n) => n.state === "lost" && n.leaseUntil !== null && Date.parse(n.leaseUntil) >= now,
    );
  }

  start(): void {
    this.#timer = setInterval(() => void this.poll(), this.#opts.reportIntervalMs);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    for (const [id, k] of this.#nodes) if (!this.#pinned.has(id)) await k.client.close().catch(() => {});
    this.#nodes.clear();
  }
}
