// The in-process node: NodeClient over this process's NodeRuntime.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { buildCodeInterpreterBundle, CODE_INTERPRETER_COMPONENT } from "@firebreak/code-interpreter";
import { buildAgentBundle } from "@firebreak/guest-agent";
import {
  buildTemplate,
  deleteTemplate,
  type EgressPolicy,
  FirebreakError,
  getTemplate,
  listTemplates,
  type NodeConfig,
  NodeRuntime,
  type NormalizedPolicy,
  type PrivateService,
  paths,
  readTemplateSpec,
  resolveSpecFile,
  type Sandbox,
  shapeFor,
} from "@firebreak/node-agent";
import { ENVD_PORT } from "@firebreak/protocol";
import type {
  EnvdAccess,
  EnvdEndpoint,
  NodeCapacity,
  NodeClient,
  NodeSandboxInfo,
  NodeSandboxStatus,
  TemplateBuildProgress,
  TemplateInfo,
  TrafficBytes,
  UsageSample,
} from "./node-client.ts";

export class LocalNode implements NodeClient {
  readonly id = "local";
  readonly runtime: NodeRuntime;
  readonly config: NodeConfig;
  /** Every sandbox this node handed out, kept after the runtime forgets it (to read why it ended). */
  readonly #known = new Map<string, Sandbox>();

  private constructor(runtime: NodeRuntime) {
    this.runtime = runtime;
    this.config = runtime.config;
  }

  /** Opens the runtime (reconciles dead owners' leftovers, adopts paused sandboxes). */
  static async open(config: NodeConfig, log: (line: string) => void): Promise<LocalNode> {
    const node = new LocalNode(await NodeRuntime.open(config, { log }));
    for (const sb of node.runtime.list()) node.#known.set(sb.id, sb);
    return node;
  }

  /** Keeps `size` VMs of a template restored ahead of time (snapshot made if missing). */
  async warm(templateName: string, size: number): Promise<void> {
    const template = await getTemplate(this.config, templateName);
    if (!template) throw new FirebreakError("TEMPLATE_NOT_FOUND", `no built template named ${templateName}`);
    await this.runtime.prepareSnapshot(template);
    await this.runtime.fillPool(template, size);
  }

  info() {
    return { accelerator: this.runtime.accel.accel, acceleratorReason: this.runtime.accel.reason };
  }

  capacity(): NodeCapacity {
    return {
      vcpus: os.availableParallelism(),
      memoryMib: Math.floor(os.totalmem() / 2 ** 20),
      sandboxes: this.runtime.list().length,
    };
  }

  #sandbox(id: string): Sandbox {
    return this.runtime.get(id);
  }

  async create(req: {
    template: string;
    vcpus: number;
    memoryMib: number;
    envVars: Record<string, string>;
    network?: { policy: EgressPolicy; tenant: string };
  }): Promise<NodeSandboxInfo> {
    const template = await getTemplate(this.config, req.template);
    if (!template) {
      throw new FirebreakError(
        "TEMPLATE_NOT_FOUND",
        `no built template named ${req.template}; build it first (POST /v1/templates {"name": "${req.template}"})`,
      );
    }
    const sb = await this.runtime.create({
      template,
      shape: { vcpus: req.vcpus, memoryMib: req.memoryMib },
      envVars: req.envVars,
      ...(req.network ? { network: req.network } : {}),
    });
    this.#known.set(sb.id, sb);
    return info(sb);
  }

  async usageSample(id: string): Promise<UsageSample | undefined> {
    const sb = this.#known.get(id);
    const cg = sb?.cgroup;
    if (!cg) return undefined;
    const u = await cg.usage();
    if (!u.cpuNanos && !u.memoryBytes) return undefined; // the cgroup is already gone
    const traffic = await this.#traffic(id);
    return { at: Date.now(), ...u, ...(traffic ? { traffic } : {}) };
  }

  async #traffic(id: string): Promise<TrafficBytes | undefined> {
    try {
      const t = await this.runtime.traffic(id);
      const both = (...cs: (keyof typeof t.tx)[]) => ({
        tx: cs.reduce((n, c) => n + t.tx[c].bytes, 0),
        rx: cs.reduce((n, c) => n + t.rx[c].bytes, 0),
      });
      return {
        internet: both("internet"),
        private: both("private", "service"),
        sandbox: both("sandbox"),
        ingress: both("ingress"),
      };
    } catch {
      return undefined; // no network (paused, gone)
    }
  }

  updatePolicy(id: string, policy: EgressPolicy): Promise<NormalizedPolicy> {
    return this.runtime.updatePolicy(id, policy);
  }

  async listServices(): Promise<PrivateService[]> {
    return this.runtime.egress.registry.list();
  }

  putService(s: PrivateService): Promise<PrivateService> {
    return this.runtime.egress.registry.put(s);
  }

  removeService(name: string): Promise<boolean> {
    return this.runtime.egress.registry.remove(name);
  }

  async kill(id: string, reason: string): Promise<UsageSample | undefined> {
    const sample = await this.usageSample(id).catch(() => undefined);
    await this.runtime.kill(id, reason);
    this.#known.delete(id);
    return sample;
  }

  async pause(id: string): Promise<UsageSample | undefined> {
    const sample = await this.usageSample(id).catch(() => undefined);
    await this.runtime.pause(id);
    return sample;
  }

  async resume(id: string): Promise<{ path: "snapshot"; totalMs: number }> {
    const t0 = performance.now();
    await this.runtime.resume(id);
    return { path: "snapshot", totalMs: Math.round((performance.now() - t0) * 10) / 10 };
  }

  async fork(id: string, count: number): Promise<NodeSandboxInfo[]> {
    const children = await this.runtime.fork(id, count);
    for (const c of children) this.#known.set(c.id, c);
    return children.map(info);
  }

  status(id: string): NodeSandboxStatus {
    const sb = this.#known.get(id);
    if (!sb) {
      try {
        const adopted = this.runtime.get(id);
        this.#known.set(id, adopted);
        return this.status(id);
      } catch {
        return { state: "gone", reason: "the node has no such sandbox", crashed: true };
      }
    }
    switch (sb.state) {
      case "running":
        return { state: "running" };
      case "paused":
        return { state: "paused" };
      case "crashed":
      case "failed":
      case "stopped":
        return { state: "gone", reason: sb.endReason ?? sb.state, crashed: sb.state !== "stopped" };
      default:
        return { state: "busy" };
    }
  }

  accessToken(id: string): string | undefined {
    return this.#known.get(id)?.accessToken;
  }

  envd(id: string, user?: string): EnvdAccess {
    return this.#sandbox(id).envd(user);
  }

  envdEndpoint(id: string): EnvdEndpoint {
    const sb = this.#sandbox(id);
    if (!sb.network) throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox is ${sb.state}`);
    return { host: sb.network.sandboxAddress, port: ENVD_PORT, accessToken: sb.accessToken };
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    return (await listTemplates(this.config)).map((t) => ({
      name: t.name,
      key: t.key,
      builtAt: t.manifest.builtAt,
      imageBytes: t.manifest.imageBytes,
      packages: t.manifest.spec.debian.packages,
    }));
  }

  async hasTemplate(name: string): Promise<boolean> {
    return (await getTemplate(this.config, name)) !== undefined;
  }

  async templateShape(name: string): Promise<{ vcpus: number; memoryMib: number } | undefined> {
    const t = await getTemplate(this.config, name);
    return t ? shapeFor(t) : undefined;
  }

  async buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: TemplateBuildProgress) => void,
  ): Promise<TemplateInfo> {
    let specFile: string;
    let tmp: string | undefined;
    if ("name" in source) {
      specFile = await resolveSpecFile(source.name);
    } else {
      // A spec sent over the API has no files beside it: files[].src cannot resolve.
      tmp = await fs.mkdtemp(path.join(os.tmpdir(), "fb-spec-"));
      specFile = path.join(tmp, "template.json");
      await fs.writeFile(specFile, JSON.stringify(source.spec));
    }
    try {
      const { spec, dir } = await readTemplateSpec(specFile);
      const bundleDir = path.join(paths.cacheDir(this.config), "agent");
      await buildAgentBundle(bundleDir);
      const components: Record<string, string> = {};
      if (spec.components?.includes(CODE_INTERPRETER_COMPONENT)) {
        const ci = path.join(paths.cacheDir(this.config), CODE_INTERPRETER_COMPONENT);
        components[CODE_INTERPRETER_COMPONENT] = (await buildCodeInterpreterBundle(ci)).dir;
      }
      const built = await buildTemplate(this.config, spec, dir, {
        onProgress,
        runtime: async () => this.runtime,
        agent: { bundleDir, nodeBinary: process.execPath },
        components,
      });
      onProgress({ step: "snapshot", index: 0, total: 0 });
      await this.runtime.prepareSnapshot(built);
      return {
        name: built.name,
        key: built.key,
        builtAt: built.manifest.builtAt,
        imageBytes: built.manifest.imageBytes,
        packages: built.manifest.spec.debian.packages,
      };
    } finally {
      if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    }
  }

  deleteTemplate(name: string): Promise<boolean> {
    return deleteTemplate(this.config, name);
  }

  async close(): Promise<void> {
    await this.runtime.pools.close();
    await Promise.all(
      [...this.#known.values()]
        .filter((sb) => sb.state !== "paused")
        .map((sb) => this.runtime.kill(sb.id, "control plane shutdown")),
    );
    // Pool VMs (never handed out) go with the runtime; paused sandboxes stay on disk.
    await this.runtime.close();
  }
}

function info(sb: Sandbox): NodeSandboxInfo {
  const t = sb.timings;
  return {
    id: sb.id,
    accessToken: sb.accessToken,
    path: t?.path ?? "cold",
    totalMs: t?.totalMs ?? 0,
    phases: t?.phases ?? {},
    ...(t?.fallback ? { fallback: t.fallback } : {}),
  };
}
