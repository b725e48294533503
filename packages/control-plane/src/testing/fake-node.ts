// Test support: a NodeClient without VMs, for in-process API tests.
import {
  type EgressPolicy,
  FirebreakError,
  type NormalizedPolicy,
  normalizePolicy,
  type PrivateService,
  ServiceRegistry,
} from "@firebreak/node-agent";
import type {
  EnvdAccess,
  EnvdEndpoint,
  NodeClient,
  NodeSandboxInfo,
  NodeSandboxStatus,
  TemplateInfo,
  UsageSample,
} from "../node/node-client.ts";

export class FakeNode implements NodeClient {
  readonly id = "fake";
  readonly sandboxes = new Map<
    string,
    { state: "running" | "paused" | "gone"; token: string; born: number }
  >();
  templates = new Set(["base"]);
  createDelayMs = 0;
  failNextCreate: FirebreakError | undefined;
  /** Env of the last create (the platform adds FIREBREAK_SANDBOX_TOKEN). */
  lastEnv: Record<string, string> = {};
  /** Egress policy and tenant of each sandbox (as the node would enforce them). */
  readonly policies = new Map<string, { policy: NormalizedPolicy; tenant: string }>();
  #registry: ServiceRegistry | undefined;
  #n = 0;

  info() {
    return { accelerator: "tcg", acceleratorReason: "fake node" };
  }
  capacity() {
    return { vcpus: 2, memoryMib: 4096, sandboxes: this.sandboxes.size };
  }
  async create(req: {
    template: string;
    envVars?: Record<string, string>;
    network?: { policy: EgressPolicy; tenant: string };
  }): Promise<NodeSandboxInfo> {
    this.lastEnv = req.envVars ?? {};
    const policy = normalizePolicy(req.network?.policy ?? {});
    for (const name of policy.services) (await this.#services()).resolveBinding(name, req.network?.tenant);
    if (!this.templates.has(req.template)) throw new FirebreakError("TEMPLATE_NOT_FOUND", "no such template");
    await new Promise((r) => setTimeout(r, this.createDelayMs));
    if (this.failNextCreate) {
      const e = this.failNextCreate;
      this.failNextCreate = undefined;
      throw e;
    }
    const id = `fake${++this.#n}`;
    const token = `tok${this.#n}`;
    this.sandboxes.set(id, { state: "running", token, born: Date.now() });
    this.policies.set(id, { policy, tenant: req.network?.tenant ?? "" });
    return { id, accessToken: token, path: "snapshot", totalMs: 1, phases: { restore: 1 } };
  }
  async kill(id: string): Promise<UsageSample | undefined> {
    const s = await this.usageSample(id);
    this.sandboxes.delete(id);
    return s;
  }
  async pause(id: string): Promise<UsageSample | undefined> {
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
  async fork(_id: string, count: number): Promise<NodeSandboxInfo[]> {
    const out: NodeSandboxInfo[] = [];
    for (let i = 0; i < count; i++) out.push(await this.create({ template: "base" }));
    return out;
  }
  status(id: string): NodeSandboxStatus {
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state === "gone") return { state: "gone", reason: "gone", crashed: true };
    return { state: sb.state };
  }
  async usageSample(id: string): Promise<UsageSample | undefined> {
    const sb = this.sandboxes.get(id);
    if (!sb || sb.state !== "running") return undefined;
    const ms = Date.now() - sb.born;
    // 10% of a CPU, 100 MiB.
    // 10% of a CPU, 100 MiB; 1 kB/s out and 2 kB/s in to the internet.
    return {
      at: Date.now(),
      cpuNanos: ms * 1e5,
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
  accessToken(id: string) {
    return this.sandboxes.get(id)?.token;
  }
  envd(): EnvdAccess {
    throw new FirebreakError("AGENT_ERROR", "the fake node has no guest agent");
  }
  envdEndpoint(): EnvdEndpoint {
    throw new FirebreakError("SANDBOX_STATE_INVALID", "the fake node has no guest agent");
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
  /** Shapes of templates that have their own default (others: 1 vCPU, 256 MiB). */
  readonly templateShapes = new Map<string, { vcpus: number; memoryMib: number }>();
  async templateShape(name: string) {
    if (!this.templates.has(name)) return undefined;
    return this.templateShapes.get(name) ?? { vcpus: 1, memoryMib: 256 };
  }
  async buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: { step: string; index: number; total: number }) => void,
  ) {
    const name = "name" in source ? source.name : "custom";
    onProgress({ step: "resolve inputs", index: 1, total: 1 });
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
