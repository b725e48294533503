// What the node daemon does for a control plane, over this host's NodeRuntime:
// the typed actions of the node API (protocol/proto/node/v1/node.proto) in
// plain TypeScript. The RPC server (server.ts) only translates wire messages.
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { buildCodeInterpreterBundle, CODE_INTERPRETER_COMPONENT } from "@firebreak/code-interpreter";
import { buildAgentBundle } from "@firebreak/guest-agent";
import { context } from "@opentelemetry/api";
import { paths } from "../config.ts";
import {
  type EgressPolicy,
  type NormalizedPolicy,
  normalizePolicy,
  type PlatformTarget,
  type PrivateService,
} from "../egress/index.ts";
import { FirebreakError } from "../errors.ts";
import { type BuildProgress, buildTemplate } from "../image/builder.ts";
import { readTemplateSpec } from "../image/template-spec.ts";
import { deleteTemplate, getTemplate, listTemplates, resolveSpecFile } from "../image/template-store.ts";
import { type NodeRuntime, type Sandbox, type Shape, shapeFor } from "../sandbox/node-runtime.ts";
import { LOG_SOURCES, type LogChunk, type LogSource, readConsole } from "../sandbox/sandbox-logs.ts";
import { snapshotKey } from "../sandbox/snapshot-store.ts";
import { type LogSink, type NodeLogger, toNodeLogger } from "../telemetry/log.ts";
import { NodeMetrics } from "../telemetry/node-metrics.ts";
import { ATTR, recentTraces, recordPhases, type SpanJson, tracer } from "../telemetry/tracing.ts";
import { type OverheadKind, OverheadLedger, type OverheadRecord } from "./overhead.ts";

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
  /** Where the platform grant leads (policy.platform), with the sandbox's credential. */
  platform?: PlatformTarget;
}

export interface StartedInfo {
  id: string;
  accessToken: string;
  path: "warm" | "snapshot" | "cold";
  totalMs: number;
  phases: Record<string, number>;
  fallback?: string;
  policy: NormalizedPolicy;
  /** Counters at hand-over: the tenant is charged only for what follows. */
  handover?: Usage;
}

export type BilledTrafficClass = "internet" | "private" | "sandbox" | "ingress";

export interface Usage {
  atMs: number;
  cpuNanos: number;
  memoryBytes: number;
  memoryPeakBytes: number;
  traffic?: Record<BilledTrafficClass, { tx: number; rx: number }>;
  /** Bytes the sandbox's own disk layer takes on the host. */
  diskUsedBytes?: number;
  /** The disk's size as the guest sees it. */
  diskTotalBytes?: number;
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

/** What a resume reports: its phases, and the counters when the sandbox runs again. */
export interface ResumedInfo {
  /** snapshot: its saved memory was restored; cold: booted from its disk (a filesystem-only pause). */
  path: "snapshot" | "cold";
  totalMs: number;
  phases: Record<string, number>;
  handover?: Usage;
}

const nodeTracer = tracer("firebreak-node");

/** Waits before trying a failed background snapshot preparation again. */
const PREPARE_RETRY_MS = [30_000, 120_000];

/** The overhead kind of the CPU a sandbox used before hand-over, by how it started. */
function handoverKind(path: "warm" | "snapshot" | "cold"): OverheadKind {
  return path === "warm" ? "warm_pool" : path === "snapshot" ? "restore" : "boot";
}

/** Bytes a file takes on disk, and a qcow2 image's virtual size (from its header), if it is one. */
async function diskFigures(file: string): Promise<{ used: number; total?: number } | undefined> {
  try {
    const st = await fs.stat(file);
    const fh = await fs.open(file, "r");
    try {
      const head = Buffer.alloc(32);
      const { bytesRead } = await fh.read(head, 0, 32, 0);
      // qcow2: magic "QFI\xfb", virtual size (u64 big-endian) at offset 24.
      const isQcow = bytesRead === 32 && head.readUInt32BE(0) === 0x514649fb;
      const size = isQcow ? Number(head.readBigUInt64BE(24)) : undefined;
      return { used: st.blocks * 512, ...(size !== undefined && size < 2 ** 50 ? { total: size } : {}) };
    } finally {
      await fh.close();
    }
  } catch {
    return undefined;
  }
}

export class NodeService {
  readonly runtime: NodeRuntime;
  readonly nodeId: string;
  /** Platform overhead waiting for a control plane (daemon/overhead.ts). */
  readonly overhead: OverheadLedger;
  readonly metrics = new NodeMetrics();
  readonly #log: NodeLogger;
  /** Every sandbox handed out, kept after the runtime forgets it (to say why it ended). */
  readonly #known = new Map<string, Sandbox>();
  readonly #latencies = new Latencies();
  /** Open tunnels to each sandbox's ports (server.ts), ended with the sandbox. */
  readonly #tunnels = new Map<string, Set<{ destroy(): void }>>();
  #draining = false;

  constructor(runtime: NodeRuntime, nodeId: string, opts: { log?: LogSink } = {}) {
    this.runtime = runtime;
    this.nodeId = nodeId;
    this.#log = toNodeLogger(opts.log).child({ nodeId });
    for (const sb of runtime.list()) this.#known.set(sb.id, sb);
    this.overhead = new OverheadLedger(nodeId);
    this.overhead.onRecord = (r) =>
      this.metrics.overheadCpu.inc({ template: r.template, kind: r.kind }, r.cpuSeconds);
    this.overhead.onDrop = (n) => this.metrics.overheadDropped.inc(n);
    // Platform VMs (pools, snapshots, builds) and failed starts: all their CPU is overhead.
    runtime.onOverhead = (e) => {
      this.#recordOverhead(e.kind, e.sandbox, e.cpuNanos, e.wallMs);
    };
    runtime.pools.observer = {
      claimed: (key, _shape, hit) =>
        this.metrics.poolClaims.inc({
          template: runtime.templateNames.get(key) ?? key,
          result: hit ? "hit" : "miss",
        }),
      filled: (key, _shape, ms) =>
        this.metrics.poolRefill.observe({ template: runtime.templateNames.get(key) ?? key }, ms / 1000),
    };
    this.metrics.frozen(() => runtime.list().filter((s) => s.frozen).length);
    this.metrics.pools(() =>
      runtime.pools.status().map((p) => ({
        template: runtime.templateNames.get(p.templateKey) ?? p.templateKey,
        shape: `${p.shape.vcpus}x${p.shape.memoryMib}`,
        ready: p.ready,
        filling: p.filling,
        target: p.target,
      })),
    );
  }

  #recordOverhead(kind: OverheadKind, sb: Sandbox, cpuNanos: number, wallMs: number): OverheadRecord {
    const r = this.overhead.add({
      kind,
      template: sb.template.name,
      cpuSeconds: cpuNanos / 1e9,
      wallSeconds: wallMs / 1000,
      memoryMib: sb.shape.memoryMib,
      nodeSandboxId: sb.id,
      ...(sb.platformId ? { platformId: sb.platformId } : {}),
    });
    this.#log.info(
      { sandboxId: sb.id, platformId: sb.platformId, kind, cpuSeconds: r.cpuSeconds, ms: Math.round(wallMs) },
      "platform overhead recorded",
    );
    return r;
  }

  /**
   * The sandbox is its tenant's from now: its counters now are what the
   * tenant is not charged for (recorded as overhead of `kind`).
   */
  async #handOver(sb: Sandbox, kind: OverheadKind, wallMs: number): Promise<Usage | undefined> {
    const u = await this.#sample(sb).catch(() => undefined);
    sb.handedOver = true;
    if (u) this.#recordOverhead(kind, sb, u.cpuNanos, wallMs);
    return u;
  }

  /** Spans for phases measured by the runtime, ending now, children of the active span. */
  #phaseSpans(phases: Record<string, number>, attributes: Record<string, string>): void {
    const total = Object.values(phases).reduce((a, b) => a + b, 0);
    recordPhases(nodeTracer, context.active(), performance.now() - total, phases, attributes);
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
    const network =
      spec.policy || spec.platform
        ? {
            ...(spec.policy ? { policy: spec.policy.policy, tenant: spec.policy.tenant } : {}),
            ...(spec.platform ? { platform: spec.platform } : {}),
          }
        : undefined;
    if (spec.fromSnapshot !== undefined) {
      const sb = await this.runtime.create({
        template: { name: spec.template, imagePath: "", env: {}, user: "user" },
        fromSnapshot: spec.fromSnapshot,
        ...(spec.shape ? { shape: spec.shape } : {}),
        ...(spec.envVars ? { envVars: spec.envVars } : {}),
        ...(spec.diskMib !== undefined ? { diskMib: spec.diskMib } : {}),
        ...(network ? { network } : {}),
      });
      if (spec.platformId) sb.platformId = spec.platformId;
      this.#known.set(sb.id, sb);
      // Charged from the hand-over, as any other start: the restore is overhead.
      const path = sb.timings?.path ?? "snapshot";
      const handover = await this.#handOver(sb, handoverKind(path), sb.timings?.totalMs ?? 0);
      this.#phaseSpans(sb.timings?.phases ?? {}, { [ATTR.nodeSandboxId]: sb.id, [ATTR.startPath]: path });
      return { ...this.#info(sb), ...(handover ? { handover } : {}) };
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
      ...(network ? { network } : {}),
    });
    if (spec.platformId) sb.platformId = spec.platformId;
    this.#known.set(sb.id, sb);
    const path = sb.timings?.path ?? "cold";
    // A warm VM's overhead covers its whole life in the pool; the others', their start.
    const handover = await this.#handOver(
      sb,
      handoverKind(path),
      path === "warm" ? Date.now() - sb.createdAt.getTime() : (sb.timings?.totalMs ?? 0),
    );
    this.runtime.followStartOutput(sb);
    const phases = sb.timings?.phases ?? {};
    this.#phaseSpans(phases, { [ATTR.nodeSandboxId]: sb.id, [ATTR.startPath]: path });
    for (const [phase, ms] of Object.entries(phases)) {
      this.metrics.startPhase.observe({ template: spec.template, path, phase }, ms / 1000);
    }
    const info = { ...this.#info(sb), ...(handover ? { handover } : {}) };
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
    return sb ? this.#sample(sb) : undefined;
  }

  async #sample(sb: Sandbox): Promise<Usage | undefined> {
    const cg = sb.cgroup;
    if (!cg) return undefined;
    const u = await cg.usage();
    if (!u.cpuNanos && !u.memoryBytes) return undefined; // the cgroup is already gone
    const traffic = await this.#traffic(sb.id);
    const disk = await diskFigures(path.join(sb.dir, "disk.qcow2"));
    return {
      atMs: Date.now(),
      ...u,
      ...(traffic ? { traffic } : {}),
      ...(disk ? { diskUsedBytes: disk.used } : {}),
      ...(disk?.total !== undefined ? { diskTotalBytes: disk.total } : {}),
    };
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

  updatePolicy(id: string, policy: EgressPolicy, platform?: PlatformTarget): Promise<NormalizedPolicy> {
    const sb = this.#sandbox(id);
    // A paused (or starting, stopping) sandbox has no network to load a policy
    // into: say so with the sandbox's state, not the egress layer's "unknown".
    if (sb.state !== "running")
      throw new FirebreakError(
        "SANDBOX_STATE_INVALID",
        `sandbox ${id} is ${sb.state}; its policy changes only while it runs`,
      );
    return this.runtime.updatePolicy(id, policy, platform);
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
    const sb = this.#known.get(id);
    const last = await this.usage(id).catch(() => undefined);
    try {
      await this.runtime.kill(id, reason);
    } finally {
      this.#endTunnels(id);
    }
    this.#known.delete(id);
    if (sb) this.#phaseSpans(sb.teardownPhases, { [ATTR.nodeSandboxId]: id });
    return last;
  }

  async pause(id: string, opts: { memory?: boolean } = {}): Promise<Usage | undefined> {
    const last = await this.usage(id).catch(() => undefined);
    try {
      await this.runtime.pause(id, opts);
    } finally {
      this.#endTunnels(id);
    }
    const sb = this.#known.get(id);
    if (sb) this.#phaseSpans(sb.lastPhases, { [ATTR.nodeSandboxId]: id });
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

  async resume(id: string): Promise<ResumedInfo> {
    const t0 = performance.now();
    const sb = await this.runtime.resume(id);
    const totalMs = Math.round((performance.now() - t0) * 10) / 10;
    const handover = await this.#handOver(sb, "resume", totalMs);
    this.#phaseSpans(sb.lastPhases, { [ATTR.nodeSandboxId]: id });
    const path = sb.timings?.path === "cold" || "boot" in sb.lastPhases ? "cold" : "snapshot";
    return { path, totalMs, phases: { ...sb.lastPhases }, ...(handover ? { handover } : {}) };
  }

  snapshot(id: string): Promise<{ snapshotId: string }> {
    return this.runtime.snapshotOf(id);
  }

  deleteSnapshot(snapshotId: string): Promise<void> {
    return this.runtime.deleteSnapshot(snapshotId);
  }

  async fork(id: string, count: number): Promise<StartedInfo[]> {
    const children = await this.runtime.fork(id, count);
    const parent = this.#known.get(id);
    if (parent) this.#phaseSpans(parent.lastPhases, { [ATTR.nodeSandboxId]: id });
    const out: StartedInfo[] = [];
    for (const c of children) {
      this.#known.set(c.id, c);
      const handover = await this.#handOver(c, "fork", c.timings?.totalMs ?? 0);
      out.push({ ...this.#info(c), ...(handover ? { handover } : {}) });
    }
    return out;
  }

  /** Tells the node the control plane's id of a sandbox it created (fork children). */
  setPlatformId(id: string, platformId: string): void {
    const sb = this.#known.get(id);
    if (sb) sb.platformId = platformId;
  }

  /** Overhead records waiting; drops what the caller acknowledges storing. */
  takeOverhead(ack: { epoch: string; seq: number } | undefined, limit?: number) {
    return { epoch: this.overhead.epoch, records: this.overhead.take(ack, limit) };
  }

  /** Spans of a trace this process recorded. */
  spans(traceId: string): SpanJson[] {
    return recentTraces().spans(traceId);
  }

  /**
   * A sandbox's console or start-command output from `offset`; with
   * `follow`, what is written next too, until the sandbox ends (or `signal`).
   * Ended sandboxes answer the tail the node kept.
   */
  async *logs(
    id: string,
    source: LogSource,
    offset: number,
    follow: boolean,
    signal?: AbortSignal,
  ): AsyncGenerator<LogChunk & { ended: boolean }> {
    if (!LOG_SOURCES.includes(source)) {
      throw new FirebreakError("SHAPE_INVALID", `log source must be one of ${LOG_SOURCES.join(", ")}`);
    }
    let at = offset;
    for (;;) {
      let sb: Sandbox | undefined;
      try {
        sb = this.runtime.get(id);
      } catch {
        sb = undefined;
      }
      if (!sb) {
        const kept = this.runtime.endedLogs.get(id);
        if (!kept) throw new FirebreakError("SANDBOX_NOT_FOUND", `node ${this.nodeId} has no logs of ${id}`);
        const part = kept[source];
        const from = Math.max(at, part.offset);
        const data = part.data.subarray(Math.max(0, from - part.offset));
        for (let i = 0; i < data.length || i === 0; i += 64 * 1024) {
          const chunk = data.subarray(i, i + 64 * 1024);
          yield {
            offset: from + i,
            data: Buffer.from(chunk),
            skipped: i === 0 ? Math.max(0, from - at) : 0,
            ended: i + 64 * 1024 >= data.length,
          };
          if (!data.length) break;
        }
        return;
      }
      const chunk = source === "console" ? await readConsole(sb.dir, at) : sb.startOutput.read(at);
      if (chunk.data.length || chunk.skipped) {
        yield { ...chunk, ended: false };
        at = chunk.offset + chunk.data.length;
        continue;
      }
      if (!follow || signal?.aborted) {
        yield { offset: at, data: Buffer.alloc(0), skipped: 0, ended: false };
        return;
      }
      if (source === "start") await sb.startOutput.wait(at, 1000);
      else await new Promise((r) => setTimeout(r, 250));
      if (signal?.aborted) return;
    }
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
  #closed = false;

  /**
   * Prepares a template's snapshot for the default shape in the background
   * (after an import); one at a time per template. A preparation that fails
   * (a cold boot on a loaded host) is tried again after PREPARE_RETRY_MS, up
   * to PREPARE_RETRY_MS.length more times: the control plane copies a
   * template once, so nothing else would ask again.
   */
  prepareSnapshotSoon(name: string, attempt = 0): void {
    if (this.#closed || (attempt === 0 && this.#preparing.has(name))) return;
    this.#preparing.add(name);
    const run = async () => {
      try {
        const template = await getTemplate(this.runtime.config, name);
        if (template && !this.#closed) await this.runtime.prepareSnapshot(template);
        this.#preparing.delete(name);
      } catch (e) {
        const retryMs = PREPARE_RETRY_MS[attempt];
        this.#log.warn(
          { template: name, attempt: attempt + 1, err: (e as Error).message, retryMs: retryMs ?? null },
          "snapshot preparation failed",
        );
        if (retryMs === undefined || this.#closed) {
          // The next create boots cold and the report says there is no snapshot.
          this.#preparing.delete(name);
          return;
        }
        setTimeout(() => this.prepareSnapshotSoon(name, attempt + 1), retryMs).unref();
      }
    };
    if (attempt === 0) setImmediate(() => void run());
    else void run();
  }

  drain(draining: boolean): void {
    this.#draining = draining;
  }

  /** The node's Prometheus metrics as prom-client JSON. */
  metricsJson() {
    return this.metrics.json();
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
    this.#closed = true;
    await this.runtime.close();
  }
}
