// The QEMU microvm driver: builds the command line, spawns QEMU with the least
// privilege that works, and supervises it. The VMM never sees HTTP or sandbox
// semantics: it boots, stops, and reports exit.
import type { ChildProcess, StdioOptions } from "node:child_process";
import { once } from "node:events";
import { constants as O, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { start } from "../host/exec.ts";
import { openNoFollow } from "../host/safe-fs.ts";
import { ControlChannel } from "./control-channel.ts";
import type { QemuInstall } from "./qemu-install.ts";
import { QmpClient, type QmpEvent } from "./qmp.ts";

export type Accelerator = "kvm" | "tcg";

/** One file of a disk chain, opened by the node and handed to QEMU as a descriptor. */
export interface DiskLayer {
  path: string;
  format: "qcow2" | "raw";
}

/**
 * Where guest RAM lives. Every VM names its RAM backend `ram0`, so a state
 * saved by one kind loads into another (the RAM block's id is in the stream).
 *
 * - `private`: anonymous memory (cold boots of plain sandboxes, resumes).
 * - `writer`: a file the VM maps shared (`share=on`): guest RAM *is* the
 *   file. Snapshot and fork-point makers run this way; their state is then
 *   saved with `x-ignore-shared` (device state only, ~100 KB).
 * - `clone`: an immutable file mapped private (`share=off,readonly=on,rom=off`:
 *   QEMU opens it read-only, and the guest's writes land in copy-on-write
 *   pages of this process). Every clone of a snapshot shares the file's page
 *   cache; a clone's writes never reach the file. QEMU >= 8.2.
 *
 * SECURITY: QEMU opens `path` itself (memory-backend-file takes no
 * descriptor; QEMU 10 `file_ram_open` calls open(2) on mem-path), so the file
 * and its directories must be reachable by the VM's uid: template memory is
 * world-readable (no secrets: saved before personalization); a fork point's is
 * readable only by its own group, which only the VMs that map it get
 * (VmSpec.groups).
 */
export type VmMemory =
  | { kind: "private" }
  | { kind: "writer"; path: string }
  | { kind: "clone"; path: string };

export interface VmSpec {
  /** Used in QEMU's -name so the reconciler can find the process. */
  name: string;
  /** The QEMU to run (vmm/qemu-install.ts). */
  qemu: Pick<QemuInstall, "system" | "bios">;
  /** Guest RAM. @default private */
  memory?: VmMemory;
  /** Supplementary groups QEMU keeps (a fork point's group, to map its memory file). */
  groups?: number[];
  /**
   * The sandbox's directory: root-owned, group the VM's gid, mode 0710 (QEMU
   * may only reach a socket the node makes there while saving state).
   */
  dir: string;
  vmlinux: string;
  initramfs: string;
  /**
   * The root disk as a chain, base image first and the sandbox's writable layer
   * last. SECURITY: every file is opened by the node and passed to QEMU as a
   * descriptor (`-add-fd`, `/dev/fdset/N`), so QEMU needs no access to any
   * path, and a qcow2 header cannot make it open another file.
   */
  disk: DiskLayer[];
  /** The top layer is read-only too (nothing in the chain is written). */
  diskReadOnly?: boolean;
  vcpus: number;
  memoryMib: number;
  accel: Accelerator;
  /** Network namespace to run QEMU in, with a tap named tapName inside. */
  netnsPath?: string;
  tapName?: string;
  mac?: string;
  /** Run QEMU as this uid/gid (never root). */
  uid: number;
  gid: number;
  /** The jailer binary (jail/launcher.ts). */
  launcher: string;
  /** cgroup.procs files QEMU joins before its first instruction. */
  cgroupProcs?: string[];
  /** Extra kernel command line. */
  extraCmdline?: string[];
  /** TCG translation cache in MiB. @default FIREBREAK_TCG_TB_MIB or DEFAULT_TCG_TB_MIB */
  tcgTbSizeMib?: number;
  /** Console log size cap in bytes. @default 1 MiB */
  consoleCapBytes?: number;
  /**
   * Host TSC frequency. Under TCG the guest reads the host's TSC, and its own
   * calibration against the emulated PIT fails when the host is busy (the
   * kernel then marks the TSC unstable and hangs before printing anything), so
   * the frequency is passed on the kernel command line instead.
   */
  tscKhz?: number;
}

/** The host's TSC frequency in kHz, from /proc/cpuinfo (constant TSC hosts). */
export function hostTscKhz(): number | undefined {
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    if (!/\bconstant_tsc\b/.test(info)) return undefined;
    const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(info)?.[1]);
    return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The TCG translation cache is fully touched after a boot (it is host memory
 * per sandbox), so it is sized for density; measured in docs/BENCHMARKS.md.
 */
export const DEFAULT_TCG_TB_MIB = 128;

/**
 * Kernel arguments that trim boot time on a microvm, and the idle guest's
 * wake-ups (each one a host CPU cost under emulation); each one measured.
 */
export const BASE_CMDLINE = [
  "console=ttyS0",
  "reboot=k",
  "panic=-1",
  "quiet",
  "loglevel=4",
  "pci=off",
  "nokaslr",
  "mitigations=off",
  "apparmor=0",
  "security=none",
  "audit=0",
  "tsc=reliable",
  "no_timer_check",
  "cryptomgr.notests",
  "i8042.noaux",
  "8250.nr_uarts=1",
  "rcupdate.rcu_expedited=1",
  "random.trust_cpu=on",
  // Idle wake-ups (docs/BENCHMARKS.md, "What wakes an idle guest"): no soft
  // lockup watchdog (an hrtimer every 4 s; meaningless on a vCPU the host may
  // deschedule), no proactive compaction (kcompactd every 500 ms), VM
  // statistics folded every 60 s instead of every second. Guest timer
  // interrupts 13-17/s -> 7/s; QEMU 1.25 -> 0.85 % of a core per idle guest.
  "nowatchdog",
  "sysctl.vm.compaction_proactiveness=0",
  "sysctl.vm.stat_interval=60",
];

/** `-object` for the guest RAM backend `ram0`. */
export function memoryObject(memory: VmMemory, memoryMib: number): string {
  const size = `size=${memoryMib}M`;
  switch (memory.kind) {
    case "private":
      return `memory-backend-ram,id=ram0,${size}`;
    case "writer":
      return `memory-backend-file,id=ram0,${size},mem-path=${qemuOptValue(memory.path)},share=on`;
    case "clone":
      // readonly=on without rom=off makes guest RAM read-only (the guest hangs).
      return `memory-backend-file,id=ram0,${size},mem-path=${qemuOptValue(memory.path)},share=off,readonly=on,rom=off`;
  }
}

/** A value inside a QEMU option string: commas are doubled. */
function qemuOptValue(v: string): string {
  if (/[\0\n]/.test(v)) throw new Error(`unusable path for QEMU: ${JSON.stringify(v)}`);
  return v.replaceAll(",", ",,");
}

export function qemuArgs(spec: VmSpec): string[] {
  const tb = spec.tcgTbSizeMib ?? (Number(process.env["FIREBREAK_TCG_TB_MIB"]) || DEFAULT_TCG_TB_MIB);
  const accel = spec.accel === "kvm" ? "kvm" : `tcg,thread=multi,tb-size=${tb}`;
  const args = [
    "-name",
    `${spec.name},debug-threads=on`,
    "-M",
    "microvm,x-option-roms=off,rtc=on,acpi=on,pit=on,pic=on,memory-backend=ram0",
    "-object",
    memoryObject(spec.memory ?? { kind: "private" }, spec.memoryMib),
    // QEMU 10's default microvm firmware is SeaBIOS, which does not boot the guest.
    "-bios",
    spec.qemu.bios,
    "-accel",
    accel,
    "-cpu",
    spec.accel === "kvm" ? "host" : "max",
    "-smp",
    String(spec.vcpus),
    "-m",
    `${spec.memoryMib}M`,
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-no-reboot",
    // SECURITY: QEMU's own seccomp filter: no exec, no privilege changes.
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    spec.vmlinux,
    "-initrd",
    spec.initramfs,
    "-append",
    [
      ...BASE_CMDLINE,
      ...(spec.accel === "tcg" && spec.tscKhz ? [`tsc_early_khz=${spec.tscKhz}`] : []),
      ...(spec.extraCmdline ?? []),
    ].join(" "),
    "-chardev",
    "stdio,id=con,signal=off",
    "-serial",
    "chardev:con",
    // QMP and the control channel are socket pairs the node made (fds 4, 5).
    "-chardev",
    `socket,id=qmp,fd=${FD.qmp},server=off`,
    "-mon",
    "chardev=qmp,mode=control",
    ...diskArgs(spec.disk, spec.diskReadOnly === true),
    "-device",
    "virtio-blk-device,drive=root",
    "-device",
    "virtio-rng-device",
    // No virtio-balloon: clones map their RAM from a read-only snapshot file,
    // where QEMU cannot discard pages (free page reporting would only wake
    // the guest and the host for nothing), and a guest page reverted to the
    // file's content under the guest's feet would be wrong.
    "-device",
    "virtio-serial-device,max_ports=2",
    "-chardev",
    `socket,id=ctl,fd=${FD.control},server=off`,
    "-device",
    "virtserialport,chardev=ctl,name=fb.control",
  ];
  if (spec.tapName) {
    args.push(
      "-netdev",
      // The jailer opened the tap as root and left it at FD.tap.
      `tap,id=net0,fd=${FD.tap}`,
      "-device",
      `virtio-net-device,netdev=net0${spec.mac ? `,mac=${spec.mac}` : ""}`,
    );
  }
  return args;
}

/** The fd set holding the saved state a VM loads (file: migration URI). */
const INCOMING_FDSET = 100;

/** Descriptor numbers QEMU inherits (0-2: stdio). */
export const FD = { tap: 3, qmp: 4, control: 5, firstDisk: 6 } as const;

/**
 * `-add-fd` and `-blockdev` arguments for a disk chain whose files are
 * descriptors FD.firstDisk + i. The top node is `root` (block_resize names it).
 */
export function diskArgs(chain: DiskLayer[], readOnly: boolean): string[] {
  if (!chain.length) throw new Error("a VM needs at least one disk layer");
  const args: string[] = [];
  chain.forEach((layer, i) => {
    const top = i === chain.length - 1;
    const ro = !top || readOnly;
    const common = ro ? { "read-only": true } : { discard: "unmap", cache: { "no-flush": true } };
    args.push("-add-fd", `fd=${FD.firstDisk + i},set=${i + 1}`);
    args.push(
      "-blockdev",
      JSON.stringify({ driver: "file", "node-name": `f${i}`, filename: `/dev/fdset/${i + 1}`, ...common }),
    );
    args.push(
      "-blockdev",
      JSON.stringify({
        driver: layer.format,
        "node-name": top ? "root" : `d${i}`,
        file: `f${i}`,
        ...common,
        // SECURITY: the backing file is the node below, never a path from the qcow2 header.
        ...(layer.format === "qcow2" ? { backing: i === 0 ? null : `d${i - 1}` } : {}),
      }),
    );
  });
  return args;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class QemuVm {
  readonly spec: VmSpec;
  readonly process: ChildProcess;
  readonly qmp: QmpClient;
  readonly control: ControlChannel;
  readonly consolePath: string;
  /** Settles when QEMU exits, however it exits. */
  readonly exited: Promise<VmExit>;
  #exit: VmExit | undefined;
  #incomingFd: number | undefined;

  private constructor(
    spec: VmSpec,
    proc: ChildProcess,
    qmp: QmpClient,
    control: ControlChannel,
    exited: Promise<VmExit>,
  ) {
    this.spec = spec;
    this.process = proc;
    this.qmp = qmp;
    this.control = control;
    this.consolePath = path.join(spec.dir, "console.log");
    this.exited = exited;
    void exited.then((e) => {
      this.#exit = e;
    });
  }

  get pid(): number {
    return this.process.pid ?? -1;
  }

  get exitStatus(): VmExit | undefined {
    return this.#exit;
  }

  /**
   * Spawns QEMU through the jailer and waits for the QMP handshake (the guest
   * has not necessarily booted when this returns). `incoming`: QEMU waits for
   * a saved state (`-incoming defer`), read from this file by loadState().
   */
  static async launch(
    spec: VmSpec,
    opts: { onSpawn?: (pid: number) => void; incoming?: string } = {},
  ): Promise<QemuVm> {
    // SECURITY: every file QEMU uses is opened here, by root, and inherited as
    // a descriptor; O_NOFOLLOW so a planted symlink is never followed. The
    // console log too, before QEMU exists: a failure here leaves no process.
    const opened: fs.FileHandle[] = [];
    const stdio: StdioOptions = ["ignore", "pipe", "pipe", "ignore", "pipe", "pipe"];
    let incomingFd: number | undefined;
    let consoleLog: fs.FileHandle | undefined;
    try {
      consoleLog = await openNoFollow(path.join(spec.dir, "console.log"), 0o600);
      for (const [i, layer] of spec.disk.entries()) {
        const writable = i === spec.disk.length - 1 && !spec.diskReadOnly;
        const fh = await fs.open(layer.path, (writable ? O.O_RDWR : O.O_RDONLY) | O.O_NOFOLLOW);
        opened.push(fh);
        stdio.push(fh.fd);
      }
      if (opts.incoming) {
        const fh = await fs.open(opts.incoming, O.O_RDONLY | O.O_NOFOLLOW);
        opened.push(fh);
        incomingFd = stdio.length;
        stdio.push(fh.fd);
      }
    } catch (e) {
      await Promise.all(opened.map((f) => f.close()));
      await consoleLog?.close();
      throw e;
    }
    const consoleFile = consoleLog;
    // -incoming defer: wait for a saved state instead of booting (snapshot restore).
    // argv[0] stays the bare name (the reconciler finds QEMU by it); the
    // jailer executes spec.qemu.system.
    const qemu = [
      "qemu-system-x86_64",
      ...qemuArgs(spec),
      ...(incomingFd !== undefined
        ? ["-add-fd", `fd=${incomingFd},set=${INCOMING_FDSET}`, "-incoming", "defer"]
        : []),
    ];
    // SECURITY: QEMU never runs as root. The jailer joins the cgroup, the
    // namespace and the tap as root, makes every mount read-only for QEMU,
    // then drops to the VM user with no capabilities, no supplementary groups
    // but the fork point groups it is given (--groups: read a fork point's
    // memory file) and no_new_privs before it executes QEMU (native/fb-launch.c).
    // --parent: QEMU is killed when this process dies (PR_SET_PDEATHSIG).
    const jail = ["--uid", String(spec.uid), "--gid", String(spec.gid), "--parent", String(process.pid)];
    jail.push("--exec", spec.qemu.system);
    if (spec.groups?.length) jail.push("--groups", spec.groups.join(","));
    if (spec.netnsPath) jail.push("--netns", spec.netnsPath);
    if (spec.tapName) jail.push("--tap", spec.tapName, "--tap-fd", String(FD.tap));
    for (const f of spec.cgroupProcs ?? []) jail.push("--cgroup-procs", f);
    jail.push("--readonly-root");
    // The one file a snapshot maker writes: its guest RAM (QEMU opens it by path).
    if (spec.memory?.kind === "writer") jail.push("--writable-file", spec.memory.path);
    const proc = start(spec.launcher, [...jail, "--", ...qemu], { stdio, cwd: "/" });
    await Promise.all(opened.map((f) => f.close()));
    const exited = new Promise<VmExit>((resolve) => {
      proc.on("exit", (code, signal) => resolve({ code, signal }));
      proc.on("error", () => resolve({ code: -1, signal: null }));
    });
    if (proc.pid) opts.onSpawn?.(proc.pid);
    pipeCapped(proc, consoleFile, spec.consoleCapBytes ?? 1024 * 1024);

    const abort = exited.then((e) => {
      throw new Error(
        `QEMU exited during start (${e.signal ?? `code ${e.code}`}); see ${path.join(spec.dir, "console.log")}`,
      );
    });
    abort.catch(() => {});
    const pipes = proc.stdio as unknown as (net.Socket | null)[];
    const qmpSock = pipes[FD.qmp]!;
    const ctlSock = pipes[FD.control]!;
    try {
      const qmp = new QmpClient(qmpSock);
      const control = new ControlChannel(ctlSock);
      await Promise.race([qmp.handshake(), abort]);
      const vm = new QemuVm(spec, proc, qmp, control, exited);
      vm.#incomingFd = incomingFd;
      return vm;
    } catch (e) {
      proc.kill("SIGKILL");
      await exited;
      qmpSock.destroy();
      ctlSock.destroy();
      throw e;
    }
  }

  /**
   * Saves the paused VM's device and memory state to a file (QMP migrate to a
   * unix socket the node listens on; QEMU never writes host files itself).
   * The VM stays paused afterwards; the caller quits it.
   */
  async saveState(file: string, opts: { ignoreShared?: boolean } = {}): Promise<{ bytes: number }> {
    const sockPath = path.join(this.spec.dir, "migrate-out.sock");
    await fs.rm(sockPath, { force: true });
    const server = net.createServer();
    const conn = once(server, "connection");
    await listen(server, sockPath);
    // SECURITY: the directory is root's (group: this VM), so this path cannot
    // have been swapped (lchown all the same); the socket's mode lets only
    // its owner, this VM's uid, connect.
    await fs.lchown(sockPath, this.spec.uid, this.spec.gid);
    try {
      await this.qmp.execute("stop");
      await this.qmp.execute("migrate-set-capabilities", {
        capabilities: [
          { capability: "events", state: true },
          // RAM that is a shared file is not sent: only device state (~100 KB).
          { capability: "x-ignore-shared", state: opts.ignoreShared === true },
        ],
      });
      // The default cap (32 MiB/s) would make a save take seconds.
      await this.qmp.execute("migrate-set-parameters", { "max-bandwidth": 64 * 1024 ** 3 });
      const done = this.qmp.waitEvent("MIGRATION", 120_000, migrationEnded);
      await this.qmp.execute("migrate", { uri: `unix:${sockPath}` });
      const gone = this.exited.then((e) => {
        throw new Error(`QEMU exited while saving its state (${e.signal ?? `code ${e.code}`})`);
      });
      gone.catch(() => {});
      const [sock] = (await Promise.race([conn, gone])) as [net.Socket];
      // SECURITY: saved memory holds the sandbox's token and env: root-only,
      // and never written through a planted link.
      const out = (await openNoFollow(file, 0o600)).createWriteStream();
      const written = pipeline(sock, out);
      const ev = await done;
      await written;
      if (ev.data?.["status"] !== "completed")
        throw new Error(`saving VM state ${String(ev.data?.["status"])}`);
      return { bytes: (await fs.stat(file)).size };
    } finally {
      server.close();
      await fs.rm(sockPath, { force: true });
    }
  }

  /**
   * Loads the state file given to launch() (`incoming`) into this VM; QEMU
   * reads it from the inherited descriptor. The VM runs once the state is in.
   */
  async loadState(opts: { timeoutMs?: number; run?: boolean } = {}): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    if (this.#incomingFd === undefined) throw new Error("this VM was not launched to load a state");
    await this.qmp.execute("migrate-set-capabilities", {
      capabilities: [
        { capability: "events", state: true },
        // A clone's RAM is already mapped from the snapshot's memory file: the
        // stream carries device state only, and must be read that way.
        { capability: "x-ignore-shared", state: this.spec.memory?.kind === "clone" },
      ],
    });
    const done = this.qmp.waitEvent("MIGRATION", timeoutMs, migrationEnded);
    await this.qmp.execute("migrate-incoming", { uri: `file:/dev/fdset/${INCOMING_FDSET}` });
    const exited = this.exited.then((e) => {
      throw new Error(`QEMU exited while loading the snapshot (${e.signal ?? `code ${e.code}`})`);
    });
    exited.catch(() => {});
    const ev = await Promise.race([done, exited]);
    if (ev.data?.["status"] !== "completed") {
      throw new Error(`loading the snapshot ${String(ev.data?.["status"])}`);
    }
    // The state file is read: QEMU keeps no descriptor of it.
    await this.qmp.execute("remove-fd", { "fdset-id": INCOMING_FDSET }).catch(() => {});
    // The state was saved from a paused VM, and QEMU keeps the source's run
    // state: start the vCPUs (unless the caller only converts the state).
    if (opts.run !== false) await this.qmp.execute("cont");
  }

  /** Stops the VM: QMP quit, then SIGKILL if it has not exited within graceMs. */
  async stop(graceMs = 2000): Promise<VmExit> {
    if (this.#exit) return this.#exit;
    if (!this.qmp.closed) this.qmp.execute("quit").catch(() => {});
    else this.process.kill("SIGKILL");
    const timer = setTimeout(() => this.process.kill("SIGKILL"), graceMs);
    const e = await this.exited;
    clearTimeout(timer);
    this.qmp.close();
    this.control.close();
    return e;
  }
}

function listen(server: net.Server, p: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(p, () => resolve());
  });
}

/** A MIGRATION event that ends a migration. `data` comes from QEMU: read it as unknown. */
function migrationEnded(e: QmpEvent): boolean {
  const status = e.data?.["status"];
  return status === "completed" || status === "failed" || status === "cancelled";
}

/** Copies QEMU's stdout+stderr (the guest console) to a file, up to a cap. */
function pipeCapped(proc: ChildProcess, fh: fs.FileHandle, cap: number): void {
  const out = fh.createWriteStream();
  let written = 0;
  const onData = (b: Buffer) => {
    if (written >= cap) return; // SECURITY: a chatty guest cannot fill the host disk.
    const slice = b.subarray(0, cap - written);
    written += slice.length;
    out.write(slice);
  };
  proc.stdout?.on("data", onData);
  proc.stderr?.on("data", onData);
  proc.on("close", () => out.end());
}
