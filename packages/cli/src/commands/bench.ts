// firebreak bench: named figures with units, measured in one run, side by side:
// the three start paths (warm claim, snapshot restore, cold boot), concurrency,
// command round trip, host memory per idle sandbox, and reference points on the
// same machine (bare QEMU boot of the same kernel to a shell; gVisor's runsc
// and bubblewrap when installed).
import fs from "node:fs/promises";
import { qemuArgs, type Sandbox } from "@firebreak/node-agent";
import { run } from "@firebreak/node-agent/host";
import { localRuntime, resolveTemplate } from "../local.ts";
import { printJson, progressPrinter } from "../output.ts";

interface Figure {
  name: string;
  value: number;
  unit: string;
  note?: string;
}

export interface BenchOptions {
  boots: number;
  restores: number;
  claims: number;
  concurrent: number;
  execs: number;
  idle: number;
  /** Start this many idle sandboxes and report how many one node holds. */
  density?: number;
  json?: boolean;
}

export function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return Math.round((s[i] ?? Number.NaN) * 10) / 10;
}

async function memoryOf(pid: number): Promise<{ rss: number; pss: number }> {
  const roll = await fs.readFile(`/proc/${pid}/smaps_rollup`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(roll)?.[1] ?? 0);
  return { rss: kb("Rss") / 1024, pss: kb("Pss") / 1024 };
}

async function memAvailableMib(): Promise<number> {
  const info = await fs.readFile("/proc/meminfo", "utf8");
  return Number(/^MemAvailable:\s+(\d+)/m.exec(info)?.[1] ?? 0) / 1024;
}

export async function benchCommand(opts: BenchOptions) {
  const figures: Figure[] = [];
  const say = (f: Figure) => {
    figures.push(f);
    if (!opts.json) {
      process.stdout.write(
        `${f.name.padEnd(52)} ${String(f.value).padStart(9)} ${f.unit}${f.note ? `  (${f.note})` : ""}\n`,
      );
    }
  };
  const section = (title: string) => {
    if (!opts.json) process.stdout.write(`\n${title}\n`);
  };
  const template = await resolveTemplate("base", progressPrinter(false));
  const rt = await localRuntime();
  await rt.prepareSnapshot(template);
  if (!opts.json) {
    process.stdout.write(
      `accelerator: ${rt.accel.accel} (${rt.accel.reason})\ntemplate base ${template.key.slice(0, 12)}, shape 1 vCPU / 256 MiB\n`,
    );
  }
  const timed = async (create: () => Promise<Sandbox>) => {
    const t0 = performance.now();
    const sb = await create();
    return { sb, ms: performance.now() - t0 };
  };
  const report = (label: string, xs: number[], path: string) => {
    say({ name: `${label} p50`, value: pct(xs, 50), unit: "ms", note: `n=${xs.length}, path ${path}` });
    say({ name: `${label} p90`, value: pct(xs, 90), unit: "ms" });
    say({ name: `${label} p99`, value: pct(xs, 99), unit: "ms" });
  };
  try {
    // 1. The three start paths, create call to usable (agent answered init).
    section("create to usable, by start path");
    const warm: number[] = [];
    rt.pools.maxTotal = Math.max(opts.claims, opts.concurrent);
    await rt.fillPool(template, opts.claims);
    rt.pools.stop(); // claims below must not trigger refills that compete for the CPU
    for (let i = 0; i < opts.claims; i++) {
      const { sb, ms } = await timed(() => rt.create({ template }));
      if (sb.timings?.path === "warm") warm.push(ms);
      await rt.kill(sb.id);
    }
    report("warm claim to usable", warm, "warm");
    const restores: number[] = [];
    for (let i = 0; i < opts.restores; i++) {
      const { sb, ms } = await timed(() => rt.create({ template }));
      if (sb.timings?.path === "snapshot") restores.push(ms);
      await rt.kill(sb.id);
    }
    report("snapshot restore to usable", restores, "snapshot");
    const boots: number[] = [];
    const uptimes: number[] = [];
    for (let i = 0; i < opts.boots; i++) {
      const { sb, ms } = await timed(() => rt.create({ template, forceCold: true }));
      boots.push(ms);
      uptimes.push(sb.timings?.guestUptimeMs ?? Number.NaN);
      await rt.kill(sb.id);
    }
    report("cold boot to usable", boots, "cold");
    say({ name: "  guest uptime at agent ready (cold) p50", value: pct(uptimes, 50), unit: "ms" });

    // 2. Concurrency: N creates at once, empty pool (restores) and full pool.
    section(`${opts.concurrent} concurrent creates`);
    for (const pooled of [false, true]) {
      if (pooled) {
        await rt.fillPool(template, opts.concurrent);
        rt.pools.stop();
      }
      const t0 = performance.now();
      // allSettled: a failed create must not leave the others running untracked.
      const settled = await Promise.allSettled(
        Array.from({ length: opts.concurrent }, () => timed(() => rt.create({ template }))),
      );
      const all = performance.now() - t0;
      const results = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
      const failed = settled.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : []));
      if (failed.length) {
        await Promise.all(results.map((r) => rt.kill(r.sb.id)));
        throw new Error(`${failed.length} of ${opts.concurrent} concurrent creates failed: ${failed[0]}`);
      }
      const xs = results.map((r) => r.ms);
      const paths = [...new Set(results.map((r) => r.sb.timings?.path))].join("+");
      const label = pooled ? `pool of ${opts.concurrent}` : "empty pool";
      say({ name: `${label}: all usable after`, value: Math.round(all), unit: "ms", note: `paths ${paths}` });
      say({ name: `${label}: create to usable p50`, value: pct(xs, 50), unit: "ms" });
      say({ name: `${label}: create to usable p99`, value: pct(xs, 99), unit: "ms" });
      await Promise.all(results.map((r) => rt.kill(r.sb.id)));
    }

    // 3. Command round trip on a ready sandbox.
    section("commands");
    const sb = await rt.create({ template });
    const rtts: number[] = [];
    for (let i = 0; i < opts.execs; i++) {
      const t0 = performance.now();
      await sb.exec(["true"]);
      rtts.push(performance.now() - t0);
    }
    say({
      name: "command round trip (true) p50",
      value: pct(rtts, 50),
      unit: "ms",
      note: `n=${rtts.length}`,
    });
    say({ name: "command round trip (true) p90", value: pct(rtts, 90), unit: "ms" });
    await rt.kill(sb.id);

    // 4. Host memory per idle 256 MiB sandbox (restored from the snapshot).
    section(`host memory, ${opts.idle} idle 256 MiB sandboxes`);
    const before = await memAvailableMib();
    const idle: Sandbox[] = [];
    for (let i = 0; i < opts.idle; i++) idle.push(await rt.create({ template }));
    await new Promise((r) => setTimeout(r, 5000));
    const mems = await Promise.all(idle.map((s) => memoryOf(s.vm!.pid)));
    const after = await memAvailableMib();
    const mean = (xs: number[]) => Math.round(xs.reduce((a, b) => a + b, 0) / xs.length);
    say({ name: "RSS per sandbox (QEMU process)", value: mean(mems.map((m) => m.rss)), unit: "MiB" });
    say({ name: "PSS per sandbox (shared pages split)", value: mean(mems.map((m) => m.pss)), unit: "MiB" });
    say({
      name: "host MemAvailable drop per sandbox",
      value: Math.round((before - after) / idle.length),
      unit: "MiB",
      note: "includes page cache",
    });
    await Promise.all(idle.map((s) => rt.kill(s.id)));

    // 5. Density: idle 256 MiB sandboxes on this node, until the count or a failure.
    if (opts.density) {
      section(`density: up to ${opts.density} idle 256 MiB sandboxes`);
      const held: Sandbox[] = [];
      const start = await memAvailableMib();
      let failure = "";
      for (let i = 0; i < opts.density; i++) {
        try {
          held.push(await rt.create({ template }));
        } catch (e) {
          failure = (e as Error).message.split("\n")[0] ?? "";
          break;
        }
      }
      await new Promise((r) => setTimeout(r, 5000));
      const used = start - (await memAvailableMib());
      say({
        name: "idle sandboxes held",
        value: held.length,
        unit: "sandboxes",
        ...(failure ? { note: failure } : {}),
      });
      say({
        name: "host MiB per idle sandbox at that density",
        value: Math.round(used / held.length),
        unit: "MiB",
      });
      const probe = held[held.length - 1];
      if (probe) {
        const t0 = performance.now();
        await probe.exec(["true"]);
        say({
          name: "command round trip at that density",
          value: Math.round(performance.now() - t0),
          unit: "ms",
        });
      }
      await Promise.all(held.map((s) => rt.kill(s.id)));
    }

    // 6. Reference points on this machine.
    section("reference points, same machine");
    const bare: number[] = [];
    for (let i = 0; i < Math.min(opts.boots, 10); i++) bare.push(await bareBoot(rt));
    say({
      name: "bare QEMU boot of the same kernel to a shell p50",
      value: pct(bare, 50),
      unit: "ms",
      note: "no disk, no agent",
    });
    for (const [label, cmd, args] of [
      ["gVisor: runsc do /bin/echo p50", "runsc", ["--network=none", "do", "/bin/echo", "hi"]],
      [
        "bubblewrap: bwrap /bin/echo p50",
        "bwrap",
        ["--ro-bind", "/", "/", "--unshare-all", "/bin/echo", "hi"],
      ],
    ] as const) {
      const times: number[] = [];
      try {
        for (let i = 0; i < 10; i++) {
          const t0 = performance.now();
          await run(cmd, [...args], { timeoutMs: 30_000 });
          times.push(performance.now() - t0);
        }
        say({ name: label, value: pct(times, 50), unit: "ms", note: "process sandbox, not a VM" });
      } catch (e) {
        if (!opts.json)
          process.stdout.write(`${label.padEnd(52)} unavailable: ${(e as Error).message.split("\n")[0]}\n`);
      }
    }
  } finally {
    await rt.close();
  }
  if (opts.json) printJson({ accelerator: rt.accel.accel, figures });
}

async function bareBoot(rt: Awaited<ReturnType<typeof localRuntime>>): Promise<number> {
  const args = qemuArgs({
    name: "fb-bench",
    qemu: rt.qemu,
    dir: "/tmp",
    vmlinux: rt.kernel.vmlinux,
    initramfs: rt.initramfs,
    disk: [{ path: "/dev/null", format: "raw" }],
    launcher: "",
    vcpus: 1,
    memoryMib: 256,
    accel: rt.accel.accel,
    tscKhz: rt.tscKhz,
    uid: 0,
    gid: 0,
  });
  // Keep the machine, kernel and command line; drop the disk, sockets and devices.
  const keep: string[] = [];
  for (let i = 0; i < args.length; i += 2) {
    const flag = args[i]!;
    if (
      ["-name", "-M", "-accel", "-cpu", "-smp", "-m", "-kernel", "-initrd", "-object", "-bios"].includes(flag)
    )
      keep.push(flag, args[i + 1]!);
    if (flag === "-append") keep.push(flag, `${args[i + 1]} fb.probe=1`);
    if (["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"].includes(flag)) {
      keep.push(flag);
      i--;
    }
  }
  const t0 = performance.now();
  const res = await run(rt.qemu.system, [...keep, "-serial", "stdio"], {
    timeoutMs: 60_000,
    allowFailure: true,
  });
  if (!res.stdout.includes("FIREBREAK_PROBE_OK"))
    throw new Error(`bare boot failed: ${res.stderr.slice(0, 300)}`);
  return performance.now() - t0;
}
