// Test support: a NodeClient without VMs, for in-process API tests.
import { FirebreakError } from "@firebreak/node-agent";
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
  #n = 0;

  info() {
    return { accelerator: "tcg", acceleratorReason: "fake node" };
  }
  capacity() {
    return { vcpus: 2, memoryMib: 4096, sandboxes: this.sandboxes.size };
  }
  async create(req: { template: string; envVars?: Record<string, string> }): Promise<NodeSandboxInfo> {
    this.lastEnv = req.envVars ?? {};
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
    return { at: Date.now(), cpuNanos: ms * 1e5, memoryBytes: 100 * 2 ** 20, memoryPeakBytes: 100 * 2 ** 20 };
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
