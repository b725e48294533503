// firebreak bench: named figures with units, measured in one run, side by side
// with reference points on the same machine (bare QEMU boot of the same kernel
// to a shell; gVisor's runsc and bubblewrap when installed).
import fs from "node:fs/promises";
import { qemuArgs } from "@firebreak/node-agent";
import { run } from "@firebreak/node-agent/host";
import { localRuntime, resolveTemplate } from "../local.ts";
import { printJson, progressPrinter } from "../output.ts";

interface Figure {
  name: string;
  value: number;
  unit: string;
  note?: string;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return Math.round((s[i] ?? Number.NaN) * 10) / 10;
}

async function rssMib(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

export async function benchCommand(opts: { boots: number; execs: number; idle: number; json?: boolean }) {
  const figures: Figure[] = [];
  const say = (f: Figure) => {
    figures.push(f);
    if (!opts.json)
      process.stdout.write(
        `${f.name.padEnd(44)} ${String(f.value).padStart(9)} ${f.unit}${f.note ? `  (${f.note})` : ""}\n`,
      );
  };
  const template = await resolveTemplate("base", progressPrinter(false));
  const rt = await localRuntime();
  if (!opts.json)
    process.stdout.write(
      `accelerator: ${rt.accel.accel} (${rt.accel.reason}); template base ${template.key.slice(0, 12)}\n\n`,
    );
  try {
    // 1. Cold boot to agent-ready (create returns once the agent answered init).
    const boots: number[] = [];
    const uptimes: number[] = [];
    for (let i = 0; i < opts.boots; i++) {
      const sb = await rt.create({ template, forceCold: true });
      boots.push(sb.timings!.totalMs);
      uptimes.push(sb.timings!.guestUptimeMs ?? Number.NaN);
      await rt.kill(sb.id);
    }
    say({
      name: "cold boot to agent-ready p50",
      value: pct(boots, 50),
      unit: "ms",
      note: `n=${boots.length}`,
    });
    say({ name: "cold boot to agent-ready p90", value: pct(boots, 90), unit: "ms" });
    say({ name: "  guest uptime at agent-ready p50", value: pct(uptimes, 50), unit: "ms" });

    // 2. Command round trip on a ready sandbox.
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

    // 3. Host memory per idle 256 MiB sandbox.
    const idle = [];
    for (let i = 0; i < opts.idle; i++) idle.push(await rt.create({ template, shape: { memoryMib: 256 } }));
    await new Promise((r) => setTimeout(r, 3000));
    const rss: number[] = [];
    for (const s of idle) rss.push(await rssMib(s.vm!.pid));
    say({
      name: "host memory per idle 256 MiB sandbox (RSS)",
      value: Math.round(rss.reduce((a, b) => a + b, 0) / rss.length),
      unit: "MiB",
      note: `mean of ${rss.length}`,
    });
    for (const s of idle) await rt.kill(s.id);

    // 4. Reference: bare QEMU boot of the same kernel to a shell (initramfs busybox sh).
    const bare: number[] = [];
    for (let i = 0; i < Math.min(opts.boots, 10); i++) bare.push(await bareBoot(rt));
    say({
      name: "reference: bare QEMU boot to a shell p50",
      value: pct(bare, 50),
      unit: "ms",
      note: "same kernel, no disk, no agent",
    });

    // 5. Peers on this machine.
    for (const [label, cmd, args] of [
      ["reference: gVisor runsc do echo p50", "runsc", ["--network=none", "do", "/bin/echo", "hi"]],
      [
        "reference: bubblewrap echo p50",
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
          process.stdout.write(`${label.padEnd(44)} unavailable: ${(e as Error).message.split("\n")[0]}\n`);
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
    dir: "/tmp",
    vmlinux: rt.kernel.vmlinux,
    initramfs: rt.initramfs,
    rootDisk: "/dev/null",
    vcpus: 1,
    memoryMib: 256,
    accel: rt.accel.accel,
    tscKhz: rt.tscKhz,
    uid: 0,
    gid: 0,
  });
  // Keep the machine, kernel and cmdline; drop the disk, sockets and devices.
  const keep: string[] = [];
  for (let i = 0; i < args.length; i += 2) {
    const flag = args[i]!;
    if (["-name", "-M", "-accel", "-cpu", "-smp", "-m", "-kernel", "-initrd"].includes(flag))
      keep.push(flag, args[i + 1]!);
    if (flag === "-append") keep.push(flag, `${args[i + 1]} fb.probe=1`);
    if (["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"].includes(flag)) {
      keep.push(flag);
      i--;
    }
  }
  const t0 = performance.now();
  const res = await run("qemu-system-x86_64", [...keep, "-serial", "stdio"], {
    timeoutMs: 60_000,
    allowFailure: true,
  });
  if (!res.stdout.includes("FIREBREAK_PROBE_OK"))
    throw new Error(`bare boot failed: ${res.stderr.slice(0, 300)}`);
  return performance.now() - t0;
}
