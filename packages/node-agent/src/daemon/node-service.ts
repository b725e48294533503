// What the node daemon does for a control plane, over this host's NodeRuntime:
// the typed actions of the node API (protocol/proto/node/v1/node.proto) in
// plain TypeScript. The RPC server (server.ts) only translates wire messages.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { buildCodeInterpreterBundle, CODE_INTERPRETER_COMPONENT } from "@firebreak/code-interpreter";
import { buildAgentBundle } from "@firebreak/guest-agent";
import { paths } from "../config.ts";
import {
  type EgressPolicy,
  type NormalizedPolicy,
  normalizePolicy,
  type PrivateService,
} from "../egress/index.ts";
import { FirebreakError } from "../errors.ts";
import { type BuildProgress, buildTemplate } from "../image/builder.ts";
import { readTemplateSpec } from "../image/template-spec.ts";
import { deleteTemplate, getTemplate, listTemplates, resolveSpecFile } from "../image/template-store.ts";
import { type NodeRuntime, type Sandbox, type Shape, shapeFor } from "../sandbox/node-runtime.ts";
import { snapshotKey } from "../sandbox/snapshot-store.ts";

export const NODE_VERSION = "0.2.0";

export interface CreateSpec {
  template: string;
  shape?: Partial<Shape>;
  envVars?: Record<string, string>;
  policy?: { policy: EgressPolicy; tenant: string; admin?: boolean };
  diskMib?: number;
  platformId?: string;
  /** A named snapshot to start from (then `template` is the snapshot's). */
  fromSnapshot?: string;
}

export interface StartedInfo {
  id: string;
  accessToken: string;
  path: "warm" | "snapshot" | "cold";
  totalMs: number;
  phases: Record<string, number>;
  fallback?: string;
  policy: NormalizedPolicy;
}

export type BilledTrafficClass = "internet" | "private" | "sandbox" | "ingress";

export interface Usage {
  atMs: number;
  cpuNanos: number;
  memoryBytes: number;
  memoryPeakBytes: number;
  traffic?: Record<BilledTrafficClass, { tx: number; rx: number }>;
}

export type SandboxStatus =
  | { id: string; state: "running" | "paused" | "busy" }
  | { id: string; state: "gone"; reason: string; crashed: boolean };

export interface TemplateInfo {
  name: string;
  key: string;
  builtAt: string;
  imageBytes: number;
  packages: string[];
  /** The shape a create gets when it names none. */
  shape: Shape;
  /** More names the template answers to. */
  aliases: string[];
}

export interface TemplateReport {
  name: string;
  key: string;
  image: boolean;
  snapshot: boolean;
  /** Shapes ("<vcpus>x<memoryMib>") with a snapshot for this node's kernel and accelerator. */
  snapshotShapes: string[];
  warm: Record<string, number>;
  recentP50Ms: Record<string, number>;
}

export interface NodeReport {
  nodeId: string;
  accelerator: string;
  acceleratorReason: string;
  vcpus: number;
  memoryMib: number;
  committedVcpus: number;
  committedMemoryMib: number;
  freeMemoryMib: number;
  sandboxes: number;
  draining: boolean;
  templates: TemplateReport[];
  version: string;
}

/** Recent create latencies per template and start path (the scheduler's evidence). */
class Latencies {
  readonly #samples = new Map<string, number[]>();
  add(template: string, startPath: string, ms: number): void {
    const k = `${template}\0${startPath}`;
    const xs = this.#samples.get(k) ?? [];
    xs.push(ms);
    if (xs.length > 50) xs.shift();
    this.#samples.set(k, xs);
  }
  p50(template: string): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, xs] of this.#samples) {
      const [t, p] = k.split("\0") as [string, string];
      if (t !== template || !xs.length) continue;
      const sorted = [...xs].sort((a, b) => a - b);
      out[p] = sorted[Math.floor((sorted.length - 1) / 2)]!;
    }
    return out;
  }
}

export class NodeService {
  readonly runtime: NodeRuntime;
  readonly nodeId: string;
  /** Every sandbox handed out, kept after the runtime forgets it (to say why it ended). */
  readonly #known = new Map<string, Sandbox>();
  readonly #latencies = new Latencies();
  /** Open tunnels to each sandbox's ports (server.ts), ended with the sandbox. */
  readonly #tunnels = new Map<string, Set<{ destroy(): void }>>();
  #draining = false;

  constructor(runtime: NodeRuntime, nodeId: string) {
    this.runtime = runtime;
    this.nodeId = nodeId;
    for (const sb of runtime.list()) this.#known.set(sb.id, sb);
  }

  get draining(): boolean {
    return this.#draining;
  }

  #sandbox(id: string): Sandbox {
    return this.runtime.get(id);
  }

  async create(spec: CreateSpec): Promise<StartedInfo> {
    if (this.#draining) {
      throw new FirebreakError(
        "CAPACITY_EXHAUSTED",
        `node ${this.nodeId} is draining and takes no new sandboxes`,
      );
    }
    if (spec.fromSnapshot !== undefined) {
      const sb = await this.runtime.create({
        template: { name: spec.template, imagePath: "", env: {}, user: "user" },
        fromSnapshot: spec.fromSnapshot,
        ...(spec.shape ? { shape: spec.shape } : {}),
        ...(spec.envVars ? { envVars: spec.envVars } : {}),
        ...(spec.diskMib !== undefined ? { diskMib: spec.diskMib } : {}),
        ...(spec.policy ? { network: { policy: spec.policy.policy, tenant: spec.policy.tenant } } : {}),
      });
      this.#known.set(sb.id, sb);
      return this.#info(sb);
    }
    const template = await getTemplate(this.runtime.config, spec.template);
    if (!template) {
      throw new FirebreakError(
        "TEMPLATE_NOT_FOUND",
        `no built template named ${spec.template} on node ${this.nodeId}; build it first (POST /v1/templates {"name": "${spec.template}"})`,
      );
    }
    const sb = await this.runtime.create({
      template,
      ...(spec.shape ? { shape: spec.shape } : {}),
      ...(spec.envVars ? { envVars: spec.envVars } : {}),
      ...(spec.diskMib !== undefined ? { diskMib: spec.diskMib } : {}),
      ...(spec.policy ? { network: { policy: spec.policy.policy, tenant: spec.policy.tenant } } : {}),
    });
    this.#known.set(sb.id, sb);
    const info = this.#info(sb);
    this.#latencies.add(spec.template, info.path, info.totalMs);
    return info;
  }

  #info(sb: Sandbox): StartedInfo {
    const t = sb.timings;
    return {
      id: sb.id,
      accessToken: sb.accessToken,
      path: t?.path ?? "cold",
      totalMs: t?.totalMs ?? 0,
      phases: t?.phases ?? {},
      ...(t?.fallback ? { fallback: t.fallback } : {}),
      policy: this.runtime.egress.policyOf(sb.id) ?? normalizePolicy({}),
    };
  }

  async usage(id: string): Promise<Usage | undefined> {
    const sb = this.#known.get(id);
    const cg = sb?.cgroup;
    if (!cg) return undefined;
    const u = await cg.usage();
    if (!u.cpuNanos && !u.memoryBytes) return undefined; // the cgroup is already gone
    const traffic = await this.#traffic(id);
    return { atMs: Date.now(), ...u, ...(traffic ? { traffic } : {}) };
  }

  async #traffic(id: string): Promise<Usage["traffic"]> {
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
    const sb = this.#sandbox(id);
    // A paused (or starting, stopping) sandbox has no network to load a policy
    // into: say so with the sandbox's state, not the egress layer's "unknown".
    if (sb.state !== "running")
      throw new FirebreakError(
        "SANDBOX_STATE_INVALID",
        `sandbox ${id} is ${sb.state}; its policy changes only while it runs`,
      );
    return this.runtime.updatePolicy(id, policy);
  }

  listServices(): PrivateService[] {
    return this.runtime.egress.registry.list();
  }

  putService(s: PrivateService): Promise<PrivateService> {
    return this.runtime.egress.registry.put(s);
  }

  removeService(name: string): Promise<boolean> {
    return this.runtime.egress.registry.remove(name);
  }

  async kill(id: string, reason: string): Promise<Usage | undefined> {
    const last = await this.usage(id).catch(() => undefined);
    try {
      await this.runtime.kill(id, reason);
    } finally {
      this.#endTunnels(id);
    }
    this.#known.delete(id);
    return last;
  }

  async pause(id: string): Promise<Usage | undefined> {
    const last = await this.usage(id).catch(() => undefined);
    try {
      await this.runtime.pause(id);
    } finally {
      this.#endTunnels(id);
    }
    return last;
  }

  /**
   * Registers an open tunnel to a port of sandbox `id`; it is destroyed when
   * the sandbox is killed or paused. Returns the function that forgets it.
   */
  trackTunnel(id: string, tunnel: { destroy(): void }): () => void {
    const set = this.#tunnels.get(id) ?? new Set();
    this.#tunnels.set(id, set);
    set.add(tunnel);
    return () => {
      set.delete(tunnel);
      if (set.size === 0 && this.#tunnels.get(id) === set) this.#tunnels.delete(id);
    };
  }

  // INVARIANT: no tunnel outlives its sandbox. A guest that is gone sends no
  // FIN and no RST (its network namespace is deleted), so a tunnel whose
  // control plane side was half-closed would otherwise wait on it until TCP
  // gives up (minutes), holding sockets and the daemon's close().
  #endTunnels(id: string): void {
    const set = this.#tunnels.get(id);
    this.#tunnels.delete(id);
    for (const t of set ?? []) t.destroy();
  }

  async resume(id: string): Promise<{ path: "snapshot"; totalMs: number }> {
    const t0 = performance.now();
    await this.runtime.resume(id);
    return { path: "snapshot", totalMs: Math.round((performance.now() - t0) * 10) / 10 };
  }

  snapshot(id: string): Promise<{ snapshotId: string }> {
    return this.runtime.snapshotOf(id);
  }

  deleteSnapshot(snapshotId: string): Promise<void> {
    return this.runtime.deleteSnapshot(snapshotId);
  }

  async fork(id: string, count: number): Promise<StartedInfo[]> {
    const children = await this.runtime.fork(id, count);
    for (const c of children) this.#known.set(c.id, c);
    return children.map((c) => this.#info(c));
  }

  status(id: string): SandboxStatus {
    let sb = this.#known.get(id);
    if (!sb) {
      try {
        sb = this.runtime.get(id);
        this.#known.set(id, sb);
      } catch {
        return { id, state: "gone", reason: "the node has no such sandbox", crashed: true };
      }
    }
    switch (sb.state) {
      case "running":
        return { id, state: "running" };
      case "paused":
        return { id, state: "paused" };
      case "crashed":
      case "failed":
      case "stopped":
        return { id, state: "gone", reason: sb.endReason ?? sb.state, crashed: sb.state !== "stopped" };
      default:
        return { id, state: "busy" };
    }
  }

  /** Every sandbox the node holds (running, paused, starting), for reconciliation. */
  listSandboxes(): SandboxStatus[] {
    return this.runtime.list().map((sb) => this.status(sb.id));
  }

  /** The guest agent's address and token, while the sandbox has a network. */
  endpoint(id: string): { host: string; accessToken: string } {
    const sb = this.#sandbox(id);
    if (!sb.network || (sb.state !== "running" && sb.state !== "starting")) {
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${sb.state}`);
    }
    return { host: sb.network.sandboxAddress, accessToken: sb.accessToken };
  }

  async listTemplates(): Promise<TemplateInfo[]> {
    return (await listTemplates(this.runtime.config)).map((t) => ({
      name: t.name,
      key: t.key,
      builtAt: t.manifest.builtAt,
      imageBytes: t.manifest.imageBytes,
      packages: t.manifest.spec.debian.packages,
      shape: shapeFor(t),
      aliases: t.manifest.spec.aliases ?? [],
    }));
  }

  async buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: BuildProgress) => void,
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
      const bundleDir = path.join(paths.cacheDir(this.runtime.config), "agent");
      await buildAgentBundle(bundleDir);
      // Firebreak components the spec names, built from this checkout.
      const components: Record<string, string> = {};
      if (spec.components?.includes(CODE_INTERPRETER_COMPONENT)) {
        const ci = path.join(paths.cacheDir(this.runtime.config), CODE_INTERPRETER_COMPONENT);
        components[CODE_INTERPRETER_COMPONENT] = (await buildCodeInterpreterBundle(ci)).dir;
      }
      const built = await buildTemplate(this.runtime.config, spec, dir, {
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
        shape: shapeFor(built),
        aliases: built.manifest.spec.aliases ?? [],
      };
    } finally {
      if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    }
  }

  deleteTemplate(name: string): Promise<boolean> {
    return deleteTemplate(this.runtime.config, name);
  }

  /** Keeps `size` VMs of a template restored ahead of time (its snapshot made first if missing). */
  async setPool(templateName: string, size: number, shape: Partial<Shape> = {}): Promise<void> {
    const template = await getTemplate(this.runtime.config, templateName);
    if (!template) throw new FirebreakError("TEMPLATE_NOT_FOUND", `no built template named ${templateName}`);
    await this.runtime.prepareSnapshot(template, shape);
    await this.runtime.fillPool(template, size, shape);
  }

  readonly #preparing = new Set<string>();

  /** Prepares a template's snapshot for the default shape in the background (after an import); one at a time per template. */
  prepareSnapshotSoon(name: string): void {
    if (this.#preparing.has(name)) return;
    this.#preparing.add(name);
    setImmediate(() => {
      void (async () => {
        const template = await getTemplate(this.runtime.config, name);
        if (template) await this.runtime.prepareSnapshot(template);
      })()
        .catch(() => {
          // the next create boots cold and the report says there is no snapshot
        })
        .finally(() => this.#preparing.delete(name));
    });
  }

  drain(draining: boolean): void {
    this.#draining = draining;
  }

  async report(): Promise<NodeReport> {
    const live = this.runtime.list().filter((s) => s.state !== "paused");
    const pools = this.runtime.pools.status();
    const committed = [...live, ...this.runtime.pools.members()];
    const templates: TemplateReport[] = [];
    const kernel = `${this.runtime.kernel.package} ${this.runtime.kernel.version}`;
    const manifests = (await this.runtime.snapshots.manifests()).filter(
      (m) => m.kernel === kernel && m.accel === this.runtime.accel.accel,
    );
    for (const t of await listTemplates(this.runtime.config)) {
      const found = await this.runtime.snapshots.find(
        snapshotKey(t.key, shapeFor(t), this.runtime.kernel, this.runtime.accel.accel),
      );
      const warm: Record<string, number> = {};
      for (const p of pools.filter((p) => p.templateKey === t.key)) {
        warm[`${p.shape.vcpus}x${p.shape.memoryMib}`] = p.ready;
      }
      templates.push({
        name: t.name,
        key: t.key,
        image: true,
        snapshot: found.snapshot !== undefined,
        snapshotShapes: manifests
          .filter((m) => m.templateKey === t.key)
          .map((m) => `${m.shape.vcpus}x${m.shape.memoryMib}`),
        warm,
        recentP50Ms: this.#latencies.p50(t.name),
      });
    }
    return {
      nodeId: this.nodeId,
      accelerator: this.runtime.accel.accel,
      acceleratorReason: this.runtime.accel.reason,
      vcpus: os.availableParallelism(),
      memoryMib: Math.floor(os.totalmem() / 2 ** 20),
      committedVcpus: committed.reduce((n, s) => n + s.shape.vcpus, 0),
      committedMemoryMib: committed.reduce((n, s) => n + s.shape.memoryMib, 0),
      freeMemoryMib: Math.floor(os.freemem() / 2 ** 20),
      sandboxes: live.length,
      draining: this.#draining,
      templates,
      version: NODE_VERSION,
    };
  }

  /** Kills every running sandbox (pool VMs too); paused ones stay on disk. */
  async close(): Promise<void> {
    await this.runtime.close();
  }
}
