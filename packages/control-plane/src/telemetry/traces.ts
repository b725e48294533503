// Reading traces back: the spans this process kept (RecentTraces) and the
// spans the nodes kept of the same trace (the node API's Spans call), merged
// by span id. A sandbox's traces are found by the sandbox ids on their spans,
// and by the trace ids its events recorded (another replica may have served
// the create: its spans are in that replica's memory, or in your collector).
import { ATTR, assembleTrace, type RecentTraces, type SpanJson, type TraceJson } from "@firebreak/node-agent";
import type { NodeDirectory } from "../node/directory.ts";
import type { SandboxRecord, Store } from "../store/store.ts";

export class TraceReader {
  readonly #recent: RecentTraces;
  readonly #nodes: NodeDirectory;
  readonly #store: Store;

  constructor(recent: RecentTraces, nodes: NodeDirectory, store: Store) {
    this.#recent = recent;
    this.#nodes = nodes;
    this.#store = store;
  }

  /** A trace with every node's spans of it; undefined when no span of it is held anywhere. */
  async trace(traceId: string, nodeIds: string[] = this.#nodes.ids()): Promise<TraceJson | undefined> {
    const spans: SpanJson[] = this.#recent.get(traceId)?.spans ?? [];
    await Promise.all(
      nodeIds.map(async (id) => {
        try {
          const node = this.#nodes.node(id);
          if (node.spans) spans.push(...(await withTimeout(node.spans(traceId), 2_000)));
        } catch {
          // that node does not answer: its spans are left out
        }
      }),
    );
    return spans.length ? assembleTrace(traceId, spans) : undefined;
  }

  /** Ids of the traces that touched a sandbox, oldest first. */
  async traceIdsOf(rec: SandboxRecord): Promise<string[]> {
    const ids = new Set<string>(this.#recent.traceIdsOf(rec.id));
    if (rec.nodeSandboxId) for (const t of this.#recent.traceIdsOf(rec.nodeSandboxId)) ids.add(t);
    for (const e of await this.#store.listEvents(rec.id)) {
      const t = e.detail["traceId"];
      if (typeof t === "string" && /^[0-9a-f]{32}$/.test(t)) ids.add(t);
    }
    return [...ids];
  }

  /**
   * The part of a trace a tenant may see: the spans whose nearest span with
   * a tenant (itself or an ancestor) is that tenant's. SECURITY: a caller
   * chooses its trace id (traceparent), so one trace may hold several
   * tenants' spans; each sees its own only, and spans of no tenant
   * (unauthenticated requests) are the operator's. Undefined when none is left.
   */
  static forTenant(t: TraceJson, tenantId: string): TraceJson | undefined {
    const byId = new Map(t.spans.map((s) => [s.spanId, s]));
    const owner = new Map<string, string | undefined>();
    const ownerOf = (s: SpanJson): string | undefined => {
      if (owner.has(s.spanId)) return owner.get(s.spanId);
      owner.set(s.spanId, undefined); // a cycle (spans from elsewhere) resolves to no tenant
      const own = s.attributes[ATTR.tenantId];
      const parent = s.parentSpanId ? byId.get(s.parentSpanId) : undefined;
      const v = typeof own === "string" ? own : parent ? ownerOf(parent) : undefined;
      owner.set(s.spanId, v);
      return v;
    };
    const spans = t.spans.filter((s) => ownerOf(s) === tenantId);
    return spans.length ? assembleTrace(t.traceId, spans, t.droppedSpans) : undefined;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("timed out")), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
