// The QEMU microvm driver: builds the command line, spawns QEMU with the least
// privilege that works, and supervises it. The VMM never sees HTTP or sandbox
// semantics: it boots, stops, and reports exit.
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createReadStream, createWriteStream, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { start } from "../host/exec.ts";
import { ControlChannel } from "./control-channel.ts";
import { QmpClient, type QmpEvent } from "./qmp.ts";

export type Accelerator = "kvm" | "tcg";

export interface VmSpec {
  /** Used in QEMU's -name so the reconciler can find the process. */
  name: string;
  /** Directory for sockets and the console log; must be writable by the VM user. */
  dir: string;
  vmlinux: string;
  initramfs: string;
  /** Writable disk for /dev/vda (a qcow2 overlay over the read-only image). */
  rootDisk: string;
  rootDiskFormat?: "qcow2" | "raw";
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

/** Kernel arguments that trim boot time on a microvm; each one measured. */
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
  // Freed guest pages are zeroed, so snapshots skip them (zero pages are not
  // saved) and restored clones touch less host memory.
  "init_on_free=1",
];

export function qemuArgs(spec: VmSpec): string[] {
  const tb = spec.tcgTbSizeMib ?? (Number(process.env["FIREBREAK_TCG_TB_MIB"]) || DEFAULT_TCG_TB_MIB);
  const accel = spec.accel === "kvm" ? "kvm" : `tcg,thread=multi,tb-size=${tb}`;
  const args = [
    "-name",
    `${spec.name},debug-threads=on`,
    "-M",
    "microvm,x-option-roms=off,rtc=on,acpi=on,pit=on,pic=on",
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
    "-chardev",
    `socket,id=qmp,path=${path.join(spec.dir, "qmp.sock")},server=off`,
    "-mon",
    "chardev=qmp,mode=control",
    "-drive",
    `id=root,file=${spec.rootDisk},format=${spec.rootDiskFormat ?? "qcow2"},if=none,cache=unsafe,discard=unmap`,
    "-device",
    "virtio-blk-device,drive=root",
    "-device",
    "virtio-rng-device",
    // Pages the guest frees go back to the host (smaller RSS per idle sandbox).
    "-device",
    "virtio-balloon-device,free-page-reporting=on",
    "-device",
    "virtio-serial-device,max_ports=2",
    "-chardev",
    `socket,id=ctl,path=${path.join(spec.dir, "control.sock")},server=off`,
    "-device",
    "virtserialport,chardev=ctl,name=fb.control",
  ];
  if (spec.tapName) {
    args.push(
      "-netdev",
      `tap,id=net0,ifname=${spec.tapName},script=no,downscript=no`,
      "-device",
      `virtio-net-device,netdev=net0${spec.mac ? `,mac=${spec.mac}` : ""}`,
    );
  }
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
   * Spawns QEMU and waits until it has connected its QMP and control sockets
   * (the guest has not booted yet when this returns).
   */
  static async launch(
    spec: VmSpec,
    opts: { onSpawn?: (pid: number) => void; incoming?: boolean } = {},
  ): Promise<QemuVm> {
    const qmpPath = path.join(spec.dir, "qmp.sock");
    const ctlPath = path.join(spec.dir, "control.sock");
    await fs.rm(qmpPath, { force: true });
    await fs.rm(ctlPath, { force: true });
    const qmpServer = net.createServer();
    const ctlServer = net.createServer();
    const qmpConn = once(qmpServer, "connection");
    const ctlConn = once(ctlServer, "connection");
    await Promise.all([listen(qmpServer, qmpPath), listen(ctlServer, ctlPath)]);
    // QEMU runs as the VM user and must be able to connect.
    await Promise.all([fs.chown(qmpPath, spec.uid, spec.gid), fs.chown(ctlPath, spec.uid, spec.gid)]);

    // -incoming defer: wait for a saved state instead of booting (snapshot restore).
    const qemu = ["qemu-system-x86_64", ...qemuArgs(spec), ...(opts.incoming ? ["-incoming", "defer"] : [])];
    // SECURITY: QEMU never runs as root: setpriv drops to the VM user, clears
    // supplementary groups and every capability, and sets no_new_privs. When a
    // namespace is given, nsenter joins it first (as root), then setpriv drops.
    const jail = [
      "setpriv",
      `--reuid=${spec.uid}`,
      `--regid=${spec.gid}`,
      "--clear-groups",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--no-new-privs",
      "--",
      ...qemu,
    ];
    const argv = spec.netnsPath ? ["nsenter", `--net=${spec.netnsPath}`, "--", ...jail] : jail;
    const proc = start(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], cwd: spec.dir });
    const exited = new Promise<VmExit>((resolve) => {
      proc.on("exit", (code, signal) => resolve({ code, signal }));
      proc.on("error", () => resolve({ code: -1, signal: null }));
    });
    if (proc.pid) opts.onSpawn?.(proc.pid);
    pipeCapped(proc, path.join(spec.dir, "console.log"), spec.consoleCapBytes ?? 1024 * 1024);

    const abort = exited.then((e) => {
      throw new Error(
        `QEMU exited during start (${e.signal ?? `code ${e.code}`}); see ${path.join(spec.dir, "console.log")}`,
      );
    });
    try {
      const [[qmpSock], [ctlSock]] = (await Promise.race([Promise.all([qmpConn, ctlConn]), abort])) as [
        [net.Socket],
        [net.Socket],
      ];
      const qmp = new QmpClient(qmpSock);
      const control = new ControlChannel(ctlSock);
      await Promise.race([qmp.handshake(), abort]);
      return new QemuVm(spec, proc, qmp, control, exited);
    } catch (e) {
      proc.kill("SIGKILL");
      await exited;
      throw e;
    } finally {
      qmpServer.close();
      ctlServer.close();
      await fs.rm(qmpPath, { force: true });
      await fs.rm(ctlPath, { force: true });
    }
  }

  /**
   * Saves the paused VM's device and memory state to a file (QMP migrate to a
   * unix socket the node listens on; QEMU never writes host files itself).
   * The VM stays paused afterwards; the caller quits it.
   */
  async saveState(file: string): Promise<{ bytes: number }> {
    const sockPath = path.join(this.spec.dir, "migrate-out.sock");
    await fs.rm(sockPath, { force: true });
    const server = net.createServer();
    const conn = once(server, "connection");
    await listen(server, sockPath);
    await fs.chown(sockPath, this.spec.uid, this.spec.gid);
    try {
      await this.qmp.execute("stop");
      await this.qmp.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "events", state: true }],
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
      const out = createWriteStream(file, { mode: 0o644 });
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
   * Loads a state saved by saveState into a VM launched with `incoming: true`.
   * The VM runs on its own once the state is in (QEMU's autostart).
   */
  async loadState(file: string, timeoutMs = 60_000): Promise<void> {
    const sockPath = path.join(this.spec.dir, "migrate-in.sock");
    await this.qmp.execute("migrate-set-capabilities", {
      capabilities: [{ capability: "events", state: true }],
    });
    const done = this.qmp.waitEvent("MIGRATION", timeoutMs, migrationEnded);
    await this.qmp.execute("migrate-incoming", { uri: `unix:${sockPath}` });
    const sock = net.connect(sockPath);
    await once(sock, "connect");
    const sent = pipeline(createReadStream(file, { highWaterMark: 1024 * 1024 }), sock).catch(
      (e: Error) => e,
    );
    const exited = this.exited.then((e) => {
      throw new Error(`QEMU exited while loading the snapshot (${e.signal ?? `code ${e.code}`})`);
    });
    const ev = await Promise.race([done, exited]);
    const sendError = await sent;
    if (ev.data?.["status"] !== "completed") {
      throw new Error(
        `loading the snapshot ${String(ev.data?.["status"])}${sendError instanceof Error ? `: ${sendError.message}` : ""}`,
      );
    }
    // The state was saved from a paused VM, and QEMU keeps the source's run
    // state: start the vCPUs.
    await this.qmp.execute("cont");
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
function pipeCapped(proc: ChildProcess, file: string, cap: number): void {
  const out = createWriteStream(file, { flags: "w", mode: 0o640 });
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
