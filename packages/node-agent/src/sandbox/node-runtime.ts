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
import { type DiskLayer, hostTscKhz, QemuVm } from "../vmm/qemu-vm.ts";
import { newAccessToken, newSandboxId } from "./ids.ts";
import {
  PAUSED_FILE,
  processStartTime,
  type ReconcileReport,
  reconcile,
  releaseUnusedLayers,
  removeOwner,
  type SandboxRecord,
  writeRecord,
} from "./reconciler.ts";
import {
  type Held,
  type LiveResources,
  Sandbox,
  type SandboxAccount,
  SET_HELD,
  type Shape,
  type StartTimings,
  type TemplateImage,
} from "./sandbox.ts";
import { consoleTail, EndedLogStore } from "./sandbox-logs.ts";
import { SlotRegistry } from "./slots.ts";
import {
  type LoadedSnapshot,
  type SnapshotManifest,
  SnapshotRestoreError,
  SnapshotStore,
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
}

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
  /** The QEMU jailer (jail/launcher.ts). */
  readonly launcher: string;
  readonly slots: SlotRegistry;
  readonly tscKhz = hostTscKhz();
  readonly snapshots: SnapshotStore;
  readonly pools: WarmPools;
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

  private constructor(
    config: NodeConfig,
    kernel: KernelManifest,
    initramfs: string,
    accel: AccelProbe,
    launcher: string,
    log: NodeLogger,
  ) {
    this.config = config;
    this.launcher = launcher;
    this.kernel = kernel;
    this.initramfs = initramfs;
    this.accel = accel;
    this.slots = new SlotRegistry(paths.slotsDir(config));
    this.snapshots = new SnapshotStore(config);
    this.pools = new WarmPools((line) => log.warn({ component: "warm-pool" }, line));
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
    const kernel = await ensureKernel(config, log);
    const initramfs = await ensureInitramfs(config, kernel);
    const accel = await probeAccelerator(config, kernel, initramfs);
    log(`accelerator: ${accel.accel} (${accel.reason})`);
    if (!Number.isInteger(config.vmUidBase) || config.vmUidBase < 1000 || config.vmUidBase > 4_000_000_000) {
      throw new FirebreakError(
        "INTERNAL",
        `FIREBREAK_VM_UID_BASE must be a whole number from 1000, got ${config.vmUidBase}`,
      );
    }
    const launcher = await ensureLauncher(config);
    const rt = new NodeRuntime(config, kernel, initramfs, accel, launcher, logger);
    rt.egress = await EgressManager.open({
      stateDir: config.stateDir,
      log: (line) => logger.info({ component: "egress" }, line),
    });
    const report = await rt.reconcile();
    if (report.removed.length) log(`reconciler removed leftovers: ${report.removed.join(", ")}`);
    const adopted = await rt.adoptPaused();
    if (adopted.length) log(`adopted paused sandboxes: ${adopted.join(", ")}`);
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
  }

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
      (await run("qemu-img", ["info", "--force-share", "--output=json", path.join(sb.dir, "disk.qcow2")]))
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
    const shape = validateShape({ ...DEFAULT_SHAPE, ...opts.shape });
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
    let fallback: string | undefined;
    if (key) {
      const found = await this.snapshots.find(snapshotKey(key, shape, this.kernel, this.accel.accel));
      if (found.snapshot) {
        try {
          return await this.#start(opts, shape, {
            snapshot: found.snapshot,
            diskChain: [
              { path: opts.template.imagePath, format: "raw" },
              { path: found.snapshot.diskPath, format: "qcow2" },
            ],
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
      beforeLaunch?: () => Promise<void>;
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

    await opts.beforeLaunch?.();
    lap("disk");
    signal.throwIfAborted();

    const cgroup = await SandboxCgroup.open(`fb-${sb.id}`);
    stack.defer(() => cgroup.destroy());
    await cgroup.create(cgroupLimits(sb.shape));
    lap("cgroup");
    signal.throwIfAborted();

    const vm = await this.#launchVm(sb, { slot, network, cgroup }, opts.incoming).catch((e: Error) => {
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
      snapshot?: LoadedSnapshot;
      diskChain?: DiskLayer[];
      pool?: boolean;
      layers?: string[];
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
    sb.pooled = how.pool === true;
    sb.account = how.account ?? (how.pool ? "warm_pool" : opts.writableImage ? "template_build" : "tenant");
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
      sb.layers = how.layers ?? [];
      for (const layer of sb.layers) {
        await fs.writeFile(path.join(this.config.stateDir, "layers", layer, "users", id), "");
        sb.filesStack.defer(() => releaseUnusedLayers(this.config, { layer, user: id }).then(() => {}));
      }
      const base: DiskLayer[] = how.diskChain ?? [{ path: opts.template.imagePath, format: "raw" }];
      const live = await this.#acquireLive(
        sb,
        {
          ...(opts.network ? { network: opts.network } : {}),
          ...(how.snapshot ? { incoming: how.snapshot.memoryPath, launchFailureIsSnapshot: true } : {}),
          beforeLaunch: async () => {
            sb.disk = opts.writableImage ? base : [...base, await this.#newLayer(dir, base.at(-1)!)];
          },
        },
        lap,
      );
      this.#set(sb, { state: "starting", live });

      let guestUptimeMs: number | undefined;
      if (how.snapshot) {
        try {
          await live.vm.loadState();
        } catch (e) {
          // A sandbox killed while restoring, or a QEMU killed from outside, says
          // nothing about the snapshot: fail this create, keep the snapshot.
          const exit = live.vm.exitStatus;
          if (sb.state !== "starting" || exit?.signal) {
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
        path: how.snapshot ? "snapshot" : "cold",
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
    } catch (e) {
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

  /** Spawns QEMU for a sandbox whose network and cgroup exist, and supervises it. */
  async #launchVm(sb: Sandbox, res: Omit<LiveResources, "vm">, incoming?: string): Promise<QemuVm> {
    const record = sb.record!;
    const vm = await QemuVm.launch(
      {
        name: `fb-${sb.id}`,
        dir: sb.dir,
        vmlinux: this.kernel.vmlinux,
        initramfs: this.initramfs,
        disk: sb.disk,
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
    await run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", backing.format, "-b", backing.path, file]);
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
    await sb.requireLive().vm.control.request({
      type: "init",
      sandboxId: sb.id,
      accessToken: o.accessToken,
      envVars: o.envVars,
      defaultUser: user,
      defaultWorkdir: sb.template.workdir ?? (user === "root" ? "/root" : `/home/${user}`),
      // Fresh clones get their own clock and entropy (CRNG reseed); a warm
      // pool VM already has both.
      ...(o.fresh ? { wallClockMs: Date.now(), entropy: randomBytes(64).toString("base64") } : {}),
    });
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
      const deadline = Date.now() + 60_000;
      for (;;) {
        const { exitCode } = await sb.exec(["/bin/bash", "-l", "-c", ready]);
        if (exitCode === 0) return;
        if (Date.now() > deadline) {
          throw new FirebreakError(
            "SANDBOX_BOOT_FAILED",
            `the template's ready check \`${ready}\` did not succeed within 60 s (last exit code ${exitCode})`,
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
    const shape = validateShape({ ...DEFAULT_SHAPE, ...shapeIn });
    const key = snapshotKey(template.key, shape, this.kernel, this.accel.accel);
    if (!opts.force) {
      const found = await this.snapshots.find(key);
      if (found.snapshot) return { manifest: found.snapshot.manifest, created: false };
    }
    await this.snapshots.removeStale();
    const sb = await this.#start({ template }, shape, { account: "snapshot_prepare" });
    try {
      // The agent drops the boot page cache shortly after ready: wait for it,
      // so the saved memory (and every clone's RSS) is smaller.
      await sleep(1500);
      const made = { kernel: `${this.kernel.package} ${this.kernel.version}`, accel: this.accel.accel };
      const manifest = await this.snapshots.save(key, template, shape, made, async (memoryFile, diskFile) => {
        const live = sb.requireLive();
        // The sandbox ends with this save: its VM stopping is not a crash.
        this.#set(sb, { state: "pausing", live });
        const t0 = performance.now();
        await live.vm.saveState(memoryFile);
        const saveMs = performance.now() - t0;
        await live.vm.stop(1000);
        await fs.rename(path.join(sb.dir, "disk.qcow2"), diskFile);
        return { saveMs, bootMs: sb.timings?.phases["boot"] ?? 0 };
      });
      return { manifest, created: true };
    } finally {
      // The snapshot VM ends here, saved or not.
      if (sb.state === "pausing") {
        this.#set(sb, { state: "stopping", reason: "snapshot saved" });
        await this.#teardown(sb);
      } else await this.kill(sb.id, "snapshot saved");
    }
  }

  /** Fills the warm pool of a template and shape to `size` VMs restored from its snapshot. */
  async fillPool(template: TemplateImage, size: number, shapeIn: Partial<Shape> = {}): Promise<void> {
    const shape = validateShape({ ...DEFAULT_SHAPE, ...shapeIn });
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
      this.#start({ template }, shape, {
        snapshot,
        pool: true,
        diskChain: [
          { path: template.imagePath, format: "raw" },
          { path: snapshot.diskPath, format: "qcow2" },
        ],
      }),
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
  async pause(id: string): Promise<void> {
    const sb = this.get(id);
    const live = sb.requireLive();
    this.#set(sb, { state: "pausing", live });
    sb.lastPhases = {};
    const lap = lapper(sb.lastPhases);
    try {
      await live.vm.saveState(path.join(sb.dir, "paused-memory.bin"));
      lap("save");
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
      };
      // SECURITY: the token and env may be secrets: root-only file in a root-owned directory.
      await writeFileAtomic(path.join(sb.dir, PAUSED_FILE), JSON.stringify(paused), 0o600);
      delete sb.record!.slot;
      delete sb.record!.qemuPid;
      await writeRecord(this.config, sb.dir, sb.record!);
      await removeOwner(this.config, id);
      this.#set(sb, { state: "paused" });
      this.#log.info({ sandboxId: id, platformId: sb.platformId, phase: "pause" }, "sandbox paused");
    } catch (e) {
      this.#set(sb, { state: "failed", reason: `pause failed: ${problemsOf(e).join("; ")}` });
      await this.#teardown(sb);
      throw new FirebreakError(
        "SANDBOX_STATE_INVALID",
        `pausing sandbox ${id} failed: ${(e as Error).message}`,
      );
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
      const sb = new Sandbox(id, paused.template, paused.shape, dir, {
        createdAt: new Date(paused.createdAt),
        initial: { state: "paused" },
      });
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

  /** Resumes a paused sandbox: its processes, memory and files continue where they were. */
  async resume(id: string): Promise<Sandbox> {
    const sb = this.get(id);
    this.#set(sb, { state: "resuming" });
    const t0 = performance.now();
    sb.lastPhases = {};
    const lap = lapper(sb.lastPhases);
    try {
      await writeRecord(this.config, sb.dir, sb.record!);
      const live = await this.#acquireLive(sb, { incoming: path.join(sb.dir, "paused-memory.bin") }, lap);
      this.#set(sb, { state: "resuming", live });
      await live.vm.loadState();
      lap("restore");
      // Same identity; the clock moved on while paused, and a reseed costs nothing.
      await this.#init(sb, { envVars: sb.envVars, fresh: true, accessToken: sb.accessToken });
      lap("init");
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
      this.#set(sb, { state: "paused" });
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `resuming sandbox ${id} failed: ${(e as Error).message}`,
      );
    }
  }

  /**
   * Forks a running sandbox into `count` children. The parent is paused for a
   * moment: its memory and disk are frozen into a shared layer, the parent
   * continues on a new disk layer over it, and each child is restored from it
   * with a fresh identity and CRNG state, writing only to its own layer.
   */
  async fork(id: string, count: number): Promise<Sandbox[]> {
    if (!Number.isInteger(count) || count < 1 || count > 16) {
      throw new FirebreakError(
        "SHAPE_INVALID",
        `fork count must be a whole number from 1 to 16, got ${count}`,
      );
    }
    const parent = this.get(id);
    const live = parent.requireLive();
    this.#set(parent, { state: "pausing", live });
    const layer = `l${newSandboxId().slice(0, 15)}`;
    const layerDir = path.join(this.config.stateDir, "layers", layer);
    // SECURITY: a fork layer holds the parent's memory (token, env) and disk:
    // root-only; children's QEMUs get the files as descriptors.
    await fs.mkdir(layerDir, { recursive: true, mode: 0o700 });
    await fs.mkdir(path.join(layerDir, "users"), { mode: 0o700 });
    await fs.writeFile(path.join(layerDir, "users", parent.id), "");
    parent.filesStack.defer(() =>
      releaseUnusedLayers(this.config, { layer, user: parent.id }).then(() => {}),
    );
    const memoryPath = path.join(layerDir, "memory.bin");
    const diskPath = path.join(layerDir, "disk.qcow2");
    let frozen: DiskLayer[] = [];
    parent.lastPhases = {};
    const lap = lapper(parent.lastPhases);
    try {
      const old = live.vm;
      await old.saveState(memoryPath);
      lap("save");
      await old.stop(1000);
      await fs.rename(path.join(parent.dir, "disk.qcow2"), diskPath);
      for (const f of [memoryPath, diskPath]) await fs.chmod(f, 0o400);
      parent.layers = [...parent.layers, layer];
      frozen = [...parent.disk.slice(0, -1), { path: diskPath, format: "qcow2" }];
      parent.disk = [...frozen, await this.#newLayer(parent.dir, frozen.at(-1)!)];
      // INVARIANT: the replaced VM is gone before the new one is the sandbox's
      // (its exit is not a crash; the live stack stops whichever VM is current).
      live.vm = await this.#launchVm(parent, live, memoryPath);
      await live.vm.loadState();
      await this.#init(parent, { envVars: parent.envVars, fresh: true, accessToken: parent.accessToken });
      lap("relaunch");
      this.#set(parent, { state: "running", live });
    } catch (e) {
      this.#set(parent, { state: "failed", reason: `fork failed: ${(e as Error).message}` });
      await this.#teardown(parent);
      await releaseUnusedLayers(this.config).catch(() => {});
      throw new FirebreakError(
        "SANDBOX_BOOT_FAILED",
        `forking sandbox ${id} failed: ${(e as Error).message}`,
      );
    }
    const snapshot: LoadedSnapshot = {
      dir: layerDir,
      memoryPath,
      diskPath,
      manifest: undefined as unknown as SnapshotManifest,
    };
    const children: Sandbox[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const child = await this.#start(
          {
            template: parent.template,
            envVars: parent.envVars,
            network: this.egress.optionsOf(parent.id) ?? {},
          },
          parent.shape,
          { snapshot, diskChain: frozen, layers: parent.layers },
        );
        children.push(child);
      }
      lap("children");
    } catch (e) {
      await Promise.all(children.map((c) => this.kill(c.id, "fork failed")));
      throw e;
    }
    return children;
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
    await this.pools.close();
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
    if (sb.state === "running" || sb.state === "warm") {
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
