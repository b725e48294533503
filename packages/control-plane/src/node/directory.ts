// The nodes a control plane can place sandboxes on, and their last reports.
// `StaticNodes` is a fixed set (firebreak up's own node; tests with fakes);
// `Cluster` (cluster.ts) is the registry in the store that nodes join.
import type { NodeReport } from "@firebreak/node-agent";
import { ApiError } from "../errors.ts";
import type { NodeView } from "../scheduler/placement.ts";
import type { NodeClient, TemplateBuildProgress, TemplateInfo } from "./node-client.ts";

export interface NodeDirectory {
  /** The client of a node; NODE_UNAVAILABLE when unknown. */
  node(id: string): NodeClient;
  ids(): string[];
  /** What the scheduler sees (nodes with a report). */
  views(): NodeView[];
  /** Counts a placement on a node until its next report (a burst does not all see one warm slot). */
  notePlaced(
    nodeId: string,
    template: string,
    shape: { vcpus: number; memoryMib: number },
    warm: boolean,
  ): void;
  /** Asks every node for its report now. */
  poll(): Promise<void>;
  start(): void;
  close(): Promise<void>;
}

interface Known {
  client: NodeClient;
  report: NodeReport | undefined;
  reportedAt: number;
}

/** Applies a placement to a cached report (shared by the directories). */
export function notePlacedOn(
  r: NodeReport | undefined,
  template: string,
  shape: { vcpus: number; memoryMib: number },
  warm: boolean,
): void {
  if (!r) return;
  if (warm) {
    const t = r.templates.find((x) => x.name === template);
    const key = `${shape.vcpus}x${shape.memoryMib}`;
    if (t?.warm[key]) t.warm[key]--;
    return;
  }
  r.committedVcpus += shape.vcpus;
  r.committedMemoryMib += shape.memoryMib;
}

export class StaticNodes implements NodeDirectory {
  readonly #nodes = new Map<string, Known>();
  readonly #staleMs: number;
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | undefined;

  /** `staleMs`: a node whose last report is older is not healthy. */
  constructor(clients: NodeClient[], opts: { staleMs?: number; intervalMs?: number } = {}) {
    for (const c of clients) this.#nodes.set(c.id, { client: c, report: undefined, reportedAt: 0 });
    this.#staleMs = opts.staleMs ?? 15_000;
    this.#intervalMs = opts.intervalMs ?? 2_000;
  }

  node(id: string): NodeClient {
    const k = this.#nodes.get(id);
    if (!k) throw new ApiError("NODE_UNAVAILABLE", `node ${id} is not known to this control plane`);
    return k.client;
  }

  ids(): string[] {
    return [...this.#nodes.keys()];
  }

  views(): NodeView[] {
    const now = Date.now();
    return [...this.#nodes.entries()]
      .filter(([, k]) => k.report)
      .map(([id, k]) => ({ id, report: k.report!, healthy: now - k.reportedAt <= this.#staleMs }));
  }

  notePlaced(nodeId: string, template: string, shape: { vcpus: number; memoryMib: number }, warm: boolean) {
    notePlacedOn(this.#nodes.get(nodeId)?.report, template, shape, warm);
  }

  async poll(): Promise<void> {
    await Promise.all(
      [...this.#nodes.values()].map(async (k) => {
        try {
          k.report = await k.client.report();
          k.reportedAt = Date.now();
        } catch {
          // stale until it answers again
        }
      }),
    );
  }

  start(): void {
    this.#timer = setInterval(() => void this.poll(), this.#intervalMs);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
  }
}

/**
 * Templates across the nodes of a directory: a name exists when any node has
 * it; builds run on one node (the least loaded that answers).
 */
export class TemplatesAcrossNodes {
  readonly #nodes: NodeDirectory;

  constructor(nodes: NodeDirectory) {
    this.#nodes = nodes;
  }

  async hasTemplate(name: string): Promise<boolean> {
    for (const id of this.#nodes.ids()) {
      try {
        if (await this.#nodes.node(id).hasTemplate(name)) return true;
      } catch {
        // that node does not answer: ask the next
      }
    }
    return false;
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    const byName = new Map<string, TemplateInfo>();
    for (const id of this.#nodes.ids()) {
      try {
        for (const t of await this.#nodes.node(id).listTemplates())
          if (!byName.has(t.name)) byName.set(t.name, t);
      } catch {
        // that node does not answer
      }
    }
    return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /** The node a build runs on: healthy, not draining, least committed. */
  builder(): NodeClient {
    const candidates = this.#nodes
      .views()
      .filter((v) => v.healthy && !v.report.draining)
      .sort((a, b) => a.report.committedVcpus / a.report.vcpus - b.report.committedVcpus / b.report.vcpus);
    const id = candidates[0]?.id ?? this.#nodes.ids()[0];
    if (!id)
      throw new ApiError("NODE_UNAVAILABLE", "no node to build on: none has joined this control plane");
    return this.#nodes.node(id);
  }

  buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: TemplateBuildProgress) => void,
  ): Promise<TemplateInfo> {
    return this.builder().buildTemplate(source, onProgress);
  }

  async deleteTemplate(name: string): Promise<boolean> {
    let removed = false;
    for (const id of this.#nodes.ids()) {
      if (await this.#nodes.node(id).deleteTemplate(name)) removed = true;
    }
    return removed;
  }
}

/**
 * What routes need of "the nodes" as a whole: health, capacity, the private
 * service registry (kept the same on every node) and template builds.
 */
export class NodesFacade {
  readonly #nodes: NodeDirectory;
  readonly templates: TemplatesAcrossNodes;

  constructor(nodes: NodeDirectory) {
    this.#nodes = nodes;
    this.templates = new TemplatesAcrossNodes(nodes);
  }

  get directory(): NodeDirectory {
    return this.#nodes;
  }

  /** The first node's id (one-node deployments), or "none". */
  get id(): string {
    return this.#nodes.ids()[0] ?? "none";
  }

  info(): { accelerator: string; acceleratorReason: string } {
    const id = this.#nodes.ids()[0];
    return id
      ? this.#nodes.node(id).info()
      : { accelerator: "none", acceleratorReason: "no node has joined" };
  }

  /** Summed over nodes that reported within their lease. */
  capacity(): { vcpus: number; memoryMib: number; sandboxes: number } {
    const out = { vcpus: 0, memoryMib: 0, sandboxes: 0 };
    for (const v of this.#nodes.views()) {
      if (!v.healthy) continue;
      out.vcpus += v.report.vcpus;
      out.memoryMib += v.report.memoryMib;
      out.sandboxes += v.report.sandboxes;
    }
    return out;
  }

  async listServices() {
    const id = this.#nodes.ids()[0];
    return id ? this.#nodes.node(id).listServices() : [];
  }

  /** Every node gets the same registry (a sandbox may be placed anywhere). */
  async putService(s: Parameters<NodeClient["putService"]>[0]) {
    let out: Awaited<ReturnType<NodeClient["putService"]>> | undefined;
    for (const id of this.#nodes.ids()) out = await this.#nodes.node(id).putService(s);
    if (!out) throw new ApiError("NODE_UNAVAILABLE", "no node has joined this control plane");
    return out;
  }

  async removeService(name: string): Promise<boolean> {
    let removed = false;
    for (const id of this.#nodes.ids()) if (await this.#nodes.node(id).removeService(name)) removed = true;
    return removed;
  }

  buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: TemplateBuildProgress) => void,
  ) {
    return this.templates.buildTemplate(source, onProgress);
  }

  deleteTemplate(name: string) {
    return this.templates.deleteTemplate(name);
  }
}
