// firebreak bench: named figures with units, measured in one run, side by side:
// the start paths (snapshot with and without standby VMs, warm claim, cold
// boot) and the first command after each, concurrency, command round trip,
// fork, host memory and CPU per idle sandbox, density, and reference points on
// the same machine (a bare QEMU 10 templated restore of the same kernel;
// gVisor's runsc and bubblewrap when installed).
import fs from "node:fs/promises";
import { bareTemplatedRestore, type Sandbox } from "@firebreak/node-agent";
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
  /** Forks measured, and children per fork. */
  forks: number;
  forkChildren: number;
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

/** The density run stops when the host has less memory available than this. */
const DENSITY_FLOOR_MIB = 3072;

/** CPU time (utime + stime) of a process, in ms. */
async function cpuMsOf(pid: number): Promise<number> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}

export async function benchCommand(opts: BenchOptions) {
  const figures: Figure[] = [];
  const say = (f: Figure) => {
    figures.push(f);
    if (!opts.json) {
      process.stdout.write(
        `${f.name.padEnd(56)} ${String(f.value).padStart(9)} ${f.unit}${f.note ? `  (${f.note})` : ""}\n`,
      );
    }
  };
  const section = (title: string) => {
    if (!opts.json) process.stdout.write(`\n${title}\n`);
  };
  const template = await resolveTemplate("base", progressPrinter(false));
  const rt = await localRuntime();
  await rt.prepareSnapshot(template);
  const load = (await fs.readFile("/proc/loadavg", "utf8")).split(" ").slice(0, 3).join(" ");
  if (!opts.json) {
    process.stdout.write(
      `accelerator: ${rt.accel.accel} (${rt.accel.reason})\n${rt.qemu.version}\ntemplate base ${template.key.slice(0, 12)}, shape 1 vCPU / 256 MiB; load average at start ${load}\n`,
    );
  }
  const timed = async (create: () => Promise<Sandbox>) => {
    const t0 = performance.now();
    const sb = await create();
    return { sb, ms: performance.now() - t0 };
  };
  const report = (label: string, xs: number[], path: string, p90 = true) => {
    say({ name: `${label} p50`, value: pct(xs, 50), unit: "ms", note: `n=${xs.length}, path ${path}` });
    if (p90) say({ name: `${label} p90`, value: pct(xs, 90), unit: "ms" });
    say({ name: `${label} p99`, value: pct(xs, 99), unit: "ms" });
  };
  const phaseP50 = (sbs: Sandbox[]) => {
    const names = [...new Set(sbs.flatMap((s) => Object.keys(s.timings?.phases ?? {})))];
    return names
      .map(
        (n) =>
          `${n} ${pct(
            sbs.map((s) => s.timings?.phases[n] ?? 0),
            50,
          )}`,
      )
      .join(", ");
  };
  const firstTrue = async (sb: Sandbox) => {
    const t0 = performance.now();
    await sb.exec(["true"]);
    return performance.now() - t0;
  };
  rt.pools.maxTotal = Math.max(opts.claims, opts.concurrent);
  rt.standbys.maxTotal = Math.max(opts.restores, opts.concurrent, 8);
  try {
    // 1. The snapshot path: create to usable (agent acknowledged init), then
    //    the first command. With standby VMs (QEMU spawned, network, cgroup and
    //    disk made ahead) and without (everything on the path).
    section("snapshot path (template memory file mapped copy-on-write), create to usable");
    for (const withStandby of [true, false]) {
      const xs: number[] = [];
      const firsts: number[] = [];
      const made: Sandbox[] = [];
      if (withStandby) {
        await rt.fillStandby(template, opts.restores);
        rt.standbys.stop();
      }
      for (let i = 0; i < opts.restores; i++) {
        const { sb, ms } = await timed(() => rt.create({ template }));
        if (sb.timings?.path === "snapshot") {
          xs.push(ms);
          made.push(sb);
          firsts.push(await firstTrue(sb));
        }
        await rt.kill(sb.id);
      }
      const label = withStandby ? "snapshot path, standby VM" : "snapshot path, QEMU spawned on the path";
      report(`${label}: create to usable`, xs, "snapshot");
      say({ name: "  phases p50", value: xs.length, unit: "starts", note: phaseP50(made) });
      report(`${label}: first true after the start`, firsts, "snapshot", false);
    }

    // 2. Warm pool claims (restored, initialized, warmed VMs).
    section("warm pool, create to usable");
    const warm: number[] = [];
    await rt.fillPool(template, opts.claims);
    rt.pools.stop();
    for (let i = 0; i < opts.claims; i++) {
      const { sb, ms } = await timed(() => rt.create({ template }));
      if (sb.timings?.path === "warm") warm.push(ms);
      await rt.kill(sb.id);
    }
    report("warm claim to usable", warm, "warm");

    // 3. Concurrency: N creates at once.
    section(`${opts.concurrent} concurrent creates`);
    for (const mode of ["standby", "bare", "pool"] as const) {
      if (mode === "standby") {
        await rt.fillStandby(template, opts.concurrent);
        rt.standbys.stop();
      }
      if (mode === "pool") {
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
      const xs = results.map((r) => r.ms);
      const paths = [...new Set(results.map((r) => r.sb.timings?.path))].join("+");
      const label =
        mode === "standby"
          ? "empty warm pool, standby VMs"
          : mode === "bare"
            ? "empty warm pool, no standby VM"
            : `warm pool of ${opts.concurrent}`;
      say({
        name: `${label}: all usable after`,
        value: Math.round(all),
        unit: "ms",
        note: `paths ${paths}${failed.length ? `; ${failed.length} failed: ${failed[0]?.split("\n")[0]}` : ""}`,
      });
      say({ name: `${label}: create to usable p50`, value: pct(xs, 50), unit: "ms" });
      say({ name: `${label}: create to usable p99`, value: pct(xs, 99), unit: "ms" });
      await Promise.all(results.map((r) => rt.kill(r.sb.id)));
    }

    // 4. Command round trip on a ready sandbox (after its first command).
    section("commands");
    const sb = await rt.create({ template });
    await sb.exec(["true"]);
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

    // 5. Fork a running sandbox into 4: from the fork call to each child usable.
    section(`fork into ${opts.forkChildren}`);
    const forkMs: number[] = [];
    const frozenMs: number[] = [];
    for (let i = 0; i < opts.forks; i++) {
      const t0 = Date.now();
      const children = await rt.fork(sb.id, opts.forkChildren);
      for (const c of children) forkMs.push(c.createdAt.getTime() + (c.timings?.totalMs ?? 0) - t0);
      frozenMs.push(Math.min(...children.map((c) => c.createdAt.getTime())) - t0);
      await Promise.all(children.map((c) => rt.kill(c.id)));
    }
    report(`fork into ${opts.forkChildren}: fork call to each child usable`, forkMs, "fork point", false);
    say({
      name: "  of which: parent frozen into a fork point p50",
      value: pct(frozenMs, 50),
      unit: "ms",
      note: "stop, stream RAM to a converter QEMU, device state",
    });
    await rt.kill(sb.id);

    // 6. Host memory and CPU per idle 256 MiB sandbox.
    section(`host memory and CPU, ${opts.idle} idle 256 MiB sandboxes`);
    await rt.fillStandby(template, opts.idle);
    rt.standbys.stop();
    const before = await memAvailableMib();
    const idle: Sandbox[] = [];
    for (let i = 0; i < opts.idle; i++) {
      const s = await rt.create({ template });
      await s.exec(["true"]); // idle after use, as a user's sandbox is
      idle.push(s);
    }
    await new Promise((r) => setTimeout(r, 5000));
    const mems = await Promise.all(idle.map((s) => memoryOf(s.vm!.pid)));
    const after = await memAvailableMib();
    const mean = (xs: number[]) => Math.round((xs.reduce((a, b) => a + b, 0) / xs.length) * 10) / 10;
    say({ name: "RSS per sandbox (QEMU process)", value: mean(mems.map((m) => m.rss)), unit: "MiB" });
    say({ name: "PSS per sandbox (shared pages split)", value: mean(mems.map((m) => m.pss)), unit: "MiB" });
    say({
      name: "host MemAvailable drop per sandbox",
      value: Math.round((before - after) / idle.length),
      unit: "MiB",
      note: "includes page cache",
    });
    const cpu0 = await Promise.all(idle.map((s) => cpuMsOf(s.vm!.pid)));
    const windowMs = 10_000;
    await new Promise((r) => setTimeout(r, windowMs));
    const cpu1 = await Promise.all(idle.map((s) => cpuMsOf(s.vm!.pid)));
    say({
      name: "host CPU per idle sandbox",
      value: mean(cpu1.map((c, i) => (100 * (c - cpu0[i]!)) / windowMs)),
      unit: "% of a core",
      note: `over ${windowMs / 1000} s`,
    });
    await Promise.all(idle.map((s) => rt.kill(s.id)));

    // 7. Density: idle 256 MiB sandboxes on this node, and the round trip then.
    if (opts.density) {
      section(`density: up to ${opts.density} idle 256 MiB sandboxes`);
      const probe = await rt.create({ template });
      await probe.exec(["true"]);
      const rtt = async () => {
        const xs: number[] = [];
        for (let i = 0; i < 10; i++) {
          const t0 = performance.now();
          await probe.exec(["true"]);
          xs.push(performance.now() - t0);
        }
        return pct(xs, 50);
      };
      const quiet = await rtt();
      const held: Sandbox[] = [];
      const start = await memAvailableMib();
      let failure = "";
      rt.standbys.maxTotal = 16;
      await rt.fillStandby(template, 8);
      for (let i = 0; i < opts.density; i++) {
        // Never push a shared host into its OOM killer: stop with room to spare.
        if ((await memAvailableMib()) < DENSITY_FLOOR_MIB) {
          failure = `stopped: host MemAvailable below ${DENSITY_FLOOR_MIB} MiB`;
          break;
        }
        try {
          held.push(await rt.create({ template }));
        } catch (e) {
          failure = (e as Error).message.split("\n")[0] ?? "";
          break;
        }
      }
      rt.standbys.stop();
      await new Promise((r) => setTimeout(r, 10_000));
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
      const busy = await rtt();
      say({ name: "command round trip, no idle sandbox p50", value: quiet, unit: "ms" });
      say({
        name: `command round trip with ${held.length} idle p50`,
        value: busy,
        unit: "ms",
        note: `${Math.round((busy / quiet) * 10) / 10}x`,
      });
      await Promise.all([...held, probe].map((s) => rt.kill(s.id)));
    }

    // 8. Cold boots (the path snapshots avoid).
    if (opts.boots > 0) {
      section("cold boot (no snapshot)");
      const boots: number[] = [];
      for (let i = 0; i < opts.boots; i++) {
        const { sb: s, ms } = await timed(() => rt.create({ template, forceCold: true }));
        boots.push(ms);
        await rt.kill(s.id);
      }
      report("cold boot to usable", boots, "cold", false);
    }

    // 9. Reference points on this machine.
    section("reference points, same machine");
    const bare = await bareTemplatedRestore(
      { qemu: rt.qemu, vmlinux: rt.kernel.vmlinux, accel: rt.accel.accel, tscKhz: rt.tscKhz },
      Math.min(opts.restores, 10),
      Math.min(opts.idle, 5),
    );
    say({
      name: "bare QEMU 10 templated restore to serial echo p50",
      value: pct(bare.restoreMs, 50),
      unit: "ms",
      note: `n=${bare.restoreMs.length}; ~100 MiB touched, state ${Math.round(bare.stateBytes / 1024)} KiB`,
    });
    say({
      name: "bare QEMU 10 templated clone PSS",
      value: mean(bare.pssMib),
      unit: "MiB",
      note: `${bare.pssMib.length} idle clones`,
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
          process.stdout.write(`${label.padEnd(56)} unavailable: ${(e as Error).message.split("\n")[0]}\n`);
      }
    }
  } finally {
    await rt.close();
  }
  const endLoad = (await fs.readFile("/proc/loadavg", "utf8")).split(" ").slice(0, 3).join(" ");
  if (!opts.json) process.stdout.write(`\nload average at the end ${endLoad}\n`);
  if (opts.json) printJson({ accelerator: rt.accel.accel, qemu: rt.qemu.version, load, figures });
}
