// Chooses the accelerator: KVM when a tiny guest actually boots with it,
// otherwise TCG. /dev/kvm existing is not enough (a PVM host exposes /dev/kvm
// but cannot run a stock kernel), so the probe boots our own kernel.
import fs from "node:fs/promises";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import { run } from "../host/exec.ts";
import type { QemuInstall } from "./qemu-install.ts";
import type { Accelerator } from "./qemu-vm.ts";

export interface AccelProbe {
  accel: Accelerator;
  /** Why this accelerator was chosen, for logs and CLI output. */
  reason: string;
  probedAt: string;
  bootId: string;
  kernelSha256: string;
}

const MARKER = "FIREBREAK_PROBE_OK";

export async function probeAccelerator(
  config: NodeConfig,
  kernel: { vmlinux: string; vmlinuxSha256: string },
  initramfs: string,
  qemu: Pick<QemuInstall, "system" | "bios">,
): Promise<AccelProbe> {
  const cacheFile = path.join(config.stateDir, "accel.json");
  const bootId = (await fs.readFile("/proc/sys/kernel/random/boot_id", "utf8").catch(() => "")).trim();
  const forced = process.env["FIREBREAK_ACCEL"];
  if (forced === "tcg" || forced === "kvm") {
    return {
      accel: forced,
      reason: "forced by FIREBREAK_ACCEL",
      probedAt: new Date().toISOString(),
      bootId,
      kernelSha256: kernel.vmlinuxSha256,
    };
  }
  try {
    const cached = JSON.parse(await fs.readFile(cacheFile, "utf8")) as AccelProbe;
    if (cached.bootId === bootId && cached.kernelSha256 === kernel.vmlinuxSha256) return cached;
  } catch {
    // probe below
  }
  const result = await probe(kernel.vmlinux, initramfs, qemu);
  const out: AccelProbe = {
    ...result,
    probedAt: new Date().toISOString(),
    bootId,
    kernelSha256: kernel.vmlinuxSha256,
  };
  await fs.mkdir(config.stateDir, { recursive: true });
  await fs.writeFile(`${cacheFile}.tmp`, JSON.stringify(out, null, 2));
  await fs.rename(`${cacheFile}.tmp`, cacheFile);
  return out;
}

async function probe(
  vmlinux: string,
  initramfs: string,
  qemu: Pick<QemuInstall, "system" | "bios">,
): Promise<{ accel: Accelerator; reason: string }> {
  try {
    await fs.access("/dev/kvm", fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return { accel: "tcg", reason: "/dev/kvm is not available" };
  }
  const res = await run(
    qemu.system,
    [
      "-M",
      "microvm,x-option-roms=off,rtc=on,acpi=on",
      "-bios",
      qemu.bios,
      "-accel",
      "kvm",
      "-cpu",
      "host",
      "-m",
      "128M",
      "-smp",
      "1",
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      "-no-reboot",
      "-kernel",
      vmlinux,
      "-initrd",
      initramfs,
      "-append",
      "console=ttyS0 reboot=k panic=-1 quiet pci=off fb.probe=1",
      "-serial",
      "stdio",
    ],
    { allowFailure: true, timeoutMs: 20_000 },
  );
  if (res.stdout.includes(MARKER)) return { accel: "kvm", reason: "a probe guest booted with KVM" };
  const why =
    (res.stdout + res.stderr)
      .split("\n")
      .find((l) => /KVM|kvm/.test(l))
      ?.trim()
      .slice(0, 200) ?? (res.signal ? "timed out" : `exit ${res.exitCode}`);
  return { accel: "tcg", reason: `KVM probe guest failed (${why}); using TCG software emulation` };
}
