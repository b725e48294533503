// The reference point `firebreak bench` puts beside Firebreak's own figures:
// a bare QEMU templated restore of the same kernel, nothing else. A template
// VM boots a busybox initramfs that fills ~100 MiB of tmpfs with random bytes
// and waits at a shell on the serial port, its RAM a shared memory file; its
// device state is saved with x-ignore-shared. Each clone maps the file
// private (share=off,readonly=on,rom=off), loads the state and is timed from
// QEMU's spawn to the shell echoing a line back. No network, disk, agent,
// jailer or cgroup: what QEMU 10 itself costs.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { run } from "../host/exec.ts";
import type { QemuInstall } from "./qemu-install.ts";
import { QmpClient } from "./qmp.ts";

const INIT = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mkdir -p /t
/bin/busybox mount -t tmpfs -o size=120m t /t
/bin/busybox dd if=/dev/urandom of=/t/fill bs=1M count=100 2>/dev/null
echo FB_BARE_READY
exec /bin/busybox sh
`;

export interface BareTemplateOptions {
  qemu: Pick<QemuInstall, "system" | "bios">;
  vmlinux: string;
  accel: "kvm" | "tcg";
  tscKhz?: number | undefined;
  memoryMib?: number;
}

export interface BareTemplateResult {
  /** Spawn to the first line echoed by the clone's shell, per restore. */
  restoreMs: number[];
  /** PSS of each of `concurrent` idle clones (MiB). */
  pssMib: number[];
  stateBytes: number;
}

function machineArgs(o: BareTemplateOptions, mem: string, initrd: string): string[] {
  const memoryMib = o.memoryMib ?? 256;
  return [
    "-M",
    "microvm,x-option-roms=off,rtc=on,acpi=on,pit=on,pic=on,memory-backend=ram0",
    "-object",
    `memory-backend-file,id=ram0,size=${memoryMib}M,mem-path=${mem}`,
    "-bios",
    o.qemu.bios,
    "-accel",
    o.accel === "kvm" ? "kvm" : "tcg,thread=multi",
    "-cpu",
    o.accel === "kvm" ? "host" : "max",
    "-m",
    `${memoryMib}M`,
    "-nodefaults",
    "-no-user-config",
    "-nographic",
    "-no-reboot",
    "-sandbox",
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    "-kernel",
    o.vmlinux,
    "-initrd",
    initrd,
    "-append",
    `console=ttyS0 panic=-1 quiet pci=off nokaslr tsc=reliable no_timer_check${o.tscKhz ? ` tsc_early_khz=${o.tscKhz}` : ""} rdinit=/init`,
    "-serial",
    "stdio",
  ];
}

/** Waits until `text` appears in the process's stdout. */
function waitOutput(proc: ChildProcess, text: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no "${text}" from the bare VM within ${timeoutMs} ms: ${buf.slice(-300)}`));
    }, timeoutMs);
    const onData = (b: Buffer) => {
      buf = (buf + b.toString()).slice(-4096);
      if (buf.includes(text)) {
        cleanup();
        resolve();
      }
    };
    const onExit = () => {
      cleanup();
      reject(new Error(`the bare VM exited: ${buf.slice(-300)}`));
    };
    const cleanup = () => {
      clearTimeout(timer);
      proc.stdout?.off("data", onData);
      proc.off("exit", onExit);
    };
    proc.stdout?.on("data", onData);
    proc.on("exit", onExit);
  });
}

async function qmpOver(sockPath: string, server: net.Server): Promise<QmpClient> {
  const [sock] = (await once(server, "connection")) as [net.Socket];
  const qmp = new QmpClient(sock);
  await qmp.handshake();
  void sockPath;
  return qmp;
}

function startQemu(o: BareTemplateOptions, args: string[], qmpSock: string): ChildProcess {
  return spawn(
    o.qemu.system,
    [...args, "-chardev", `socket,id=qmp,path=${qmpSock}`, "-mon", "chardev=qmp,mode=control"],
    {
      stdio: ["pipe", "pipe", "pipe"],
    },
  );
}

async function pssMib(pid: number): Promise<number> {
  const roll = await fs.readFile(`/proc/${pid}/smaps_rollup`, "utf8");
  return Math.round(Number(/^Pss:\s+(\d+)/m.exec(roll)?.[1] ?? 0) / 1024);
}

export async function bareTemplatedRestore(
  o: BareTemplateOptions,
  runs: number,
  concurrent: number,
): Promise<BareTemplateResult> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-bare-"));
  const procs: ChildProcess[] = [];
  try {
    const tree = path.join(dir, "tree");
    for (const d of ["bin", "dev", "proc", "t"]) await fs.mkdir(path.join(tree, d), { recursive: true });
    await fs.copyFile("/bin/busybox", path.join(tree, "bin", "busybox"));
    await fs.chmod(path.join(tree, "bin", "busybox"), 0o755);
    await fs.writeFile(path.join(tree, "init"), INIT, { mode: 0o755 });
    const list = (await run("find", ["."], { cwd: tree })).stdout;
    const cpio = await run("cpio", ["-o", "-H", "newc", "--quiet"], { cwd: tree, input: list });
    const initrd = path.join(dir, "bare.cpio");
    await fs.writeFile(initrd, cpio.stdoutBytes);
    const mem = path.join(dir, "memory.ram");
    const state = path.join(dir, "state.bin");
    const server = net.createServer();

    // The template VM.
    const tqmp = path.join(dir, "t.qmp");
    await new Promise<void>((r) => server.listen(tqmp, r));
    const template = startQemu(
      o,
      [
        ...machineArgs(o, mem, initrd).map((a) =>
          a.startsWith("memory-backend-file") ? `${a},share=on` : a,
        ),
      ],
      tqmp,
    );
    procs.push(template);
    const qmp = await qmpOver(tqmp, server);
    await waitOutput(template, "FB_BARE_READY", 300_000);
    await new Promise((r) => setTimeout(r, 1000));
    await qmp.execute("stop");
    await qmp.execute("migrate-set-capabilities", {
      capabilities: [
        { capability: "x-ignore-shared", state: true },
        { capability: "events", state: true },
      ],
    });
    const done = qmp.waitEvent(
      "MIGRATION",
      60_000,
      (e) => e.data?.["status"] === "completed" || e.data?.["status"] === "failed",
    );
    await qmp.execute("migrate", { uri: `file:${state}` });
    await done;
    await qmp.execute("quit").catch(() => {});
    await once(template, "exit");
    server.close();
    await fs.chmod(mem, 0o444);
    const stateBytes = (await fs.stat(state)).size;

    const clone = async (i: number): Promise<{ ms: number; proc: ChildProcess; qmp: QmpClient }> => {
      const sock = path.join(dir, `c${i}.qmp`);
      const srv = net.createServer();
      await new Promise<void>((r) => srv.listen(sock, r));
      const args = machineArgs(o, mem, initrd).map((a) =>
        a.startsWith("memory-backend-file") ? `${a},share=off,readonly=on,rom=off` : a,
      );
      const t0 = performance.now();
      const proc = startQemu(o, [...args, "-incoming", "defer"], sock);
      procs.push(proc);
      const c = await qmpOver(sock, srv);
      srv.close();
      await c.execute("migrate-set-capabilities", {
        capabilities: [
          { capability: "x-ignore-shared", state: true },
          { capability: "events", state: true },
        ],
      });
      const loaded = c.waitEvent(
        "MIGRATION",
        60_000,
        (e) => e.data?.["status"] === "completed" || e.data?.["status"] === "failed",
      );
      await c.execute("migrate-incoming", { uri: `file:${state}` });
      await loaded;
      await c.execute("cont");
      // The shell's answer, not the terminal's echo of the command line.
      const echoed = waitOutput(proc, `FB_ECHO_${i + 1000000}`, 60_000);
      proc.stdin?.write(`echo FB_ECHO_$((${i}+1000000))\n`);
      await echoed;
      return { ms: performance.now() - t0, proc, qmp: c };
    };
    const restoreMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      const c = await clone(i);
      restoreMs.push(c.ms);
      c.proc.kill("SIGKILL");
      await once(c.proc, "exit").catch(() => {});
    }
    const idle = [];
    for (let i = 0; i < concurrent; i++) idle.push(await clone(1000 + i));
    await new Promise((r) => setTimeout(r, 2000));
    const pss = await Promise.all(idle.map((c) => pssMib(c.proc.pid!)));
    return { restoreMs, pssMib: pss, stateBytes };
  } finally {
    // A process killed by a signal has exitCode null (and signalCode set):
    // waiting for its exit again would never settle.
    const running = procs.filter((p) => p.exitCode === null && p.signalCode === null);
    const exited = running.map((p) => once(p, "exit").catch(() => {}));
    for (const p of running) p.kill("SIGKILL");
    await Promise.all(exited);
    await fs.rm(dir, { recursive: true, force: true });
  }
}
