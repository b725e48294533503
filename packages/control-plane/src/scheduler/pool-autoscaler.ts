// Pool targets that follow demand (pool-targets.ts), applied: a pass that
// reads the recent creates from the store (every replica's, so it runs on
// one replica, the holder of the "pools" lease), plans each node's warm pool
// per template and shape from them and the nodes' reports, and sends each
// node the targets that changed (setPool). A lowered target stops refills;
// the node keeps the VMs it has ready until they are claimed.
import type { Logger } from "pino";
import type { NodeDirectory } from "../node/directory.ts";
import type { Store } from "../store/store.ts";
import type { CapacityPolicy } from "./placement.ts";
import {
  DEFAULT_POOL_DEMAND,
  demandTargets,
  type PoolDemandOptions,
  type PoolPlan,
  planPools,
  type RecentCreate,
} from "./pool-targets.ts";

const PAGE = 200;

export class PoolAutoscaler {
  readonly #store: Store;
  readonly #nodes: NodeDirectory;
  readonly #log: Logger;
  readonly #opts: PoolDemandOptions;
  readonly #capacity: CapacityPolicy;
  /** What each node was last told ("<node>\0<template>\0<shape>" -> size). */
  readonly #applied = new Map<string, number>();

  constructor(deps: {
    store: Store;
    nodes: NodeDirectory;
    log: Logger;
    capacity: CapacityPolicy;
    opts?: Partial<PoolDemandOptions>;
  }) {
    this.#store = deps.store;
    this.#nodes = deps.nodes;
    this.#log = deps.log;
    this.#capacity = deps.capacity;
    this.#opts = { ...DEFAULT_POOL_DEMAND, ...deps.opts };
  }

  /** Creates within the window, newest first per tenant (sandboxes of every state, forks excluded). */
  async recentCreates(nowMs: number): Promise<RecentCreate[]> {
    const since = nowMs - this.#opts.windowMs;
    const out: RecentCreate[] = [];
    for (const t of await this.#store.listTenants()) {
      let cursor: string | undefined;
      for (;;) {
        const page = await this.#store.listSandboxes({
          tenantId: t.id,
          limit: PAGE,
          ...(cursor ? { cursor } : {}),
        });
        let older = false;
        for (const s of page.sandboxes) {
          const at = Date.parse(s.createdAt);
          if (at <= since) {
            older = true;
            break;
          }
          // A fork restores from its parent's memory, never from a pool.
          if (!s.parentId) out.push({ template: s.template, shape: `${s.vcpus}x${s.memoryMib}`, atMs: at });
        }
        if (older || !page.nextCursor) break;
        cursor = page.nextCursor;
      }
    }
    return out;
  }

  /** One pass: plan from the creates and the nodes' reports, then apply what changed. */
  async tick(nowMs = Date.now()): Promise<PoolPlan> {
    const targets = demandTargets(await this.recentCreates(nowMs), nowMs, this.#opts);
    const plan = planPools(
      targets,
      this.#nodes
        .views()
        .map((v) => ({ id: v.id, report: v.report, usable: v.healthy && !v.report.draining })),
      this.#opts,
      this.#capacity,
    );
    for (const [nodeId, pools] of plan) {
      for (const [k, size] of pools) {
        const key = `${nodeId}\0${k}`;
        if (this.#applied.get(key) === size) continue;
        const [template, shape] = k.split("\0") as [string, string];
        const [vcpus, memoryMib] = shape.split("x").map(Number) as [number, number];
        this.#applied.set(key, size);
        // Not awaited: a fill takes a restore per VM; the node's report shows progress.
        this.#nodes
          .node(nodeId)
          .setPool(template, size, { vcpus, memoryMib })
          .catch((e: Error) => {
            this.#applied.delete(key); // told again next pass
            this.#log.warn(
              { node: nodeId, template, shape, size, err: e.message },
              "pool target not applied",
            );
          });
        this.#log.info({ node: nodeId, template, shape, size }, "pool target");
      }
    }
    return plan;
  }
}
