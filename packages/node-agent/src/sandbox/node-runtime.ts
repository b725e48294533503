// The node runtime: creates sandboxes (disk layer, network, cgroup, QEMU),
// supervises them, and tears every resource down however a sandbox ends.
//
// Create path (each phase timed and reported):
//   slot -> network namespace + tap + nftables -> qcow2 layer -> cgroup ->
//   QEMU spawn -> agent ready (control channel) -> init (token, env, clock,
//   entropy) -> template start command and ready check -> running
//
// One lifecycle: a sandbox's state changes only in #set, by a transition the
// table in state.ts allows, and each state holds exactly its resources (Held
// in sandbox.ts). Every step that acquires something registers its cleanup
// on the sandbox's stacks at once: `liveStack` (slot, network, egress,
// cgroup, VM) and `filesStack` (directory, fork-layer uses). Pause, kill,
// crash and every failure path undo them the same way, last in first out.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import {
  EgressManager,
  type EgressPolicy,
  type NormalizedPolicy,
  type PlatformTarget,
  type SandboxTraffic,
} from "../egress/index.ts";
import { FirebreakError } from "../errors.ts";
import { run } from "../host/exec.ts";
import { writeFileAtomic } from "../host/safe-fs.ts";
import { ensureInitramfs } from "../image/initramfs.ts";
import { ensureKernel, type KernelManifest } from "../image/kernel.ts";
import { SandboxCgroup } from "../jail/cgroup.ts";
import { ensureLauncher } from "../jail/launcher.ts";
import { createSandboxNetwork, destroySandboxNetwork } from "../network/index.ts";
import { type LogSink, type NodeLogger, toNodeLogger } from "../telemetry/log.ts";
import { type AccelProbe, probeAccelerator } from "../vmm/accel-probe.ts";
import { type QemuInstall, qemuInstall } from "../vmm/qemu-install.ts";
import { type DiskLayer, hostTscKhz, QemuVm, type VmMemory } from "../vmm/qemu-vm.ts";
import {
  ForkPointGroups,
  type ForkPointManifest,
  forkPointDir,
  isNamed,
  layersDir,
  readForkPoint,
  writeForkPointManifest,
} from "./fork-points.ts";
import { newAccessToken, newSandboxId } from "./ids.ts";
import {
  PAUSED_FILE,
  processStartTime,
  type ReconcileReport,
  reconcile,
  releaseUnusedLayers,
  removeOwner,
  writeRecord,
} from "./reconciler.ts";
import {
  type Held,
  type LiveResources,
  Sandbox,
  type SandboxAccount,
  SET_HELD,
  type Shape,
  type TemplateImage,
} from "./sandbox.ts";
import { consoleTail, EndedLogStore } from "./sandbox-logs.ts";
import { SlotRegistry } from "./slots.ts";
import {
  createMemoryFile,
  type LoadedSnapshot,
  type SnapshotManifest,
  SnapshotRestoreError,
  SnapshotStore,
  sha256File,
  snapshotKey,
} from "./snapshot-store.ts";
import { assertTransition, isFinal } from "./state.ts";
import { WarmPools } from "./warm-pool.ts";

export type {
  ExecOptions,
  Held,
  LiveResources,
  SandboxAccount,
  Shape,
  StartPath,
  StartTimings,
  TemplateImage,
} from "./sandbox.ts";
export { Sandbox };

export const DEFAULT_SHAPE: Shape = { vcpus: 1, memoryMib: 256 };

/** The shape of a start: what the caller named, else the template's default, else DEFAULT_SHAPE. */
export function shapeFor(template: TemplateImage, requested: Partial<Shape> = {}): Shape {
  const defined = Object.fromEntries(Object.entries(requested).filter(([, v]) => v !== undefined));
  return validateShape({ ...DEFAULT_SHAPE, ...template.shape, ...defined });
}

/** What a clone starts from: a template snapshot or a fork point. */
export interface CloneSource {
  /** Guest RAM, mapped private and copy-on-write by the clone (never written). */
  memoryPath: string;
  /** Device state, saved with x-ignore-shared. */
  statePath: string;
  /** Disk chain below the clone's own layer, base image first. */
  diskChain: DiskLayer[];
  /** Supplementary groups the clone's QEMU needs to open memoryPath (a fork point's). */
  groups: number[];
  /** Fork points the chain needs (the clone registers as a user of each). */
  layers: string[];
  /** Set for template snapshots: a restore QEMU rejects quarantines it (cold boot instead). */
  snapshot?: LoadedSnapshot;
}
export const SHAPE_LIMITS = { vcpus: { min: 1, max: 8 }, memoryMib: { min: 128, max: 16_384 } };

export interface CreateOptions {
  template: TemplateImage;
  shape?: Partial<Shape>;
  envVars?: Record<string, string>;
  /**
   * Boot the image itself read-write instead of a copy-on-write layer over it
   * (template builds only: run steps write into the image being built).
   */
  writableImage?: boolean;
  /** Time allowed from QEMU spawn to agent ready. @default 90_000 */
  bootTimeoutMs?: number;
  /** Skip warm pools and snapshots (benchmarks, the snapshot's own boot). */
  forceCold?: boolean;
  /**
   * Start from a named snapshot (snapshotOf) instead of the template: its
   * memory, processes and disk, a new identity, env = the snapshot's under
   * these envVars. `template` and `shape` are the snapshot's (a different
   * shape is SHAPE_INVALID).
   */
  fromSnapshot?: string;
  /**
   * Grow the sandbox's root disk to this size (MiB) after it starts: the disk
   * layer is resized through QMP and the guest grows its ext4 online. Smaller
   * than the image's own size is refused. @default the template's diskMib
   */
  diskMib?: number;
  /**
   * Egress policy (see egress/README.md) and the tenant whose private services
   * it may bind. @default deny all egress
   */
  network?: { policy?: EgressPolicy; tenant?: string; platform?: PlatformTarget };
}

/** Work whose CPU no tenant is charged for (reported to the runtime's onOverhead). */
export interface OverheadEvent {
  kind: "warm_pool" | "snapshot_prepare" | "template_build" | "failed_start";
  sandbox: Sandbox;
  cpuNanos: number;
  wallMs: number;
}

export const MAX_DISK_MIB = 262_144;

/** How long the guest agent has to acknowledge `init`. */
const INIT_TIMEOUT_MS = 60_000;

/** What a paused sandbox needs to come back, in its directory (root-only). */
interface PausedRecord {
  template: TemplateImage;
  shape: Shape;
  envVars: Record<string, string>;
  accessToken: string;
  layers: string[];
  /** The root disk chain, base image first (the top is the sandbox's own disk.qcow2). */
  disk?: DiskLayer[];
  createdAt: string;
  pausedAt: string;
  /** false: a filesystem-only pause (no paused-memory.bin; the resume cold-boots). Absent: true. */
  memory?: boolean;
}

/** A sandbox using at most this share of a core is idle (an idle TCG guest: about 1 %). */
const IDLE_CPU_SHARE = 0.03;

/** How long a filesystem-only pause waits for the guest's `sync` before stopping it anyway. */
const PAUSE_SYNC_TIMEOUT_MS = 30_000;

function cgroupLimits(shape: Shape) {
  return {
    vcpus: shape.vcpus,
    // Guest RAM plus the VMM's own overhead (TCG translation cache, device state).
    memoryBytes: (shape.memoryMib + 256) * 1024 * 1024,
    pids: 64 + shape.vcpus * 4,
  };
}

export interface RuntimeOptions {
  /** Structured log (pino-like), or a function that prints lines. */
  log?: LogSink;
}

/** The messages of every error inside a SuppressedError chain (stack disposal). */
function problemsOf(e: unknown): string[] {
  if (e instanceof SuppressedError) return [...problemsOf(e.error), ...problemsOf(e.suppressed)];
  return [(e as Error)?.message ?? String(e)];
}

export class NodeRuntime {
  readonly config: NodeConfig;
  readonly kernel: KernelManifest;
  readonly initramfs: string;
  readonly accel: AccelProbe;
  /** The QEMU the node runs (>= 10; vmm/qemu-install.ts). */
  readonly qemu: QemuInstall;
  /** The QEMU jailer (jail/launcher.ts). */
  readonly launcher: string;
  readonly slots: SlotRegistry;
  /** Host-wide groups of fork points (who may map which memory file). */
  readonly forkGroups: ForkPointGroups;
  readonly tscKhz = hostTscKhz();
  readonly snapshots: SnapshotStore;
  readonly pools: WarmPools;
  /**
   * Standby VMs per template and shape: slot, network, cgroup, disk layer and
   * a QEMU waiting for the snapshot's state, made ahead of time, so that a
   * snapshot-path create only loads ~100 KB of device state and says init.
   */
  readonly standbys: WarmPools;
  readonly #standbySource = new WeakMap<Sandbox, CloneSource>();
  /** Egress policies, the platform resolver, private services and traffic counters. */
  egress!: EgressManager;
  readonly #sandboxes = new Map<string, Sandbox>();
  readonly #log: NodeLogger;
  /** Called with platform work that no tenant is charged for (daemon/overhead.ts). */
  onOverhead: ((e: OverheadEvent) => void) | undefined;
  /** Log tails of sandboxes that ended (their files are gone). */
  readonly endedLogs = new EndedLogStore();
  /** Template names by image key (warm pool metrics). */
  readonly templateNames = new Map<string, string>();
  /**
   * Whether something holds a sandbox open (each daemon server: an open
   * tunnel to one of its ports); such a sandbox is never frozen (see
   * freezeIdleMs).
   */
  readonly busyChecks = new Set<(id: string) => boolean>();
  #freezer: NodeJS.Timeout | undefined;

  private constructor(
    config: NodeConfig,
    kernel: KernelManifest,
    initramfs: string,
    accel: AccelProbe,
    qemu: QemuInstall,
    launcher: string,
    log: NodeLogger,
  ) {
    this.config = config;
    this.qemu = qemu;
    this.launcher = launcher;
    this.kernel = kernel;
    this.initramfs = initramfs;
    this.accel = accel;
    this.slots = new SlotRegistry(paths.slotsDir(config));
    this.forkGroups = new ForkPointGroups(config);
    this.snapshots = new SnapshotStore(config);
    this.pools = new WarmPools((line) => log.warn({ component: "warm-pool" }, line));
    this.standbys = new WarmPools((line) => log.warn({ component: "standby" }, line), 256, "standby");
    this.#log = log;
  }

  /**
   * Prepares the node: root check, kernel, initramfs, accelerator probe, and a
   * reconcile pass that removes whatever dead owners left behind.
   */
  static async open(config: NodeConfig, opts: RuntimeOptions = {}): Promise<NodeRuntime> {
    const logger = toNodeLogger(opts.log);
    const log = (line: string) => logger.info({}, line);
    if (process.getuid?.() !== 0) {
      throw new FirebreakError(
        "NOT_ROOT",
        "Firebreak needs root to create network namespaces, taps, firewall rules and cgroups. Run it as root.",
      );
    }
    await fs.mkdir(paths.sandboxesDir(config), { recursive: true, mode: 0o755 });
    const qemu = await qemuInstall();
    const kernel = await ensureKernel(config, log);
    const initramfs = await ensureInitramfs(config, kernel);
    const accel = await probeAccelerator(config, kernel, initramfs, qemu);
    log(`accelerator: ${accel.accel} (${accel.reason})`);
    if (!Number.isInteger(config.vmUidBase) || config.vmUidBase < 1000 || config.vmUidBase > 4_000_000_000) {
      throw new FirebreakError(
        "INTERNAL",
        `FIREBREAK_VM_UID_BASE must be a whole number from 1000, got ${config.vmUidBase}`,
      );
    }
    const launcher = await ensureLauncher(config);
    const rt = new NodeRuntime(config, kernel, initramfs, accel, qemu, launcher, logger);
    rt.egress = await EgressManager.open({
      stateDir: config.stateDir,
      log: (line) => logger.info({ component: "egress" }, line),
    });
    const report = await rt.reconcile();
    if (report.removed.length) log(`reconciler removed leftovers: ${report.removed.join(", ")}`);
    await rt.#adoptForkPointGroups();
    const adopted = await rt.adoptPaused();
    if (adopted.length) log(`adopted paused sandboxes: ${adopted.join(", ")}`);
    if ((config.freezeIdleMs ?? 0) > 0) rt.#startFreezer(config.freezeIdleMs!);
    return rt;
  }

  /**
   * The uid (and gid) QEMU runs as for a slot.
   * SECURITY: one uid per sandbox, owning no file anywhere: sandbox
   * directories and everything in them are root's (the directory's group is
   * the VM's gid, mode 0710, only so QEMU can reach the socket a save makes),
   * QEMU gets its disks as descriptors, and every mount is read-only for it,
   * so an escaped QEMU cannot reach its neighbours' files nor leave any behind
   * for the next user of its uid.
   */
  vmUid(slot: number): number {
    return this.config.vmUidBase + slot;
  }

  /** Removes resources whose owning process is gone (crashed CLI, killed node). */
  reconcile(): Promise<ReconcileReport> {
    return reconcile(this.config, this.slots, new Set(this.#sandboxes.keys()));
  }

  /** Sandboxes users see (pool VMs waiting for a claim are not listed). */
  list(): Sandbox[] {
    return [...this.#sandboxes.values()].filter((s) => !s.pooled);
  }

  get(id: string): Sandbox {
    const sb = this.#sandboxes.get(id);
    if (!sb) throw new FirebreakError("SANDBOX_NOT_FOUND", `no sandbox ${id} on this node`);
    return sb;
  }

  // ------------------------------------------------------------ idle freezing

  /** Checks every `every` ms which running sandboxes have been idle for `idleMs`, and freezes them. */
  #startFreezer(idleMs: number): void {
    const every = Math.min(5000, Math.max(250, Math.round(idleMs / 4)));
    let running = false;
    this.#freezer = setInterval(() => {
      if (running) return;
      running = true;
      void this.#freezeIdle(idleMs)
        .catch((e) => this.#log.warn({ component: "freezer", problems: problemsOf(e) }, "freeze pass failed"))
        .finally(() => {
          running = false;
        });
    }, every);
    this.#freezer.unref();
  }

  async #freezeIdle(idleMs: number): Promise<void> {
    for (const sb of [...this.#sandboxes.values()]) {
      const cgroup = sb.cgroup;
      if (sb.state !== "running" || sb.frozen || !cgroup) continue;
      const now = Date.now();
      const { cpuNanos } = await cgroup.usage();
      const prev = sb.lastCpuNanos;
      const prevAt = sb.lastCpuAt;
      sb.lastCpuNanos = cpuNanos;
      sb.lastCpuAt = now;
      const quiet = prev >= 0 && cpuNanos - prev <= IDLE_CPU_SHARE * (now - prevAt) * 1e6;
      if (!quiet || this.#busy(sb.id)) {
        sb.lastBusyAt = now;
        continue;
      }
      if (now - sb.lastBusyAt < idleMs) continue;
      await this.#serialFreeze(sb, async () => {
        // Checked again in order with thaws: a request may have come meanwhile.
        if (sb.state !== "running" || sb.frozen || Date.now() - sb.lastBusyAt < idleMs || this.#busy(sb.id))
          return;
        if (await cgroup.freeze(true)) {
          sb.frozenIn = cgroup;
          this.#log.info(
            { sandboxId: sb.id, platformId: sb.platformId, idleMs: now - sb.lastBusyAt },
            "sandbox frozen (idle)",
          );
        } else {
          await cgroup.freeze(false).catch(() => {});
        }
      });
    }
  }

  #busy(id: string): boolean {
    for (const check of this.busyChecks) if (check(id)) return true;
    return false;
  }

  /** Freezes and thaws of one sandbox happen one at a time, in order. */
  #serialFreeze(sb: Sandbox, fn: () => Promise<void>): Promise<void> {
    const next = sb.freezeChain.then(fn, fn);
    sb.freezeChain = next.catch(() => {});
    return next;
  }

  /**
   * Marks a sandbox as used now (a connection to it opens) and thaws it if the
   * freezer had frozen it. Packets that reach a frozen guest wait in its tap
   * queue, so the caller need not wait for the thaw.
   */
  touch(id: string): void {
    const sb = this.#sandboxes.get(id);
    if (!sb) return;
    sb.lastBusyAt = Date.now();
    if (this.#freezer) void this.#thaw(sb).catch(() => {});
  }

  /** Thaws a frozen sandbox (every lifecycle step that needs its QEMU to answer calls this first). */
  async #thaw(sb: Sandbox): Promise<void> {
    if (!this.#freezer && !sb.frozen) return;
    await this.#serialFreeze(sb, async () => {
      const cgroup = sb.frozenIn;
      if (!cgroup) return;
      sb.lastBusyAt = Date.now();
      // Its own cgroup, whatever state the sandbox is in by now (a kill's stopping holds no live resources).
      await cgroup.freeze(false);
      sb.frozenIn = undefined;
      this.#log.info({ sandboxId: sb.id, platformId: sb.platformId }, "sandbox thawed");
    });
  }

  // ------------------------------------------------------------ the one place a state changes

  /**
   * INVARIANT: the only writer of a sandbox's state. The transition must be in
   * the table (state.ts); starting and resuming may stay put while they gain
   * their live resources.
   */
  #set(sb: Sandbox, next: Held): void {
    const gainsLive = next.state === sb.state && (next.state === "starting" || next.state === "resuming");
    if (!gainsLive) assertTransition(sb.id, sb.state, next.state);
    sb[SET_HELD](next);
    if (next.state === "running") {
      // Just started, resumed or claimed: idle from now, on a cgroup that may be new.
      sb.lastBusyAt = Date.now();
      sb.lastCpuNanos = -1;
    }
    for (const listener of this.stateListeners) {
      try {
        listener(sb.id, next.state);
      } catch {
        // a listener's failure is its own; the state has changed
      }
    }
  }

  /** Told of every state a sandbox enters (the node daemon ends its tunnels with it). */
  readonly stateListeners = new Set<(id: string, state: Held["state"]) => void>();

  // ------------------------------------------------------------ create

  /**
   * Creates a sandbox by the fastest path available: a warm pool VM (claim and
   * personalize), else a restore of the template's snapshot, else a cold boot.
   * The path taken and its phase timings are recorded on the sandbox.
   */
  async create(opts: CreateOptions): Promise<Sandbox> {
    if (
      opts.diskMib !== undefined &&
      (!Number.isInteger(opts.diskMib) || opts.diskMib < 512 || opts.diskMib > MAX_DISK_MIB)
    ) {
      throw new FirebreakError(
        "SHAPE_INVALID",
        `diskMib must be a whole number from 512 to ${MAX_DISK_MIB}, got ${opts.diskMib}`,
      );
    }
    const sb = await this.#createByFastestPath(opts);
    if (opts.diskMib !== undefined) {
      try {
        await this.#growDisk(sb, opts.diskMib);
      } catch (e) {
        await this.kill(sb.id, "disk resize failed");
        throw e;
      }
    }
    return sb;
  }

  /** Grows the root disk layer and the guest's ext4 on it (online). */
  async #growDisk(sb: Sandbox, diskMib: number): Promise<void> {
    const t0 = performance.now();
    const info = JSON.parse(
      (await run(this.qemu.img, ["info", "--force-share", "--output=json", path.join(sb.dir, "disk.qcow2")]))
        .stdout,
    ) as {
      "virtual-size": number;
    };
    const want = diskMib * 1024 * 1024;
    if (want < info["virtual-size"]) {
      throw new FirebreakError(
        "SHAPE_INVALID",
        `diskMib ${diskMib} is smaller than the template's disk (${Math.round(info["virtual-size"] / 2 ** 20)} MiB); disks only grow`,
      );
    }
    if (want === info["virtual-size"]) return;
    await sb.requireLive().vm.qmp.execute("block_resize", { "node-name": "root", size: want });
    const { exitCode } = await sb.exec(["resize2fs", "/dev/vda"], { user: "root" });
    if (exitCode !== 0)
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `growing the guest filesystem failed (resize2fs exit ${exitCode})`,
      );
    if (sb.timings) sb.timings.phases["diskResize"] = Math.round((performance.now() - t0) * 10) / 10;
  }

  async #createByFastestPath(opts: CreateOptions): Promise<Sandbox> {
    if (opts.fromSnapshot !== undefined) {
      this.egress.validate(opts.network?.policy, opts.network?.tenant);
      const { manifest, source } = await this.#snapshotSource(opts.fromSnapshot);
      const want = { ...manifest.shape, ...opts.shape };
      if (want.vcpus !== manifest.shape.vcpus || want.memoryMib !== manifest.shape.memoryMib) {
        throw new FirebreakError(
          "SHAPE_INVALID",
          `snapshot ${opts.fromSnapshot} is ${manifest.shape.vcpus} vCPU / ${manifest.shape.memoryMib} MiB; a sandbox started from it has that shape`,
        );
      }
      return this.#start(
        { ...opts, template: manifest.template, envVars: { ...manifest.envVars, ...opts.envVars } },
        manifest.shape,
        { source },
      );
    }
    const shape = shapeFor(opts.template, opts.shape);
    // Refuse a bad policy or a forbidden service binding before anything is made.
    this.egress.validate(opts.network?.policy, opts.network?.tenant);
    const key = !opts.writableImage && !opts.forceCold ? opts.template.key : undefined;
    if (key) {
      const warm = await this.pools.claim(key, shape, async (sb) => {
        // From here the VM is the tenant's: its CPU so far is reported at hand-over.
        sb.account = "tenant";
        await this.#personalize(sb, opts, { fresh: false });
        sb.pooled = false;
      });
      if (warm) {
        if (opts.network) {
          await this.egress.update(warm.id, opts.network.policy ?? {}, {
            ...(opts.network.tenant !== undefined ? { tenant: opts.network.tenant } : {}),
            ...(opts.network.platform ? { platform: opts.network.platform } : {}),
          });
        }
        return warm;
      }
    }
    if (key) {
      const t0 = performance.now();
      const standby = await this.standbys.claim(key, shape, (sb) => this.#startFromStandby(sb, opts, t0));
      if (standby) return standby;
    }
    let fallback: string | undefined;
    if (key) {
      const found = await this.snapshots.find(snapshotKey(key, shape, this.kernel, this.accel.accel));
      if (found.snapshot) {
        try {
          return await this.#start(opts, shape, {
            source: this.#templateSource(opts.template, found.snapshot),
          });
        } catch (e) {
          if (!(e instanceof SnapshotRestoreError)) throw e;
          fallback = `snapshot restore failed: ${e.message}`;
          this.#log.warn(
            { template: opts.template.name, snapshot: found.snapshot.dir, reason: e.message },
            "snapshot restore failed; quarantining it and booting cold",
          );
          await this.snapshots.quarantine(found.snapshot, e.message);
        }
      } else if (found.problem) {
        fallback = found.problem;
        this.#log.warn(
          { template: opts.template.name, reason: found.problem },
          "no usable snapshot; booting cold",
        );
      }
    }
    const sb = await this.#start(opts, shape, {});
    if (fallback && sb.timings) sb.timings.fallback = fallback;
    return sb;
  }

  /**
   * Acquires what a VM needs to run, registering each cleanup on the
   * sandbox's live stack as it goes: slot, network and egress, cgroup; then
   * launches QEMU over `disk` (the VM is the last cleanup registered, so it
   * is the first undone). Throws if the sandbox is killed meanwhile.
   */
  async #acquireLive(
    sb: Sandbox,
    opts: {
      network?: CreateOptions["network"];
      incoming?: string;
      memory?: VmMemory;
      groups?: number[];
      /** Runs once the slot (and so the VM's uid) is known, before QEMU starts. */
      beforeLaunch?: (vmUid: number) => Promise<void>;
      /** QEMU refusing to start is the snapshot's fault (a restore falls back cold). */
      launchFailureIsSnapshot?: boolean;
    },
    lap: (name: string) => void,
  ): Promise<LiveResources> {
    const stack = sb.liveStack;
    const signal = sb.abort.signal;
    const record = sb.record!;
    const slot = await this.slots.claim(sb.id);
    stack.defer(() => this.slots.release(slot));
    record.slot = slot;
    await writeRecord(this.config, sb.dir, record);
    const uid = this.vmUid(slot);
    await this.#grantDir(sb, uid);
    signal.throwIfAborted();

    const network = await createSandboxNetwork(
      { sandboxId: sb.id, slot, tapUid: uid, tapGid: uid },
      this.config.hostPool,
    );
    stack.defer(() => destroySandboxNetwork(network));
    await this.egress.attach(network, opts.network ?? {});
    stack.defer(() => this.egress.detach(sb.id, { keepPolicy: sb.keepPolicy }));
    lap("network");
    signal.throwIfAborted();

    await opts.beforeLaunch?.(uid);
    lap("disk");
    signal.throwIfAborted();

    const cgroup = await SandboxCgroup.open(`fb-${sb.id}`);
    stack.defer(() => cgroup.destroy());
    await cgroup.create(cgroupLimits(sb.shape));
    lap("cgroup");
    signal.throwIfAborted();

    const vm = await this.#launchVm(
      sb,
      { slot, network, cgroup },
      {
        ...(opts.incoming ? { incoming: opts.incoming } : {}),
        ...(opts.memory ? { memory: opts.memory } : {}),
        ...(opts.groups ? { groups: opts.groups } : {}),
      },
    ).catch((e: Error) => {
      // QEMU refusing the snapshot's files (unreadable disk layer, ...) is a
      // snapshot problem: the create falls back to a cold boot.
      if (opts.launchFailureIsSnapshot && !signal.aborted) throw new SnapshotRestoreError(e.message);
      throw e;
    });
    const live: LiveResources = { slot, network, cgroup, vm };
    // The VM stopped last-in first-out: whichever VM the sandbox runs at that time.
    stack.defer(async () => {
      await live.vm.stop(1000);
    });
    // Undone first: a frozen QEMU answers no quit and, on cgroup v1, does not die of SIGKILL.
    stack.defer(() => this.#thaw(sb));
    lap("spawn");
    return live;
  }

  /**
   * Starts one VM: owner record, slot, network, disk layer, cgroup, QEMU, then
   * either boot to agent-ready (cold) or load the snapshot's state, then
   * personalize. `pool`: stop before personalizing (warm pool fill).
   */
  async #start(
    opts: CreateOptions,
    shape: Shape,
    how: {
      /** Restore from a snapshot or fork point instead of booting. */
      source?: CloneSource;
      /** Boot with guest RAM in this file, mapped shared (snapshot makers). */
      writerMemory?: string;
      pool?: boolean;
      /** Stop once QEMU waits for the source's state (a standby VM). */
      standby?: boolean;
      account?: SandboxAccount;
    },
  ): Promise<Sandbox> {
    const t0 = performance.now();
    let mark = t0;
    const phases: Record<string, number> = {};
    const lap = (name: string) => {
      const now = performance.now();
      phases[name] = Math.round((now - mark) * 10) / 10;
      mark = now;
    };
    const id = newSandboxId();
    const dir = path.join(paths.sandboxesDir(this.config), id);
    const sb = new Sandbox(id, opts.template, shape, dir);
    sb.onUse = () => this.touch(id);
    sb.pooled = how.pool === true || how.standby === true;
    sb.account = how.account ?? (sb.pooled ? "warm_pool" : opts.writableImage ? "template_build" : "tenant");
    sb.discard = () => void this.kill(id, "discarded from the warm pool");
    this.#sandboxes.set(id, sb);
    sb.record = {
      id,
      ownerPid: process.pid,
      ownerStartTime: await processStartTime(process.pid),
      stateDir: this.config.stateDir,
      createdAt: sb.createdAt.toISOString(),
      template: opts.template.name,
    };
    try {
      // SECURITY: root's, and stays root's (see vmUid).
      await fs.mkdir(dir, { mode: 0o700 });
      sb.filesStack.defer(() => fs.rm(dir, { recursive: true, force: true }));
      // INVARIANT: the owner record exists before any host-global resource.
      await writeRecord(this.config, dir, sb.record);
      sb.layers = how.source?.layers ?? [];
      for (const layer of sb.layers) {
        await fs.writeFile(path.join(this.config.stateDir, "layers", layer, "users", id), "");
        sb.filesStack.defer(() => releaseUnusedLayers(this.config, { layer, user: id }).then(() => {}));
      }
      const source = how.source;
      const base: DiskLayer[] = source?.diskChain ?? [{ path: opts.template.imagePath, format: "raw" }];
      const memory: VmMemory = source
        ? { kind: "clone", path: source.memoryPath }
        : how.writerMemory
          ? { kind: "writer", path: how.writerMemory }
          : { kind: "private" };
      const live = await this.#acquireLive(
        sb,
        {
          ...(opts.network ? { network: opts.network } : {}),
          ...(source
            ? {
                incoming: source.statePath,
                groups: source.groups,
                launchFailureIsSnapshot: source.snapshot !== undefined,
              }
            : {}),
          memory,
          beforeLaunch: async (vmUid) => {
            // SECURITY: the snapshot maker's RAM file is writable by its VM's
            // group only (QEMU opens it by path), and by nobody once saved.
            if (how.writerMemory) {
              await fs.chown(how.writerMemory, 0, vmUid);
              await fs.chmod(how.writerMemory, 0o660);
            }
            sb.disk = opts.writableImage ? base : [...base, await this.#newLayer(dir, base.at(-1)!)];
          },
        },
        lap,
      );
      this.#set(sb, { state: "starting", live });
      if (how.standby && source) {
        this.#standbySource.set(sb, source);
        this.#set(sb, { state: "standby", live });
        return sb;
      }
      return await this.#finishStart(sb, opts, how, t0, phases, lap);
    } catch (e) {
      return this.#startFailed(sb, e);
    }
  }

  /** Takes a standby VM for a create: its start resumes where it stopped (state load, init). */
  async #startFromStandby(sb: Sandbox, opts: CreateOptions, t0: number): Promise<void> {
    const source = this.#standbySource.get(sb);
    if (!source) throw new FirebreakError("INTERNAL", `standby ${sb.id} has no source`);
    const phases: Record<string, number> = {};
    let mark = t0;
    const lap = (name: string) => {
      const now = performance.now();
      phases[name] = Math.round((now - mark) * 10) / 10;
      mark = now;
    };
    this.#set(sb, { state: "starting", live: sb.requireLive() });
    sb.pooled = false;
    try {
      if (opts.network) {
        await this.egress.update(sb.id, opts.network.policy ?? {}, {
          ...(opts.network.tenant !== undefined ? { tenant: opts.network.tenant } : {}),
        });
      }
      lap("standby");
      await this.#finishStart(sb, opts, { source }, t0, phases, lap);
    } catch (e) {
      await this.#startFailed(sb, e);
    }
  }

  /**
   * Keeps `size` standby VMs of a template and shape (see `standbys`),
   * refilled in the background after each claim.
   */
  async fillStandby(template: TemplateImage, size: number, shapeIn: Partial<Shape> = {}): Promise<void> {
    const shape = shapeFor(template, shapeIn);
    if (!template.key) throw new FirebreakError("INTERNAL", "standby VMs need a built template (with a key)");
    const found = await this.snapshots.find(snapshotKey(template.key, shape, this.kernel, this.accel.accel));
    if (!found.snapshot) {
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `template ${template.name} has no snapshot for ${shape.vcpus} vCPU / ${shape.memoryMib} MiB: ${found.problem ?? "prepare one first"}`,
      );
    }
    const source = this.#templateSource(template, found.snapshot);
    this.standbys.configure(template.key, shape, size, () =>
      this.#start({ template }, shape, { source, standby: true }),
    );
    await this.standbys.fill(template.key, shape);
  }

  /** The second half of a start: the guest (restored or booted), then its identity. */
  async #finishStart(
    sb: Sandbox,
    opts: CreateOptions,
    how: { source?: CloneSource; pool?: boolean },
    t0: number,
    phases: Record<string, number>,
    lap: (name: string) => void,
  ): Promise<Sandbox> {
    const live = sb.requireLive();
    const id = sb.id;
    const source = how.source;
    {
      let guestUptimeMs: number | undefined;
      if (source) {
        try {
          await live.vm.loadState();
        } catch (e) {
          // A sandbox killed while restoring, or a QEMU killed from outside, says
          // nothing about the snapshot: fail this create, keep the snapshot.
          const exit = live.vm.exitStatus;
          if (sb.state !== "starting" || exit?.signal || !source.snapshot) {
            throw new FirebreakError(
              "SANDBOX_BOOT_FAILED",
              `sandbox ${id} ended while restoring (${sb.endReason ?? exit?.signal ?? "killed"})`,
            );
          }
          throw new SnapshotRestoreError((e as Error).message);
        }
        lap("restore");
      } else {
        guestUptimeMs = (await live.vm.control.waitReady(opts.bootTimeoutMs ?? 90_000)).uptimeMs;
        lap("boot");
      }
      sb.timings = {
        path: source ? "snapshot" : "cold",
        totalMs: 0,
        phases,
        ...(guestUptimeMs !== undefined ? { guestUptimeMs } : {}),
      };
      if (how.pool) {
        // Pool VMs get their own entropy and clock now, so a claim only swaps identity.
        await this.#init(sb, { envVars: {}, fresh: true, accessToken: sb.accessToken });
        lap("init");
        // One throwaway command while nobody waits: under emulation the first
        // command after a restore pays for translating the spawn path (1-3 s).
        await sb.exec(["/bin/true"], { user: "root" });
        sb.resetClients();
        lap("warmup");
        this.#set(sb, { state: "warm", live });
        sb.timings.totalMs = Math.round((performance.now() - t0) * 10) / 10;
        return sb;
      }
      await this.#personalize(sb, opts, { fresh: true }, t0, lap);
      return sb;
    }
  }

  /** Tears down a start that failed and says why (console tail included). */
  async #startFailed(sb: Sandbox, e: unknown): Promise<never> {
    const id = sb.id;
    const dir = sb.dir;
    {
      // Let QEMU's last output reach the console file before reading it.
      const vm = sb.vm;
      const exit = vm ? await Promise.race([vm.exited, sleep(300).then(() => undefined)]) : undefined;
      const consoleTail = await tail(path.join(dir, "console.log"), 15);
      const exitNote = exit ? ` (QEMU exited: ${exit.signal ?? `code ${exit.code}`})` : "";
      const killed = sb.state === "stopping";
      if (!killed && !isFinal(sb.state)) {
        this.#set(sb, { state: "failed", reason: `start failed: ${(e as Error).message}` });
      }
      await this.#teardown(sb);
      if (killed) {
        throw new FirebreakError("SANDBOX_BOOT_FAILED", `sandbox ${id} was killed while starting`, {
          cause: e,
        });
      }
      if (e instanceof FirebreakError || e instanceof SnapshotRestoreError) throw e;
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `sandbox ${id} did not start: ${(e as Error).message}${exitNote}${consoleTail ? `\nguest console (last lines):\n${consoleTail}` : ""}`,
        { cause: e },
      );
    }
  }

  /** What a clone of a template snapshot starts from. */
  #templateSource(template: TemplateImage, snapshot: LoadedSnapshot): CloneSource {
    return {
      memoryPath: snapshot.memoryPath,
      statePath: snapshot.statePath,
      diskChain: [
        { path: template.imagePath, format: "raw" },
        { path: snapshot.diskPath, format: "qcow2" },
      ],
      groups: [],
      layers: [],
      snapshot,
    };
  }

  /** Spawns QEMU for a sandbox whose network and cgroup exist, and supervises it. */
  async #launchVm(
    sb: Sandbox,
    res: Omit<LiveResources, "vm">,
    how: {
      incoming?: string;
      memory?: VmMemory;
      groups?: number[];
      /** A disk chain other than the sandbox's, read-only (a fork's state converter). */
      disk?: DiskLayer[];
    } = {},
  ): Promise<QemuVm> {
    const record = sb.record!;
    const incoming = how.incoming;
    const vm = await QemuVm.launch(
      {
        name: `fb-${sb.id}`,
        qemu: this.qemu,
        ...(how.memory ? { memory: how.memory } : {}),
        ...(how.groups?.length ? { groups: how.groups } : {}),
        ...(how.disk ? { diskReadOnly: true } : {}),
        dir: sb.dir,
        vmlinux: this.kernel.vmlinux,
        initramfs: this.initramfs,
        disk: how.disk ?? sb.disk,
        vcpus: sb.shape.vcpus,
        memoryMib: sb.shape.memoryMib,
        accel: this.accel.accel,
        netnsPath: res.network.netnsPath,
        tapName: res.network.tapName,
        mac: res.network.guestMac,
        tscKhz: this.tscKhz,
        uid: this.vmUid(res.slot),
        gid: this.vmUid(res.slot),
        launcher: this.launcher,
        // INVARIANT: QEMU is inside its cgroup before its first instruction.
        cgroupProcs: res.cgroup.dirs().map((d) => path.join(d, "cgroup.procs")),
      },
      {
        ...(incoming ? { incoming } : {}),
        // The reconciler finds QEMU by its -name, so the pid is recorded after launch.
        onSpawn: (pid) => {
          record.qemuPid = pid;
        },
      },
    );
    // A kill while starting stops the VM at once, so a boot or restore wait ends.
    const onAbort = () => vm.process.kill("SIGKILL");
    sb.abort.signal.addEventListener("abort", onAbort, { once: true });
    if (sb.abort.signal.aborted) onAbort();
    void vm.exited.then((e) => {
      sb.abort.signal.removeEventListener("abort", onAbort);
      // A VM replaced or stopped on purpose (pause, fork, kill) is not a crash.
      if (sb.vm === vm) this.#onVmExit(sb, e.signal ?? `code ${e.code}`);
    });
    await writeRecord(this.config, sb.dir, record);
    return vm;
  }

  /**
   * Lets the VM of `uid` traverse the sandbox directory (for the socket a save
   * makes) and nothing more. SECURITY: the directory and its parent are root's,
   * so the path cannot have been swapped.
   */
  async #grantDir(sb: Sandbox, uid: number): Promise<void> {
    await fs.chown(sb.dir, 0, uid);
    await fs.chmod(sb.dir, 0o710);
  }

  /** A new root-only qcow2 layer in `dir` over `backing`. */
  async #newLayer(dir: string, backing: DiskLayer): Promise<DiskLayer> {
    const file = path.join(dir, "disk.qcow2");
    await run(this.qemu.img, ["create", "-q", "-f", "qcow2", "-F", backing.format, "-b", backing.path, file]);
    await fs.chmod(file, 0o600);
    return { path: file, format: "qcow2" };
  }

  /** Gives a started VM its identity (token, env), then runs the template's start command. */
  async #personalize(
    sb: Sandbox,
    opts: CreateOptions,
    how: { fresh: boolean },
    t0 = performance.now(),
    lap: (name: string) => void = () => {},
  ): Promise<void> {
    sb.accessToken = newAccessToken();
    sb.envVars = { ...opts.template.env, ...opts.envVars };
    await this.#init(sb, {
      envVars: sb.envVars,
      fresh: how.fresh,
      accessToken: sb.accessToken,
    });
    lap("init");
    // A snapshot or pool VM already runs the template's start command.
    if (sb.timings?.path === "cold") await this.#startTemplateProcess(sb);
    lap("startCommand");
    this.#set(sb, { state: "running", live: sb.requireLive() });
    sb.timings ??= { path: "warm", totalMs: 0, phases: {} };
    sb.timings.totalMs = Math.round((performance.now() - t0) * 10) / 10;
    this.#log.info(
      {
        sandboxId: sb.id,
        platformId: sb.platformId,
        template: sb.template.name,
        path: sb.timings.path,
        ms: sb.timings.totalMs,
        phases: sb.timings.phases,
      },
      "sandbox running",
    );
  }

  async #init(
    sb: Sandbox,
    o: { envVars: Record<string, string>; fresh: boolean; accessToken: string },
  ): Promise<void> {
    const user = sb.template.user;
    await sb.requireLive().vm.control.request(
      {
        type: "init",
        sandboxId: sb.id,
        accessToken: o.accessToken,
        envVars: o.envVars,
        defaultUser: user,
        defaultWorkdir: sb.template.workdir ?? (user === "root" ? "/root" : `/home/${user}`),
        // Fresh clones get their own clock and entropy (CRNG reseed); a warm
        // pool VM already has both.
        ...(o.fresh ? { wallClockMs: Date.now(), entropy: randomBytes(64).toString("base64") } : {}),
        // A clone's first init runs guest code nobody has run in that process yet
        // (translated on first use under emulation): many at once on a busy
        // host take seconds each.
      },
      INIT_TIMEOUT_MS,
    );
    sb.resetClients();
  }

  async #startTemplateProcess(sb: Sandbox): Promise<void> {
    const { start, ready } = sb.template;
    if (start) {
      const client = sb.envd();
      const stream = client.process.start({
        process: { cmd: "/bin/bash", args: ["-l", "-c", start], envs: {} },
        tag: "template-start",
      });
      // Drain in the background into the sandbox's start log (GET .../logs);
      // the process lives as long as the sandbox.
      void this.#collectStartOutput(sb, stream);
    }
    if (ready) {
      const limitMs = sb.template.readyTimeoutMs ?? 60_000;
      const deadline = Date.now() + limitMs;
      for (;;) {
        const { exitCode } = await sb.exec(["/bin/bash", "-l", "-c", ready]);
        if (exitCode === 0) return;
        if (Date.now() > deadline) {
          throw new FirebreakError(
            "SANDBOX_BOOT_FAILED",
            `the template's ready check \`${ready}\` did not succeed within ${limitMs / 1000} s (last exit code ${exitCode})`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  async #collectStartOutput(
    sb: Sandbox,
    stream: AsyncIterable<{ event?: { event: { case: string | undefined; value?: unknown } } }>,
  ): Promise<void> {
    try {
      for await (const res of stream) {
        const ev = res.event?.event;
        if (ev?.case !== "data") continue;
        const out = (ev.value as { output: { case: string | undefined; value?: Uint8Array } }).output;
        if (out.value instanceof Uint8Array) sb.startOutput.append(out.value);
      }
    } catch {
      // the sandbox ended, or the stream broke (a clone reattaches on its own)
    }
  }

  /**
   * A sandbox restored from a snapshot (or a warm pool) runs the template's
   * start command the snapshot VM started: follow its output from now on.
   * Best effort, in the background.
   */
  followStartOutput(sb: Sandbox): void {
    if (!sb.template.start || sb.timings?.path === "cold") return;
    try {
      const stream = sb.envd("root").process.connect({
        process: { selector: { case: "tag", value: "template-start" } },
      });
      void this.#collectStartOutput(sb, stream);
    } catch {
      // no network any more
    }
  }

  // ------------------------------------------------------------ snapshots and pools

  /**
   * Boots the template cold, lets it settle, and saves it as the template's
   * snapshot for this shape (memory + disk layer, checksummed manifest).
   * Runs off the start path: after a template build, or in the background.
   */
  async prepareSnapshot(
    template: TemplateImage,
    shapeIn: Partial<Shape> = {},
    opts: { force?: boolean } = {},
  ): Promise<{ manifest: SnapshotManifest; created: boolean }> {
    if (!template.key) throw new FirebreakError("INTERNAL", "snapshots need a built template (with a key)");
    const shape = shapeFor(template, shapeIn);
    const key = snapshotKey(template.key, shape, this.kernel, this.accel.accel);
    if (!opts.force) {
      const found = await this.snapshots.find(key);
      if (found.snapshot) return { manifest: found.snapshot.manifest, created: false };
    }
    await this.snapshots.removeStale();
    const made = { kernel: `${this.kernel.package} ${this.kernel.version}`, accel: this.accel.accel };
    let sb: Sandbox | undefined;
    try {
      const manifest = await this.snapshots.save(key, template, shape, made, async (files) => {
        // The snapshot VM's RAM is the snapshot's memory file itself (shared
        // mapping): saving it is writing ~100 KB of device state.
        // Off the start path: a busy host may take longer than a create's boot.
        sb = await this.#start({ template, bootTimeoutMs: 300_000 }, shape, {
          writerMemory: files.memory,
          account: "snapshot_prepare",
        });
        // Under emulation, code that runs for the first time after a restore
        // is translated first (the translation cache is host memory, empty in
        // every clone); JavaScript that runs for the first time is also parsed
        // and compiled by V8. Run the command path here, a few times, so the
        // compiled code (and the binaries' page cache) is in the snapshot and
        // a clone's first command only pays for translation.
        await this.#warmUp(sb);
        // No page-cache drop for templates with a start command (a code
        // interpreter's kernels): with no balloon, freed guest pages stay in
        // the memory file anyway, and that file is shared by every clone
        // through the host's page cache, so the cache costs no clone PSS.
        await sleep(500);
        const live = sb.requireLive();
        // The sandbox ends with this save: its VM stopping is not a crash.
        this.#set(sb, { state: "pausing", live });
        const t0 = performance.now();
        await live.vm.saveState(files.state, { ignoreShared: true });
        const saveMs = performance.now() - t0;
        await live.vm.stop(1000);
        await fs.rename(path.join(sb.dir, "disk.qcow2"), files.disk);
        return { saveMs, bootMs: sb.timings?.phases["boot"] ?? 0 };
      });
      return { manifest, created: true };
    } finally {
      // The snapshot VM ends here, saved or not.
      const made = sb as Sandbox | undefined;
      if (made?.state === "pausing") {
        this.#set(made, { state: "stopping", reason: "snapshot saved" });
        await this.#teardown(made);
      } else if (made) await this.kill(made.id, "snapshot saved");
    }
  }

  /** The command path, run before a snapshot is saved (see prepareSnapshot). */
  async #warmUp(sb: Sandbox): Promise<void> {
    for (let i = 0; i < 3; i++) {
      await sb.exec(["true"]);
      await sb.exec(["/bin/bash", "-l", "-c", "true"]);
      await sb.exec(["true"], { user: "root" });
    }
    // No connection of the node's into the template's guest is saved with it.
    sb.resetClients();
  }

  /** Fills the warm pool of a template and shape to `size` VMs restored from its snapshot. */
  async fillPool(template: TemplateImage, size: number, shapeIn: Partial<Shape> = {}): Promise<void> {
    const shape = shapeFor(template, shapeIn);
    if (!template.key) throw new FirebreakError("INTERNAL", "warm pools need a built template (with a key)");
    const found = await this.snapshots.find(snapshotKey(template.key, shape, this.kernel, this.accel.accel));
    if (!found.snapshot) {
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `template ${template.name} has no snapshot for ${shape.vcpus} vCPU / ${shape.memoryMib} MiB: ${found.problem ?? "prepare one first"}`,
      );
    }
    const snapshot = found.snapshot;
    this.templateNames.set(template.key, template.name);
    this.pools.configure(template.key, shape, size, () =>
      this.#start({ template }, shape, { source: this.#templateSource(template, snapshot), pool: true }),
    );
    await this.pools.fill(template.key, shape);
  }

  // ------------------------------------------------------------ pause, resume, fork

  /** Undoes the live stack (VM, cgroup, egress, network, slot) and starts a fresh one. */
  async #releaseLive(sb: Sandbox, keepPolicy: boolean): Promise<void> {
    sb.keepPolicy = keepPolicy;
    const stack = sb.liveStack;
    sb.liveStack = new AsyncDisposableStack();
    try {
      await stack.disposeAsync();
    } finally {
      sb.keepPolicy = false;
    }
  }

  /**
   * Pauses a sandbox to disk: memory and device state are saved beside its disk
   * layer, then QEMU, the network namespace, the cgroup and the slot are
   * released. A paused sandbox costs no CPU or RAM and survives the node
   * process: the next runtime adopts it (see adoptPaused).
   */
  async pause(id: string, opts: { memory?: boolean } = {}): Promise<void> {
    const sb = this.get(id);
    const live = sb.requireLive();
    const memory = opts.memory !== false;
    await this.#thaw(sb);
    sb.lastPhases = {};
    const lap = lapper(sb.lastPhases);
    if (!memory) {
      // Filesystem-only: the guest writes its page cache to its disk layer
      // (while it still runs: commands are refused once it is pausing), then
      // the VM stops. A guest that does not answer loses only its own
      // unwritten data; the disk's journal is replayed at the next boot.
      await this.#syncGuest(sb);
      lap("sync");
    }
    this.#set(sb, { state: "pausing", live });
    try {
      if (memory) {
        await live.vm.saveState(path.join(sb.dir, "paused-memory.bin"));
        lap("save");
      }
      await this.#releaseLive(sb, true);
      lap("release");
      const paused: PausedRecord = {
        template: sb.template,
        shape: sb.shape,
        envVars: sb.envVars,
        accessToken: sb.accessToken,
        layers: sb.layers,
        disk: sb.disk,
        createdAt: sb.createdAt.toISOString(),
        pausedAt: new Date().toISOString(),
        memory,
      };
      // SECURITY: the token and env may be secrets: root-only file in a root-owned directory.
      await writeFileAtomic(path.join(sb.dir, PAUSED_FILE), JSON.stringify(paused), 0o600);
      delete sb.record!.slot;
      delete sb.record!.qemuPid;
      await writeRecord(this.config, sb.dir, sb.record!);
      await removeOwner(this.config, id);
      this.#set(sb, { state: "paused", memory });
      this.#log.info(
        { sandboxId: id, platformId: sb.platformId, phase: "pause", memory },
        memory ? "sandbox paused" : "sandbox paused (filesystem only)",
      );
    } catch (e) {
      this.#set(sb, { state: "failed", reason: `pause failed: ${problemsOf(e).join("; ")}` });
      await this.#teardown(sb);
      throw new FirebreakError(
        "SANDBOX_STATE_INVALID",
        `pausing sandbox ${id} failed: ${(e as Error).message}`,
      );
    }
  }

  /** Runs `sync` in the guest as root, bounded: a guest that hangs it is stopped anyway. */
  async #syncGuest(sb: Sandbox): Promise<void> {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), PAUSE_SYNC_TIMEOUT_MS);
    try {
      await sb.exec(["/bin/sync"], { user: "root", signal: abort.signal });
    } catch (e) {
      this.#log.warn(
        { sandboxId: sb.id, phase: "pause", problems: problemsOf(e) },
        "the guest did not sync its disk before a filesystem-only pause",
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Adopts paused sandboxes left by earlier node processes in this state dir,
   * so they can be resumed or killed. Called by open().
   */
  async adoptPaused(): Promise<string[]> {
    const adopted: string[] = [];
    for (const id of await fs.readdir(paths.sandboxesDir(this.config)).catch(() => [] as string[])) {
      if (this.#sandboxes.has(id)) continue;
      const dir = path.join(paths.sandboxesDir(this.config), id);
      let paused: PausedRecord;
      try {
        paused = JSON.parse(await fs.readFile(path.join(dir, PAUSED_FILE), "utf8")) as PausedRecord;
      } catch {
        continue;
      }
      const sb: Sandbox = new Sandbox(id, paused.template, paused.shape, dir, {
        createdAt: new Date(paused.createdAt),
        initial: { state: "paused", memory: paused.memory !== false },
      });
      sb.onUse = () => this.touch(id);
      sb.discard = () => void this.kill(id, "discarded");
      sb.accessToken = paused.accessToken;
      sb.envVars = paused.envVars;
      sb.layers = paused.layers;
      sb.disk = paused.disk ?? [
        { path: paused.template.imagePath, format: "raw" },
        { path: path.join(dir, "disk.qcow2"), format: "qcow2" },
      ];
      sb.filesStack.defer(() => fs.rm(dir, { recursive: true, force: true }));
      for (const layer of sb.layers) {
        sb.filesStack.defer(() => releaseUnusedLayers(this.config, { layer, user: id }).then(() => {}));
      }
      sb.record = {
        id,
        ownerPid: process.pid,
        ownerStartTime: await processStartTime(process.pid),
        stateDir: this.config.stateDir,
        createdAt: paused.createdAt,
        template: paused.template.name,
      };
      await writeRecord(this.config, dir, sb.record);
      await removeOwner(this.config, id); // no global resources while paused
      this.#sandboxes.set(id, sb);
      adopted.push(id);
    }
    return adopted;
  }

  /**
   * Resumes a paused sandbox: its processes, memory and files continue where
   * they were. After a filesystem-only pause the VM boots afresh from its
   * disk (same identity, files kept, processes gone) and the template's start
   * command runs again.
   */
  async resume(id: string, opts: { bootTimeoutMs?: number } = {}): Promise<Sandbox> {
    const sb = this.get(id);
    const held = sb.held;
    const memory = held.state === "paused" ? held.memory : true;
    this.#set(sb, { state: "resuming" });
    const t0 = performance.now();
    sb.lastPhases = {};
    const lap = lapper(sb.lastPhases);
    try {
      await writeRecord(this.config, sb.dir, sb.record!);
      const live = await this.#acquireLive(
        sb,
        memory ? { incoming: path.join(sb.dir, "paused-memory.bin") } : {},
        lap,
      );
      this.#set(sb, { state: "resuming", live });
      if (memory) {
        await live.vm.loadState();
        lap("restore");
      } else {
        await live.vm.control.waitReady(opts.bootTimeoutMs ?? 90_000);
        lap("boot");
      }
      // Same identity; the clock moved on while paused, and a reseed costs nothing.
      await this.#init(sb, { envVars: sb.envVars, fresh: true, accessToken: sb.accessToken });
      lap("init");
      if (!memory) {
        await this.#startTemplateProcess(sb);
        lap("startCommand");
      }
      await fs.rm(path.join(sb.dir, "paused-memory.bin"), { force: true });
      await fs.rm(path.join(sb.dir, PAUSED_FILE), { force: true });
      this.#set(sb, { state: "running", live });
      this.#log.info(
        { sandboxId: id, platformId: sb.platformId, phase: "resume", ms: Math.round(performance.now() - t0) },
        "sandbox resumed",
      );
      return sb;
    } catch (e) {
      if (sb.state === "stopping") {
        // Killed while resuming: the kill's teardown takes everything.
        await this.#teardown(sb);
        throw new FirebreakError("SANDBOX_BOOT_FAILED", `sandbox ${id} was killed while resuming`, {
          cause: e,
        });
      }
      // Keep the paused state on disk: release what this attempt made.
      await this.#releaseLive(sb, true).catch((err) =>
        this.#log.error(
          { sandboxId: id, phase: "resume", problems: problemsOf(err) },
          "releasing a failed resume",
        ),
      );
      await removeOwner(this.config, id);
      this.#set(sb, { state: "paused", memory });
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `resuming sandbox ${id} failed: ${(e as Error).message}`,
      );
    }
  }

  /**
   * Forks a running sandbox into `count` children. The parent is frozen once
   * into a fork point (its RAM as an immutable memory file, its device state,
   * its disk layer) and continues on top of it; each child maps the same
   * memory file copy-on-write, with a fresh identity and CRNG state, writing
   * only to its own disk layer.
   */
  async fork(id: string, count: number): Promise<Sandbox[]> {
    if (!Number.isInteger(count) || count < 1 || count > 16) {
      throw new FirebreakError(
        "SHAPE_INVALID",
        `fork count must be a whole number from 1 to 16, got ${count}`,
      );
    }
    const parent = this.get(id);
    // Phases of the parent's freeze (its restart on the fork point included) and the children's starts.
    parent.lastPhases = {};
    const lap = lapper(parent.lastPhases);
    await this.#thaw(parent);
    const point = await this.#freeze(parent);
    lap("freeze");
    // Children start while the parent restarts on top of the fork point.
    const [back, ...started] = await Promise.allSettled([
      point.parentBack,
      ...Array.from({ length: count }, () =>
        this.#start(
          {
            template: parent.template,
            envVars: parent.envVars,
            network: this.egress.optionsOf(parent.id) ?? {},
          },
          parent.shape,
          { source: point.source },
        ),
      ),
    ]);
    lap("children");
    const children = started.flatMap((s) => (s.status === "fulfilled" ? [s.value as Sandbox] : []));
    const failed = [back, ...started].find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) {
      await Promise.all(children.map((c) => this.kill(c.id, "fork failed")));
      throw failed.reason;
    }
    // Checksums for the record (the files are final; the children run already).
    void point.sealed.catch((e: Error) =>
      this.#log.warn({ sandboxId: id, forkPoint: point.id, err: e.message }, "fork point checksums failed"),
    );
    return children;
  }

  /**
   * A named snapshot of a running sandbox: its memory and disk frozen into an
   * immutable, checksummed fork point (exactly as a fork does) while the
   * sandbox keeps running. `create({ fromSnapshot })` starts sandboxes from it,
   * on this node, also after a node restart, until deleteSnapshot.
   */
  async snapshotOf(id: string): Promise<{ snapshotId: string }> {
    await this.#thaw(this.get(id));
    const point = await this.#freeze(this.get(id));
    await point.parentBack;
    await point.sealed;
    await fs.writeFile(path.join(forkPointDir(this.config, point.id), "named"), "");
    this.#log.info({ sandboxId: id, snapshotId: point.id }, "named snapshot made");
    return { snapshotId: point.id };
  }

  /**
   * Deletes a named snapshot: no new sandbox starts from it; its files go when
   * the last sandbox using them ends (at once when none does). Unknown ids
   * (never made, already deleted): SNAPSHOT_NOT_FOUND.
   */
  async deleteSnapshot(snapshotId: string): Promise<void> {
    const dir = forkPointDir(this.config, snapshotId);
    if (!isNamed(this.config, snapshotId)) {
      throw new FirebreakError("SNAPSHOT_NOT_FOUND", `no snapshot ${snapshotId} on this node`);
    }
    await fs.rm(path.join(dir, "named"), { force: true });
    await releaseUnusedLayers(this.config);
  }

  /** Named snapshots kept by this node (ids). */
  async listSnapshots(): Promise<string[]> {
    const out: string[] = [];
    for (const id of await fs.readdir(layersDir(this.config)).catch(() => [] as string[])) {
      if (/^l[a-z0-9]+$/.test(id) && isNamed(this.config, id)) out.push(id);
    }
    return out.sort();
  }

  /** What a sandbox started from a named snapshot needs, checked against its manifest. */
  async #snapshotSource(snapshotId: string): Promise<{ manifest: ForkPointManifest; source: CloneSource }> {
    const manifest = isNamed(this.config, snapshotId)
      ? await readForkPoint(this.config, snapshotId)
      : undefined;
    if (!manifest) throw new FirebreakError("SNAPSHOT_NOT_FOUND", `no snapshot ${snapshotId} on this node`);
    const dir = forkPointDir(this.config, snapshotId);
    const files = [manifest.memory, manifest.state, manifest.diskFile];
    const stamp: string[] = [];
    for (const f of files) {
      const st = await fs.stat(path.join(dir, f.file)).catch(() => undefined);
      if (!st || st.size !== f.bytes) {
        throw new FirebreakError(
          "SANDBOX_BOOT_FAILED",
          `snapshot ${snapshotId} is damaged: ${f.file} does not match its manifest`,
        );
      }
      stamp.push(`${f.file}:${st.ino}:${st.size}:${st.mtimeMs}`);
    }
    // INVARIANT: checksums once per file version (like template snapshots).
    const verified = await fs.readFile(path.join(dir, "verified"), "utf8").catch(() => "");
    if (verified !== stamp.join(",")) {
      for (const f of files) {
        if ((await sha256File(path.join(dir, f.file))) !== f.sha256) {
          throw new FirebreakError(
            "SANDBOX_BOOT_FAILED",
            `snapshot ${snapshotId} is damaged: ${f.file} does not match its checksum`,
          );
        }
      }
      await writeFileAtomic(path.join(dir, "verified"), stamp.join(","), 0o600);
    }
    return {
      manifest,
      source: {
        memoryPath: path.join(dir, manifest.memory.file),
        statePath: path.join(dir, manifest.state.file),
        diskChain: manifest.disk,
        groups: [manifest.gid],
        layers: manifest.layers,
      },
    };
  }

  /**
   * Freezes a running sandbox into a new fork point and continues it on top:
   *
   *   1. the VM is stopped and its whole state (RAM included) saved to a
   *      root-only file in its directory;
   *   2. a converter QEMU (the parent's uid, never running guest code) loads
   *      that state into a new memory file it maps shared (so the file becomes
   *      the parent's RAM) and saves the device state with x-ignore-shared;
   *   3. the parent restarts as a clone of the fork point (memory file mapped
   *      private, device state loaded) on a new disk layer over its frozen one.
   *
   * The parent is `pausing` meanwhile. Any failure ends it (like a failed
   * pause); the fork point goes with its last user.
   */
  async #freeze(
    parent: Sandbox,
  ): Promise<{ id: string; source: CloneSource; parentBack: Promise<void>; sealed: Promise<void> }> {
    const live = parent.requireLive();
    this.#set(parent, { state: "pausing", live });
    const id = `l${newSandboxId().slice(0, 15)}`;
    const dir = forkPointDir(this.config, id);
    const t0 = performance.now();
    try {
      await fs.mkdir(layersDir(this.config), { recursive: true, mode: 0o755 });
      // SECURITY: root's until its group exists; then traversable by that group only.
      await fs.mkdir(dir, { mode: 0o700 });
      await fs.mkdir(path.join(dir, "users"), { mode: 0o700 });
      await fs.writeFile(path.join(dir, "users", parent.id), "");
    } catch (e) {
      this.#set(parent, { state: "running", live });
      await fs.rm(dir, { recursive: true, force: true });
      throw e;
    }
    parent.filesStack.defer(() =>
      releaseUnusedLayers(this.config, { layer: id, user: parent.id }).then(() => {}),
    );
    const memoryPath = path.join(dir, "memory.ram");
    const statePath = path.join(dir, "state.bin");
    const diskPath = path.join(dir, "disk.qcow2");
    const streamPath = path.join(parent.dir, "freeze-stream.bin");
    const steps: Record<string, number> = {};
    let mark = performance.now();
    const step = (name: string) => {
      const now = performance.now();
      steps[name] = Math.round(now - mark);
      mark = now;
    };
    try {
      const gid = await this.forkGroups.claim(dir);
      await fs.chown(dir, 0, gid);
      await fs.chmod(dir, 0o750);
      await createMemoryFile(memoryPath, parent.shape.memoryMib);
      // SECURITY: writable by this fork point's group only, for the converter.
      await fs.chown(memoryPath, 0, gid);
      await fs.chmod(memoryPath, 0o660);

      const old = live.vm;
      step("prepare");
      await old.saveState(streamPath);
      step("save");
      await old.stop(1000);
      step("stop");
      await fs.rename(path.join(parent.dir, "disk.qcow2"), diskPath);
      await fs.chmod(diskPath, 0o400);
      const frozen: DiskLayer[] = [...parent.disk.slice(0, -1), { path: diskPath, format: "qcow2" }];
      const converter = await this.#launchVm(parent, live, {
        incoming: streamPath,
        memory: { kind: "writer", path: memoryPath },
        groups: [gid],
        disk: frozen,
      });
      step("converterSpawn");
      try {
        await converter.loadState({ run: false });
        step("converterLoad");
        await converter.saveState(statePath, { ignoreShared: true });
        step("converterSave");
      } finally {
        await converter.stop(1000);
      }
      await fs.rm(streamPath, { force: true });
      await fs.chmod(statePath, 0o400);
      // INVARIANT: from here on nobody writes the memory file.
      await fs.chmod(memoryPath, 0o440);
      const layers = [...parent.layers, id];
      parent.layers = layers;
      parent.disk = [...frozen, await this.#newLayer(parent.dir, frozen.at(-1)!)];
      const source: CloneSource = { memoryPath, statePath, diskChain: frozen, groups: [gid], layers };
      // Earlier fork points stay as long as this one: its chain reads them.
      for (const l of layers.slice(0, -1)) {
        await fs.writeFile(path.join(forkPointDir(this.config, l), "users", `@${id}`), "").catch(() => {});
      }
      // The fork point is complete: the parent restarts on top of it while
      // the caller starts sandboxes from it.
      const parentBack = (async () => {
        try {
          // INVARIANT: the replaced VM is gone before the new one is the sandbox's
          // (its exit is not a crash; the live stack stops whichever VM is current).
          live.vm = await this.#launchVm(parent, live, {
            incoming: statePath,
            memory: { kind: "clone", path: memoryPath },
            groups: [gid],
          });
          step("relaunch");
          await live.vm.loadState();
          step("restore");
          await this.#init(parent, { envVars: parent.envVars, fresh: true, accessToken: parent.accessToken });
          step("init");
          this.#set(parent, { state: "running", live });
          this.#log.info(
            { sandboxId: parent.id, forkPoint: id, ms: Math.round(performance.now() - t0), steps },
            "sandbox frozen into a fork point",
          );
        } catch (e) {
          await this.#freezeFailed(parent, e);
        }
      })();
      const sealed = this.#sealForkPoint({
        id,
        gid,
        template: parent.template,
        shape: parent.shape,
        envVars: parent.envVars,
        disk: frozen,
        layers,
        parent: parent.id,
      });
      sealed.catch(() => {});
      parentBack.catch(() => {});
      return { id, source, parentBack, sealed };
    } catch (e) {
      await fs.rm(streamPath, { force: true }).catch(() => {});
      return this.#freezeFailed(parent, e);
    }
  }

  /** A freeze that failed ends the parent (like a failed pause); its fork point goes with its last user. */
  async #freezeFailed(parent: Sandbox, e: unknown): Promise<never> {
    if (!isFinal(parent.state) && parent.state !== "stopping") {
      this.#set(parent, { state: "failed", reason: `freezing failed: ${(e as Error).message}` });
    }
    await this.#teardown(parent);
    await releaseUnusedLayers(this.config).catch(() => {});
    throw new FirebreakError(
      "SANDBOX_BOOT_FAILED",
      `freezing sandbox ${parent.id} failed: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }

  /** Writes a fork point's manifest with the sha256 of its (final) files. */
  async #sealForkPoint(
    m: Omit<ForkPointManifest, "memory" | "state" | "diskFile" | "createdAt">,
  ): Promise<void> {
    const dir = forkPointDir(this.config, m.id);
    const file = async (name: string) => {
      const p = path.join(dir, name);
      return { file: name, bytes: (await fs.stat(p)).size, sha256: await sha256File(p) };
    };
    await writeForkPointManifest(this.config, {
      ...m,
      memory: await file("memory.ram"),
      state: await file("state.bin"),
      diskFile: await file("disk.qcow2"),
      createdAt: new Date().toISOString(),
    });
  }

  /**
   * After a host reboot the run dir is empty: named snapshots kept in this
   * state dir claim their groups again (or a new one, their files re-grouped).
   */
  async #adoptForkPointGroups(): Promise<void> {
    for (const id of await fs.readdir(layersDir(this.config)).catch(() => [] as string[])) {
      if (!/^l[a-z0-9]+$/.test(id)) continue;
      const m = await readForkPoint(this.config, id);
      if (!m) continue;
      const dir = forkPointDir(this.config, id);
      if (await this.forkGroups.adopt(m.gid, dir)) continue;
      const gid = await this.forkGroups.claim(dir);
      await fs.chown(dir, 0, gid);
      await fs.chown(path.join(dir, "memory.ram"), 0, gid);
      await writeForkPointManifest(this.config, { ...m, gid });
    }
  }

  // ------------------------------------------------------------ ending

  /** Stops a sandbox and removes everything it had. Idempotent. */
  async kill(id: string, reason = "killed"): Promise<void> {
    const sb = this.#sandboxes.get(id);
    if (!sb) return;
    if (isFinal(sb.state) || sb.state === "stopping") {
      await sb.torndown;
      return;
    }
    if (sb.state === "pausing") {
      // A pause or fork in flight finishes first (its own failure path ends the sandbox otherwise).
      await waitUntil(() => sb.state !== "pausing");
      return this.kill(id, reason);
    }
    const inFlight = sb.state === "starting" || sb.state === "resuming";
    this.pools.remove(sb);
    this.standbys.remove(sb);
    this.#set(sb, { state: "stopping", reason });
    if (inFlight) {
      // The start (or resume) notices at its next step, or at once through its
      // VM, and tears down what it made.
      sb.abort.abort(new Error(reason));
      await sb.torndown;
      return;
    }
    await this.#teardown(sb);
  }

  /**
   * Kills every running sandbox this runtime owns, pool VMs included. Paused
   * sandboxes are only files: they stay, for the next runtime to adopt.
   */
  async close(): Promise<void> {
    clearInterval(this.#freezer);
    await this.pools.close();
    await this.standbys.close();
    await Promise.all(
      [...this.#sandboxes.values()]
        .filter((sb) => sb.state !== "paused")
        .map((sb) => this.kill(sb.id, "node shutdown")),
    );
    await this.egress.close();
  }

  /**
   * Replaces the egress policy of a running sandbox; in force when this
   * resolves (one nft transaction). Throws EgressError for an invalid policy
   * or a service the sandbox's tenant may not bind.
   */
  async updatePolicy(id: string, policy: EgressPolicy, platform?: PlatformTarget): Promise<NormalizedPolicy> {
    const sb = this.get(id);
    return this.egress.update(sb.id, policy, platform ? { platform } : {});
  }

  /** Bytes in/out of a sandbox per destination class (internet, private, service, sandbox, ingress, ...). */
  traffic(id: string): Promise<SandboxTraffic> {
    return this.egress.traffic(this.get(id).id);
  }

  #onVmExit(sb: Sandbox, how: string): void {
    if (sb.state === "running" || sb.state === "warm" || sb.state === "standby") {
      this.#log.warn(
        { sandboxId: sb.id, platformId: sb.platformId, how },
        "QEMU exited unexpectedly; reclaiming its resources",
      );
      this.#set(sb, { state: "crashed", reason: `VM exited unexpectedly (${how})` });
      void this.#teardown(sb);
    }
    // Starting or resuming: the wait in flight fails and its own path cleans up.
  }

  /**
   * What the sandbox's cgroup used, reported as overhead when no tenant is
   * charged for it: platform VMs (pool, snapshot, build) and tenant sandboxes
   * that never were handed over (failed starts).
   */
  async #reportOverhead(sb: Sandbox): Promise<void> {
    const cg = sb.cgroup;
    if (!this.onOverhead || !cg || (sb.account === "tenant" && sb.handedOver)) return;
    try {
      const u = await cg.usage();
      this.onOverhead({
        kind: sb.account === "tenant" ? "failed_start" : sb.account,
        sandbox: sb,
        cpuNanos: u.cpuNanos,
        wallMs: Date.now() - sb.createdAt.getTime(),
      });
    } catch (e) {
      this.#log.warn({ sandboxId: sb.id, err: (e as Error).message }, "overhead not recorded");
    }
  }

  /** Keeps the tail of an ending sandbox's console and start output (its directory goes next). */
  async #keepLogs(sb: Sandbox): Promise<void> {
    const tail = await consoleTail(sb.dir);
    const start = sb.startOutput.read(Math.max(0, sb.startOutput.end - 64 * 1024), 64 * 1024);
    this.endedLogs.put(sb.id, {
      console: tail,
      start: { offset: start.offset, data: start.data },
      endedAt: Date.now(),
    });
  }

  #teardownStarted = new WeakSet<Sandbox>();

  /**
   * Undoes everything a sandbox holds: its live stack (VM, cgroup, egress,
   * network, slot), then its files stack (directory, fork-layer uses); every
   * cleanup runs even if an earlier one failed. A sandbox in `stopping` ends
   * `stopped`; failed and crashed ones keep their state.
   */
  async #teardown(sb: Sandbox): Promise<void> {
    if (this.#teardownStarted.has(sb)) return sb.torndown;
    this.#teardownStarted.add(sb);
    const problems: string[] = [];
    await this.#reportOverhead(sb);
    const phases: [string, AsyncDisposableStack][] = [
      ["stop", sb.liveStack],
      ["cleanup", sb.filesStack],
    ];
    for (const [name, stack] of phases) {
      const t0 = performance.now();
      if (name === "cleanup" && !sb.pooled && sb.account === "tenant") await this.#keepLogs(sb);
      try {
        await stack.disposeAsync();
      } catch (e) {
        problems.push(...problemsOf(e));
      }
      sb.teardownPhases[name] = Math.round((performance.now() - t0) * 10) / 10;
    }
    sb.startOutput.close();
    // INVARIANT: the owner record goes last, once nothing of the sandbox remains.
    if (!problems.length)
      await removeOwner(this.config, sb.id).catch((e) => problems.push((e as Error).message));
    if (problems.length)
      this.#log.error({ sandboxId: sb.id, phase: "teardown", problems }, "sandbox teardown problems");
    else
      this.#log.info(
        { sandboxId: sb.id, platformId: sb.platformId, phase: "teardown", phases: sb.teardownPhases },
        "sandbox torn down",
      );
    this.#sandboxes.delete(sb.id);
    this.pools.remove(sb);
    this.standbys.remove(sb);
    if (sb.state === "stopping") this.#set(sb, { state: "stopped", reason: sb.endReason ?? "killed" });
    sb.resolveTorndown();
  }
}

export function validateShape(shape: Shape): Shape {
  const { vcpus, memoryMib } = shape;
  if (!Number.isInteger(vcpus) || vcpus < SHAPE_LIMITS.vcpus.min || vcpus > SHAPE_LIMITS.vcpus.max) {
    throw new FirebreakError(
      "SHAPE_INVALID",
      `vcpus must be a whole number from ${SHAPE_LIMITS.vcpus.min} to ${SHAPE_LIMITS.vcpus.max}, got ${vcpus}`,
    );
  }
  if (
    !Number.isInteger(memoryMib) ||
    memoryMib < SHAPE_LIMITS.memoryMib.min ||
    memoryMib > SHAPE_LIMITS.memoryMib.max
  ) {
    throw new FirebreakError(
      "SHAPE_INVALID",
      `memoryMib must be a whole number from ${SHAPE_LIMITS.memoryMib.min} to ${SHAPE_LIMITS.memoryMib.max}, got ${memoryMib}`,
    );
  }
  return { vcpus, memoryMib };
}

/** A lap timer writing `name -> ms since the last lap` into `phases`. */
function lapper(phases: Record<string, number>): (name: string) => void {
  let mark = performance.now();
  return (name) => {
    const now = performance.now();
    phases[name] = Math.round((now - mark) * 10) / 10;
    mark = now;
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitUntil(cond: () => boolean): Promise<void> {
  while (!cond()) await sleep(20);
}

async function tail(file: string, lines: number): Promise<string> {
  try {
    const text = await fs.readFile(file, "utf8");
    return text.trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "";
  }
}
