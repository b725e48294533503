// Test support: a NodeClient without VMs, for in-process API tests.

import { randomBytes } from "node:crypto";
import http from "node:http";
import type { Socket } from "node:net";
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
  validateShape,
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

/** What the fake keeps of a sandbox (tests may set entries with the first three only). */
export interface FakeSandbox {
  state: "running" | "paused" | "gone";
  token: string;
  born: number;
  template?: string;
  vcpus?: number;
  memoryMib?: number;
  envVars?: Record<string, string>;
  /** CPU its cgroup had at hand-over (the platform's). */
  cpuBefore?: number;
  /** Paused with its memory (false: filesystem only, the resume is cold). */
  pausedMemory?: boolean;
}

/** A policy as it crosses the node's wire (JSON: undefined members are absent). */
function wire(p: NormalizedPolicy): NormalizedPolicy {
  return JSON.parse(JSON.stringify(p)) as NormalizedPolicy;
}

/** The shape a fake template gets when a create names none (the base template's). */
const DEFAULT_SHAPE = { vcpus: 1, memoryMib: 256 };

/**
 * A NodeClient without VMs. Its observable behaviour is the real node's (the
 * NodeClient contract, node-client.contract.ts, runs against both): the same
 * error codes, fork children that inherit the parent's template, shape, env
 * and enforced policy, pool VMs that count as committed capacity.
 */
export class FakeNode implements NodeClient {
  readonly id: string;
  readonly sandboxes = new Map<string, FakeSandbox>();
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
  /** Pool targets set by setPool (template -> shape key -> size): a claim refills up to it, as the node does. */
  readonly #poolTargets = new Map<string, Record<string, number>>();
  /** Set by tests: the node does not answer (every call fails NODE_UNAVAILABLE). */
  down = false;
  /** Named snapshots (snapshotOf): snapshot id -> the node sandbox it was taken of. */
  readonly snapshots = new Map<string, { of: string; template: string }>();
  /** The snapshot each sandbox started from (create fromSnapshot). */
  readonly startedFrom = new Map<string, string>();
  #snap = 0;
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
    // Pool VMs hold capacity too (the real node counts them as committed).
    const pooled = [...this.warm.values()].flatMap((w) =>
      Object.entries(w).flatMap(([k, n]) => {
        const [vcpus, memoryMib] = k.split("x").map(Number) as [number, number];
        return Array.from({ length: n }, () => ({ vcpus, memoryMib }));
      }),
    );
    const committed = [...live, ...pooled];
    return {
      nodeId: this.id,
      accelerator: "tcg",
      acceleratorReason: "fake node",
      vcpus: this.hostCapacity.vcpus,
      memoryMib: this.hostCapacity.memoryMib,
      committedVcpus: committed.reduce((n, s) => n + (s.vcpus ?? DEFAULT_SHAPE.vcpus), 0),
      committedMemoryMib: committed.reduce((n, s) => n + (s.memoryMib ?? DEFAULT_SHAPE.memoryMib), 0),
      freeMemoryMib:
        this.hostCapacity.memoryMib -
        committed.reduce((n, s) => n + (s.memoryMib ?? DEFAULT_SHAPE.memoryMib), 0),
      sandboxes: live.length,
      draining: this.draining,
      version: "fake",
      templates: [...this.templates].map((name) => ({
        name,
        key: `k-${name}`,
        image: true,
        snapshot: true,
        snapshotShapes: [`${DEFAULT_SHAPE.vcpus}x${DEFAULT_SHAPE.memoryMib}`],
        warm: { ...(this.warm.get(name) ?? {}) },
        recentP50Ms: {},
      })),
    };
  }
  /** The policy as the node daemon takes it: who made it is the caller's flag, never the JSON's. */
  static #policyOf(network: NodeCreateRequest["network"]): NormalizedPolicy {
    if (!network) return normalizePolicy({});
    const p = network.policy as unknown;
    // SECURITY: as the daemon's parsePolicy: grantedBy comes from the authenticated admin flag.
    return normalizePolicy(
      p && typeof p === "object" && !Array.isArray(p)
        ? { ...(p as object), grantedBy: network.admin ? "admin" : "tenant" }
        : p,
    );
  }

  async create(
    req: NodeCreateRequest | { template: string; envVars?: Record<string, string> },
  ): Promise<NodeSandboxInfo> {
    this.#up();
    if (this.draining) throw new FirebreakError("CAPACITY_EXHAUSTED", `node ${this.id} is draining`);
    const network = "network" in req ? req.network : undefined;
    this.lastEnv = req.envVars ?? {};
    // The daemon's order: template, shape, then the policy and its service bindings.
    if (!this.templates.has(req.template)) throw new FirebreakError("TEMPLATE_NOT_FOUND", "no such template");
    const shape = validateShape(
      "vcpus" in req ? { vcpus: req.vcpus, memoryMib: req.memoryMib } : DEFAULT_SHAPE,
    );
    const policy = FakeNode.#policyOf(network);
    for (const name of policy.services) (await this.#services()).resolveBinding(name, network?.tenant);
    const fromSnapshot = "fromSnapshot" in req ? req.fromSnapshot : undefined;
    if (fromSnapshot !== undefined && !this.snapshots.has(fromSnapshot)) {
      throw new FirebreakError("SANDBOX_NOT_FOUND", `no snapshot ${fromSnapshot} on node ${this.id}`);
    }
    await new Promise((r) => setTimeout(r, this.createDelayMs));
    if (this.failNextCreate) {
      const e = this.failNextCreate;
      this.failNextCreate = undefined;
      throw e;
    }
    const started = this.#start(req.template, shape, req.envVars ?? {}, policy, network?.tenant ?? "");
    let out: NodeSandboxInfo = started;
    if (fromSnapshot !== undefined) {
      this.startedFrom.set(started.id, fromSnapshot);
    } else {
      const key = `${shape.vcpus}x${shape.memoryMib}`;
      const warm = this.warm.get(req.template);
      if (warm && (warm[key] ?? 0) > 0) {
        warm[key]!--;
        // The node refills its pool to the target after a claim.
        const target = this.#poolTargets.get(req.template)?.[key] ?? 0;
        if (warm[key]! < target) warm[key] = target;
        out = { ...started, path: "warm", phases: { claim: 1 } };
      }
      if (warm)
        this.nodeMetrics.poolClaims.inc({
          template: req.template,
          result: out.path === "warm" ? "hit" : "miss",
        });
    }
    // The CPU its VM used before the hand-over is the platform's, reported as overhead.
    this.sandboxes.get(started.id)!.cpuBefore = this.startCpuNanos;
    const handover = (await this.usageSample(started.id))!;
    if (this.startCpuNanos > 0) {
      this.overheadLedger.add({
        kind: out.path === "warm" ? "warm_pool" : "restore",
        template: req.template,
        cpuSeconds: this.startCpuNanos / 1e9,
        wallSeconds: 1,
        memoryMib: shape.memoryMib,
        nodeSandboxId: started.id,
        ...("platformId" in req && req.platformId ? { platformId: req.platformId } : {}),
      });
    }
    return { ...out, handover };
  }

  #start(
    template: string,
    shape: { vcpus: number; memoryMib: number },
    envVars: Record<string, string>,
    policy: NormalizedPolicy,
    tenant: string,
  ): NodeSandboxInfo {
    const id = `fake${++this.#n}`;
    const token = randomBytes(32).toString("hex"); // as the node: 64 hex digits
    this.sandboxes.set(id, { state: "running", token, born: Date.now(), template, ...shape, envVars });
    this.policies.set(id, { policy, tenant });
    return {
      id,
      accessToken: token,
      path: "snapshot",
      totalMs: 1,
      phases: { restore: 1 },
      policy: wire(policy),
    };
  }

  /** The sandbox, or SANDBOX_NOT_FOUND (as the node answers for an id it does not hold). */
  #get(id: string): FakeSandbox {
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state === "gone")
      throw new FirebreakError("SANDBOX_NOT_FOUND", `no sandbox ${id} on this node`);
    return sb;
  }

  /** The environment a sandbox's processes see (what the real node's guest would print). */
  envOf(id: string): Record<string, string> | undefined {
    return this.sandboxes.get(id)?.envVars;
  }

  async kill(id: string): Promise<UsageSample | undefined> {
    this.#up();
    const s = await this.usageSample(id);
    this.sandboxes.delete(id);
    this.policies.delete(id);
    this.#closeTunnels(id);
    return s;
  }
  async pause(id: string, opts: { memory?: boolean } = {}): Promise<UsageSample | undefined> {
    this.#up();
    const sb = this.#get(id);
    if (sb.state !== "running")
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${sb.state}`);
    const s = await this.usageSample(id);
    sb.state = "paused";
    sb.pausedMemory = opts.memory !== false;
    this.#closeTunnels(id);
    return s;
  }
  closeTunnels(id: string): void {
    this.#closeTunnels(id);
  }
  async snapshotOf(id: string): Promise<{ snapshotId: string }> {
    this.#up();
    const sb = this.sandboxes.get(id);
    if (sb?.state !== "running") throw new FirebreakError("SANDBOX_STATE_INVALID", "not running");
    const snapshotId = `fsnap${++this.#snap}`;
    this.snapshots.set(snapshotId, { of: id, template: sb.template ?? "base" });
    return { snapshotId };
  }
  async deleteSnapshot(snapshotId: string): Promise<boolean> {
    this.#up();
    return this.snapshots.delete(snapshotId);
  }
  async resume(id: string) {
    this.#up();
    const sb = this.#get(id);
    if (sb.state !== "paused")
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${sb.state}`);
    sb.state = "running";
    return { path: sb.pausedMemory === false ? ("cold" as const) : ("snapshot" as const), totalMs: 1 };
  }
  async fork(id: string, count: number): Promise<NodeSandboxInfo[]> {
    this.#up();
    if (!Number.isInteger(count) || count < 1 || count > 16) {
      throw new FirebreakError(
        "SHAPE_INVALID",
        `fork count must be a whole number from 1 to 16, got ${count}`,
      );
    }
    const parent = this.#get(id);
    if (parent.state !== "running")
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${parent.state}`);
    const enforced = this.policies.get(id) ?? { policy: normalizePolicy({}), tenant: "" };
    const out: NodeSandboxInfo[] = [];
    for (let i = 0; i < count; i++) {
      // INVARIANT (as the real node): children inherit the parent's template,
      // shape, env, and the policy and tenant in force at the fork.
      this.lastEnv = parent.envVars ?? {};
      out.push(
        this.#start(
          parent.template ?? "base",
          {
            vcpus: parent.vcpus ?? DEFAULT_SHAPE.vcpus,
            memoryMib: parent.memoryMib ?? DEFAULT_SHAPE.memoryMib,
          },
          { ...(parent.envVars ?? {}) },
          enforced.policy,
          enforced.tenant,
        ),
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
    if (sb?.state !== "running") return undefined;
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
  async updatePolicy(
    id: string,
    input: EgressPolicy,
    _tenant?: string,
    admin = false,
  ): Promise<NormalizedPolicy> {
    this.#up();
    const sb = this.#get(id);
    const cur = this.policies.get(id);
    if (sb.state !== "running" || !cur)
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${sb.state}`);
    // The tenant stays the one the sandbox was made for (as the node does).
    const policy = FakeNode.#policyOf({ policy: input, tenant: cur.tenant, admin });
    for (const name of policy.services) (await this.#services()).resolveBinding(name, cur.tenant);
    cur.policy = policy;
    return wire(policy);
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
    const sb = this.sandboxes.get(id);
    return sb && sb.state !== "gone" ? sb.token : undefined;
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
    if (!this.sandboxes.has(id)) {
      // As RemoteNode: no token for an id the node does not hold, so every call fails.
      const gone = () => new FirebreakError("SANDBOX_NOT_FOUND", `node ${this.id} has no sandbox ${id}`);
      const agent = this.#emptyAgent();
      return { ...agent, fetch: async () => Promise.reject(gone()) };
    }
    const g = this.#guestOf(id);
    if (g)
      return envdClient(g.address, this.sandboxes.get(id)!.token, user, { ...g.options, port: g.envdPort });
    return this.#emptyAgent();
  }
  /** Connections open to each sandbox's ports (portRequest), as a node client's tunnels. */
  readonly #tunnels = new Map<string, Set<Socket>>();
  /** Kill and pause close every connection to the sandbox, as RemoteNode does. */
  #closeTunnels(id: string): void {
    const open = this.#tunnels.get(id);
    this.#tunnels.delete(id);
    for (const socket of open ?? []) socket.destroy();
  }
  /**
   * A request to a port inside the sandbox: to the stand-in guest when one is
   * set (the agent's port is `envdPort`), headers as given (the real node's
   * tunnel adds nothing, the agent's token included); else nothing listens
   * (connection refused).
   */
  portRequest(
    id: string,
    port: number,
    pathAndQuery: string,
    init: { method?: string; headers?: http.OutgoingHttpHeaders; maxHeaderSize?: number } = {},
  ): http.ClientRequest {
    const g = this.#guestOf(id);
    const agentPort = port === 49983;
    const req = http.request({
      host: g?.address ?? "127.0.0.1",
      port: g ? (agentPort ? g.envdPort : port) : 1,
      method: init.method ?? "GET",
      path: pathAndQuery,
      headers: { ...init.headers },
      agent: false,
      ...(init.maxHeaderSize ? { maxHeaderSize: init.maxHeaderSize } : {}),
    });
    req.once("socket", (socket) => {
      const set = this.#tunnels.get(id) ?? new Set<Socket>();
      this.#tunnels.set(id, set);
      set.add(socket);
      socket.once("close", () => {
        set.delete(socket);
        if (!set.size && this.#tunnels.get(id) === set) this.#tunnels.delete(id);
      });
    });
    return req;
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
  /**
   * As the node: resolves when the pool holds `size` ready VMs; a smaller
   * target stops refills but keeps what is ready (the node does not shrink).
   */
  async setPool(template: string, size: number, shape = DEFAULT_SHAPE): Promise<void> {
    this.#up();
    if (!this.templates.has(template))
      throw new FirebreakError("TEMPLATE_NOT_FOUND", `no built template named ${template}`);
    const key = `${shape.vcpus}x${shape.memoryMib}`;
    this.#poolTargets.set(template, { ...(this.#poolTargets.get(template) ?? {}), [key]: size });
    const ready = this.warm.get(template)?.[key] ?? 0;
    this.warm.set(template, { ...(this.warm.get(template) ?? {}), [key]: Math.max(ready, size) });
  }
  async drain(draining: boolean): Promise<void> {
    this.#up();
    this.draining = draining;
  }
  async listTemplates(): Promise<TemplateInfo[]> {
    this.#up();
    return [...this.templates].map((name) => ({
      name,
      key: `k-${name}`,
      builtAt: new Date(0).toISOString(),
      imageBytes: 1,
      packages: [],
      shape: { ...DEFAULT_SHAPE },
      aliases: [],
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
