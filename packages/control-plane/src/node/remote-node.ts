// NodeClient over a node daemon's API (node-agent/src/daemon): the only
// implementation the control plane uses for real nodes, local or remote.
// `firebreak up` on one machine runs the daemon in its own process and talks
// to it here over the daemon's unix socket, the same way a fleet does over TLS-PSK.
import type http from "node:http";
import {
  type EgressPolicy,
  FirebreakError,
  type LogSource,
  NodeDaemonClient,
  type NodeReport,
  type NormalizedPolicy,
  type PlatformTarget,
  type PrivateService,
  type SpanJson,
  type Usage,
} from "@firebreak/node-agent";
import type {
  EnvdAccess,
  LogChunk,
  NodeClient,
  NodeCreateRequest,
  NodeSandboxInfo,
  NodeSandboxStatus,
  TemplateBuildProgress,
  TemplateInfo,
  UsageSample,
} from "./node-client.ts";

function sampleOf(u: Usage | undefined): UsageSample | undefined {
  if (!u) return undefined;
  return {
    at: u.atMs,
    cpuNanos: u.cpuNanos,
    memoryBytes: u.memoryBytes,
    memoryPeakBytes: u.memoryPeakBytes,
    ...(u.traffic ? { traffic: u.traffic } : {}),
    ...(u.diskUsedBytes !== undefined ? { diskUsedBytes: u.diskUsedBytes } : {}),
    ...(u.diskTotalBytes !== undefined ? { diskTotalBytes: u.diskTotalBytes } : {}),
  };
}

export class RemoteNode implements NodeClient {
  readonly id: string;
  readonly address: string;
  readonly #client: NodeDaemonClient;
  #info = { accelerator: "unknown", acceleratorReason: "the node has not reported yet" };

  constructor(id: string, target: { address: string; secret: string }) {
    this.id = id;
    this.address = target.address;
    this.#client = new NodeDaemonClient(target);
  }

  info() {
    return this.#info;
  }

  async report(): Promise<NodeReport> {
    const r = await this.#client.report();
    this.#info = { accelerator: r.accelerator, acceleratorReason: r.acceleratorReason };
    return r;
  }

  /** A named snapshot of a running sandbox on this node (it keeps running). */
  snapshotOf(id: string): Promise<{ snapshotId: string }> {
    return this.#client.snapshot(id);
  }

  /** Deletes a named snapshot; false when this node has none of that id. */
  async deleteSnapshot(snapshotId: string): Promise<boolean> {
    try {
      await this.#client.deleteSnapshot(snapshotId);
      return true;
    } catch (e) {
      if (e instanceof FirebreakError && e.code === "SNAPSHOT_NOT_FOUND") return false;
      throw e;
    }
  }

  async create(req: NodeCreateRequest): Promise<NodeSandboxInfo> {
    const s = await this.#client.create({
      template: req.template,
      shape: { vcpus: req.vcpus, memoryMib: req.memoryMib },
      envVars: req.envVars,
      ...(req.network
        ? {
            policy: {
              policy: req.network.policy,
              tenant: req.network.tenant,
              admin: req.network.admin ?? false,
            },
          }
        : {}),
      ...(req.diskMib !== undefined ? { diskMib: req.diskMib } : {}),
      ...(req.platformId ? { platformId: req.platformId } : {}),
      ...(req.fromSnapshot !== undefined ? { fromSnapshot: req.fromSnapshot } : {}),
      ...(req.platform ? { platform: req.platform } : {}),
    });
    this.#tokens.set(s.id, s.accessToken);
    return {
      id: s.id,
      accessToken: s.accessToken,
      path: s.path,
      totalMs: s.totalMs,
      phases: s.phases,
      ...(s.fallback ? { fallback: s.fallback } : {}),
      policy: s.policy,
      ...(s.handover ? { handover: sampleOf(s.handover)! } : {}),
    };
  }

  updatePolicy(
    id: string,
    policy: EgressPolicy,
    tenant: string,
    admin = false,
    platform?: PlatformTarget,
  ): Promise<NormalizedPolicy> {
    return this.#client.updatePolicy(id, policy, tenant, admin, platform);
  }

  overhead(ack: { epoch: string; seq: number } | undefined) {
    return this.#client.overhead(ack);
  }

  metrics(): Promise<unknown[]> {
    return this.#client.metrics();
  }

  spans(traceId: string): Promise<SpanJson[]> {
    return this.#client.spans(traceId);
  }

  logs(
    id: string,
    source: LogSource,
    offset: number,
    follow: boolean,
    signal?: AbortSignal,
  ): AsyncIterable<LogChunk> {
    return this.#client.logs(id, source, offset, follow, signal);
  }

  listServices(): Promise<PrivateService[]> {
    return this.#client.listServices();
  }

  putService(s: PrivateService): Promise<PrivateService> {
    return this.#client.putService(s);
  }

  removeService(name: string): Promise<boolean> {
    return this.#client.removeService(name);
  }

  async kill(id: string, reason: string): Promise<UsageSample | undefined> {
    try {
      return sampleOf(await this.#client.kill(id, reason));
    } finally {
      // Streams to it end now, not at their timeouts.
      this.#client.closeSandbox(id);
      this.#tokens.delete(id);
    }
  }

  async pause(id: string, opts: { memory?: boolean } = {}): Promise<UsageSample | undefined> {
    const last = sampleOf(await this.#client.pause(id, opts));
    this.#client.closeSandbox(id); // its connections died with its network
    return last;
  }

  closeTunnels(id: string): void {
    this.#client.closeSandbox(id);
    this.#tokens.delete(id);
  }

  async resume(id: string) {
    const r = await this.#client.resume(id);
    const handover = sampleOf(r.handover);
    return { path: r.path, totalMs: r.totalMs, phases: r.phases, ...(handover ? { handover } : {}) };
  }

  async fork(id: string, count: number): Promise<NodeSandboxInfo[]> {
    const children = await this.#client.fork(id, count);
    for (const c of children) this.#tokens.set(c.id, c.accessToken);
    return children.map((c) => ({
      id: c.id,
      accessToken: c.accessToken,
      path: c.path,
      totalMs: c.totalMs,
      phases: c.phases,
      policy: c.policy,
      ...(c.handover ? { handover: sampleOf(c.handover)! } : {}),
    }));
  }

  async status(ids: string[]): Promise<Map<string, NodeSandboxStatus>> {
    if (!ids.length) return new Map();
    const out = new Map<string, NodeSandboxStatus>();
    for (const s of await this.#client.status(ids)) {
      out.set(
        s.id,
        s.state === "gone" ? { state: "gone", reason: s.reason, crashed: s.crashed } : { state: s.state },
      );
    }
    return out;
  }

  async usage(ids: string[]): Promise<Map<string, UsageSample>> {
    if (!ids.length) return new Map();
    const out = new Map<string, UsageSample>();
    for (const [id, u] of await this.#client.usage(ids)) out.set(id, sampleOf(u)!);
    return out;
  }

  async usageSample(id: string): Promise<UsageSample | undefined> {
    return (await this.usage([id])).get(id);
  }

  accessToken(id: string): Promise<string | undefined> {
    return this.#client.accessToken(id);
  }

  /** Tokens of this node's sandboxes, learned at create or asked once (the agent wants it on every call). */
  readonly #tokens = new Map<string, string>();

  async #token(id: string): Promise<string> {
    const known = this.#tokens.get(id);
    if (known) return known;
    const t = await this.#client.accessToken(id);
    if (!t) throw new FirebreakError("SANDBOX_NOT_FOUND", `node ${this.id} has no sandbox ${id}`);
    this.#tokens.set(id, t);
    return t;
  }

  envd(id: string, user?: string): EnvdAccess {
    return this.#client.envd(id, () => this.#token(id), user);
  }

  portRequest(
    id: string,
    port: number,
    pathAndQuery: string,
    init: { method?: string; headers?: http.OutgoingHttpHeaders } = {},
  ): http.ClientRequest {
    return this.#client.portRequest(id, port, pathAndQuery, init);
  }

  async listSandboxes(): Promise<{ id: string; status: NodeSandboxStatus }[]> {
    return (await this.#client.listSandboxes()).map((s) => ({
      id: s.id,
      status:
        s.state === "gone" ? { state: "gone", reason: s.reason, crashed: s.crashed } : { state: s.state },
    }));
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    return this.#client.listTemplates();
  }

  async hasTemplate(name: string): Promise<boolean> {
    return (await this.#client.listTemplates()).some((t) => t.name === name || t.aliases?.includes(name));
  }

  buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: TemplateBuildProgress) => void,
  ): Promise<TemplateInfo> {
    return this.#client.buildTemplate(source, onProgress);
  }

  deleteTemplate(name: string): Promise<boolean> {
    return this.#client.deleteTemplate(name);
  }

  exportTemplate(name: string): Promise<http.IncomingMessage> {
    return this.#client.exportTemplate(name);
  }

  importTemplate(name: string, image: http.IncomingMessage) {
    return this.#client.importTemplate(name, image);
  }

  setPool(template: string, size: number, shape?: { vcpus: number; memoryMib: number }): Promise<void> {
    return this.#client.setPool(template, size, shape);
  }

  drain(draining: boolean): Promise<void> {
    return this.#client.drain(draining);
  }

  /** Closes this client's connections (the node keeps running). */
  async close(): Promise<void> {
    this.#client.close();
  }
}
