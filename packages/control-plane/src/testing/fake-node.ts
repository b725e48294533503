// Test support: a NodeClient without VMs, for in-process API tests.

import http from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type EgressPolicy,
  type EnvdClientOptions,
  envdClient,
  FirebreakError,
  NodeMetrics,
  type NormalizedPolicy,
  normalizePolicy,
  OverheadLedger,
  type PrivateService,
  ServiceRegistry,
} from "@firebreak/node-agent";
import type {
  EnvdAccess,
  NodeClient,
  NodeCreateRequest,
  NodeReport,
  NodeSandboxInfo,
  NodeSandboxStatus,
  TemplateInfo,
  UsageSample,
} from "../node/node-client.ts";

export interface FakeGuestAddress {
  address: string;
  envdPort: number;
  options?: EnvdClientOptions;
}

export class FakeNode implements NodeClient {
  readonly id: string;
  readonly sandboxes = new Map<
    string,
    {
      state: "running" | "paused" | "gone";
      token: string;
      born: number;
      vcpus?: number;
      memoryMib?: number;
      /** CPU its cgroup had at hand-over (the platform's). */
      cpuBefore?: number;
    }
  >();
  templates = new Set(["base"]);
  /** Output lines the next builds' run step prints. */
  buildRunLines = 0;
  createDelayMs = 0;
  failNextCreate: FirebreakError | undefined;
  failNextBuild: FirebreakError | undefined;
  /** Env of the last create (the platform adds FIREBREAK_SANDBOX_TOKEN). */
  lastEnv: Record<string, string> = {};
  /** Egress policy and tenant of each sandbox (as the node would enforce them). */
  readonly policies = new Map<string, { policy: NormalizedPolicy; tenant: string }>();
  #registry: ServiceRegistry | undefined;
  #n = 0;
  draining = false;
  /** Warm VMs this fake reports per template ("<vcpus>x<memoryMib>" -> count); a create takes one. */
  readonly warm = new Map<string, Record<string, number>>();
  /** Set by tests: the node does not answer (every call fails NODE_UNAVAILABLE). */
  down = false;
  /**
   * CPU a new sandbox's VM has used before its hand-over (restore, warm-up,
   * its time in a warm pool): reported as overhead, never charged.
   */
  startCpuNanos = 0;
  /** The platform overhead this fake reports (as a real node's daemon/overhead.ts). */
  readonly overheadLedger: OverheadLedger;
  /** The node metrics this fake reports (pool claims, as a real node counts them). */
  readonly nodeMetrics = new NodeMetrics();

  constructor(id = "fake") {
    this.id = id;
    this.overheadLedger = new OverheadLedger(id);
  }

  /** What each sandbox "printed" (tests append), by node sandbox id and source. */
  readonly logText = new Map<string, { console: string; start: string }>();

  async *logs(
    id: string,
    source: "console" | "start",
    offset: number,
    follow: boolean,
    signal?: AbortSignal,
  ) {
    this.#up();
    let at = offset;
    for (;;) {
      const data = Buffer.from(this.logText.get(id)?.[source] ?? "");
      const live = this.sandboxes.get(id)?.state === "running";
      if (at < data.length) {
        yield { offset: at, data: data.subarray(at), skipped: 0, ended: !live && !follow };
        at = data.length;
      }
      if (!follow || !live || signal?.aborted) {
        if (follow) yield { offset: at, data: new Uint8Array(), skipped: 0, ended: true };
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async metrics(): Promise<unknown[]> {
    this.#up();
    return this.nodeMetrics.json();
  }

  async overhead(ack: { epoch: string; seq: number } | undefined) {
    this.#up();
    return { epoch: this.overheadLedger.epoch, records: this.overheadLedger.take(ack) };
  }

  #up(): void {
    if (this.down)
      throw new FirebreakError("NODE_UNAVAILABLE", `node ${this.id} did not answer (fake: down)`);
  }

  info() {
    return { accelerator: "tcg", acceleratorReason: "fake node" };
  }
  /** What capacity() reports (tests shrink it to exercise node admission). */
  hostCapacity = { vcpus: 16, memoryMib: 65_536 };
  async report(): Promise<NodeReport> {
    this.#up();
    const live = [...this.sandboxes.values()].filter((s) => s.state === "running");
    return {
      nodeId: this.id,
      accelerator: "tcg",
      acceleratorReason: "fake node",
      vcpus: this.hostCapacity.vcpus,
      memoryMib: this.hostCapacity.memoryMib,
      committedVcpus: live.reduce((n, s) => n + (s.vcpus ?? 1), 0),
      committedMemoryMib: live.reduce((n, s) => n + (s.memoryMib ?? 256), 0),
      freeMemoryMib: this.hostCapacity.memoryMib - live.reduce((n, s) => n + (s.memoryMib ?? 256), 0),
      sandboxes: live.length,
      draining: this.draining,
      version: "fake",
      templates: [...this.templates].map((name) => ({
        name,
        key: `k-${name}`,
        image: true,
        snapshot: true,
        snapshotShapes: ["1x256"],
        warm: { ...(this.warm.get(name) ?? {}) },
        recentP50Ms: {},
      })),
    };
  }
  async create(
    req: NodeCreateRequest | { template: string; envVars?: Record<string, string> },
  ): Promise<NodeSandboxInfo> {
    this.#up();
    if (this.draining) throw new FirebreakError("CAPACITY_EXHAUSTED", `node ${this.id} is draining`);
    const network = "network" in req ? req.network : undefined;
    this.lastEnv = req.envVars ?? {};
    const policy = normalizePolicy(network?.policy ?? {});
    for (const name of policy.services) (await this.#services()).resolveBinding(name, network?.tenant);
    if (!this.templates.has(req.template)) throw new FirebreakError("TEMPLATE_NOT_FOUND", "no such template");
    await new Promise((r) => setTimeout(r, this.createDelayMs));
    if (this.failNextCreate) {
      const e = this.failNextCreate;
      this.failNextCreate = undefined;
      throw e;
    }
    const id = `fake${++this.#n}`;
    const token = `tok${this.#n}`;
    this.sandboxes.set(id, {
      state: "running",
      token,
      born: Date.now(),
      ...("vcpus" in req ? { vcpus: req.vcpus, memoryMib: req.memoryMib } : {}),
    });
    this.policies.set(id, { policy, tenant: network?.tenant ?? "" });
    const shape = "vcpus" in req ? `${req.vcpus}x${req.memoryMib}` : "1x256";
    const warm = this.warm.get(req.template);
    const path = warm && (warm[shape] ?? 0) > 0 ? "warm" : "snapshot";
    if (path === "warm") warm![shape]!--;
    if (warm)
      this.nodeMetrics.poolClaims.inc({ template: req.template, result: path === "warm" ? "hit" : "miss" });
    this.sandboxes.get(id)!.cpuBefore = this.startCpuNanos;
    const handover = (await this.usageSample(id))!;
    if (this.startCpuNanos > 0) {
      this.overheadLedger.add({
        kind: path === "warm" ? "warm_pool" : "restore",
        template: req.template,
        cpuSeconds: this.startCpuNanos / 1e9,
        wallSeconds: 1,
        memoryMib: "memoryMib" in req ? req.memoryMib : 256,
        nodeSandboxId: id,
        ...("platformId" in req && req.platformId ? { platformId: req.platformId } : {}),
      });
    }
    return path === "warm"
      ? { id, accessToken: token, path, totalMs: 1, phases: { claim: 1 }, policy, handover }
      : { id, accessToken: token, path, totalMs: 1, phases: { restore: 1 }, policy, handover };
  }
  async kill(id: string): Promise<UsageSample | undefined> {
    this.#up();
    const s = await this.usageSample(id);
    this.sandboxes.delete(id);
    return s;
  }
  async pause(id: string): Promise<UsageSample | undefined> {
    this.#up();
    const s = await this.usageSample(id);
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state !== "running") throw new FirebreakError("SANDBOX_STATE_INVALID", "not running");
    sb.state = "paused";
    return s;
  }
  async resume(id: string) {
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state !== "paused") throw new FirebreakError("SANDBOX_STATE_INVALID", "not paused");
    sb.state = "running";
    return { path: "snapshot" as const, totalMs: 1 };
  }
  async fork(id: string, count: number): Promise<NodeSandboxInfo[]> {
    this.#up();
    const parent = this.policies.get(id);
    const out: NodeSandboxInfo[] = [];
    for (let i = 0; i < count; i++) {
      // Children inherit the parent's policy and tenant, as the real node enforces.
      out.push(
        await this.create({
          template: "base",
          vcpus: 1,
          memoryMib: 256,
          envVars: {},
          ...(parent ? { network: { policy: parent.policy, tenant: parent.tenant } } : {}),
        }),
      );
    }
    return out;
  }
  #status(id: string): NodeSandboxStatus {
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state === "gone") return { state: "gone", reason: "gone", crashed: true };
    return { state: sb.state };
  }
  async status(ids: string[]): Promise<Map<string, NodeSandboxStatus>> {
    this.#up();
    return new Map(ids.map((id) => [id, this.#status(id)]));
  }
  async usage(ids: string[]): Promise<Map<string, UsageSample>> {
    this.#up();
    const out = new Map<string, UsageSample>();
    for (const id of ids) {
      const u = await this.usageSample(id);
      if (u) out.set(id, u);
    }
    return out;
  }
  async listSandboxes() {
    this.#up();
    return [...this.sandboxes.keys()].map((id) => ({ id, status: this.#status(id) }));
  }
  async usageSample(id: string): Promise<UsageSample | undefined> {
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state !== "running") return undefined;
    const ms = Date.now() - sb.born;
    // 10% of a CPU, 100 MiB.
    // 10% of a CPU, 100 MiB; 1 kB/s out and 2 kB/s in to the internet.
    return {
      at: Date.now(),
      cpuNanos: (sb.cpuBefore ?? 0) + ms * 1e5,
      memoryBytes: 100 * 2 ** 20,
      memoryPeakBytes: 100 * 2 ** 20,
      traffic: {
        internet: { tx: ms, rx: 2 * ms },
        private: { tx: 0, rx: 0 },
        sandbox: { tx: 0, rx: 0 },
        ingress: { tx: 0, rx: 0 },
      },
    };
  }
  async updatePolicy(id: string, input: EgressPolicy): Promise<NormalizedPolicy> {
    this.#up();
    const sb = this.sandboxes.get(id);
    const cur = this.policies.get(id);
    if (!sb || sb.state !== "running" || !cur)
      throw new FirebreakError("SANDBOX_STATE_INVALID", "not running");
    const policy = normalizePolicy(input);
    for (const name of policy.services) (await this.#services()).resolveBinding(name, cur.tenant);
    cur.policy = policy;
    return policy;
  }
  async #services(): Promise<ServiceRegistry> {
    this.#registry ??= await ServiceRegistry.open();
    return this.#registry;
  }
  async listServices(): Promise<PrivateService[]> {
    return (await this.#services()).list();
  }
  async putService(s: PrivateService): Promise<PrivateService> {
    return (await this.#services()).put(s);
  }
  async removeService(name: string): Promise<boolean> {
    return (await this.#services()).remove(name);
  }
  async accessToken(id: string) {
    this.#up();
    return this.sandboxes.get(id)?.token;
  }
  /**
   * A stand-in guest on loopback: with `guest` set, every sandbox's agent and
   * served ports are reached at that address (the agent on `envdPort`), as the
   * real node reaches `<sandboxAddress>:<port>`; `guests` overrides it per
   * node sandbox id.
   */
  guest: FakeGuestAddress | undefined;
  readonly guests = new Map<string, FakeGuestAddress>();
  #guestOf(id: string): FakeGuestAddress | undefined {
    return this.sandboxes.has(id) ? (this.guests.get(id) ?? this.guest) : undefined;
  }
  /**
   * A guest agent that knows nothing (no stand-in guest set): every RPC fails
   * with Connect's not_found (as the real agent does for a missing path or
   * pid), every REST call answers 404.
   */
  #emptyAgent(): EnvdAccess {
    const missing = () => new ConnectError("the fake node's agent has nothing", Code.NotFound);
    // Unary calls await it (or .catch it); streaming calls iterate it: both fail.
    // The rejected promise is made only when awaited, so iterating leaves no unhandled rejection.
    const failing = () => {
      const settled = () => Promise.reject(missing());
      return {
        // biome-ignore lint/suspicious/noThenProperty: a lazy rejected promise, like a failed unary call
        then: (ok: (v: never) => unknown, fail: (e: unknown) => unknown) => settled().then(ok, fail),
        catch: (fail: (e: unknown) => unknown) => settled().catch(fail),
        finally: (fn: () => void) => settled().finally(fn),
        [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(missing()) }),
      };
    };
    const client = new Proxy({}, { get: () => failing }) as never;
    return {
      process: client,
      filesystem: client,
      fetch: async () => new Response(JSON.stringify({ message: "not found" }), { status: 404 }),
    };
  }
  envd(id: string, user?: string): EnvdAccess {
    const g = this.#guestOf(id);
    if (g)
      return envdClient(g.address, this.sandboxes.get(id)!.token, user, { ...g.options, port: g.envdPort });
    return this.#emptyAgent();
  }
  /**
   * A request to a port inside the sandbox: to the stand-in guest when one is
   * set (the agent's port is `envdPort`), with the token added for the agent
   * as the real node does; else nothing listens (connection refused).
   */
  portRequest(
    id: string,
    port: number,
    pathAndQuery: string,
    init: { method?: string; headers?: http.OutgoingHttpHeaders; maxHeaderSize?: number } = {},
  ): http.ClientRequest {
    const g = this.#guestOf(id);
    const headers: http.OutgoingHttpHeaders = { ...init.headers };
    const agentPort = port === 49983;
    if (agentPort) headers["x-access-token"] = this.sandboxes.get(id)?.token ?? "";
    return http.request({
      host: g?.address ?? "127.0.0.1",
      port: g ? (agentPort ? g.envdPort : port) : 1,
      method: init.method ?? "GET",
      path: pathAndQuery,
      headers,
      agent: false,
      ...(init.maxHeaderSize ? { maxHeaderSize: init.maxHeaderSize } : {}),
    });
  }
  /** Fake images: the template name in the body; another fake node installs it. */
  async exportTemplate(name: string): Promise<http.IncomingMessage> {
    this.#up();
    if (!this.templates.has(name)) throw new FirebreakError("TEMPLATE_NOT_FOUND", `no template ${name}`);
    const { Readable } = await import("node:stream");
    const r = Readable.from([Buffer.from(name)]) as unknown as http.IncomingMessage;
    r.headers = { "x-firebreak-template-key": `k-${name}` };
    return r;
  }
  async importTemplate(name: string, image: http.IncomingMessage) {
    this.#up();
    for await (const _ of image) {
      // drain
    }
    const installed = !this.templates.has(name);
    this.templates.add(name);
    return { key: `k-${name}`, installed };
  }
  async setPool(template: string, size: number, shape = { vcpus: 1, memoryMib: 256 }): Promise<void> {
    this.#up();
    this.warm.set(template, {
      ...(this.warm.get(template) ?? {}),
      [`${shape.vcpus}x${shape.memoryMib}`]: size,
    });
  }
  async drain(draining: boolean): Promise<void> {
    this.#up();
    this.draining = draining;
  }
  async listTemplates(): Promise<TemplateInfo[]> {
    return [...this.templates].map((name) => ({
      name,
      key: `k-${name}`,
      builtAt: new Date(0).toISOString(),
      imageBytes: 1,
      packages: [],
    }));
  }
  async hasTemplate(name: string) {
    return this.templates.has(name);
  }
  async buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: { step: string; index: number; total: number; detail?: string }) => void,
  ) {
    const name = "name" in source ? source.name : String((source.spec as { name?: unknown }).name);
    onProgress({ step: "resolve inputs", index: 1, total: 1 });
    if (this.failNextBuild) {
      const e = this.failNextBuild;
      this.failNextBuild = undefined;
      throw e;
    }
    // A chatty run step: its output lines come as progress, as fast as it prints them.
    for (let i = 0; i < this.buildRunLines; i++) {
      onProgress({ step: "run", index: 1, total: 1, detail: `line ${i} ${"x".repeat(1000)}` });
    }
    this.templates.add(name);
    return (await this.listTemplates()).find((t) => t.name === name)!;
  }
  async deleteTemplate(name: string) {
    return this.templates.delete(name);
  }
  async close() {
    this.sandboxes.clear();
  }
}
