import fs from "node:fs/promises";
import { config, localRuntime } from "../local.ts";
import { printJson } from "../output.ts";

export async function doctorCommand(opts: { json?: boolean }): Promise<void> {
  const rt = await localRuntime();
  // The runtime refuses a QEMU older than 10 (QEMU_MISSING, with the fix).
  const qemu = `${rt.qemu.version} (${rt.qemu.system})`;
  const st = await fs.statfs(config.stateDir);
  const report = {
    node: process.version,
    stateDir: config.stateDir,
    freeMib: Math.floor((st.bavail * st.bsize) / 2 ** 20),
    qemu,
    kernel: { package: rt.kernel.package, version: rt.kernel.version },
    accelerator: rt.accel.accel,
    acceleratorReason: rt.accel.reason,
  };
  if (opts.json) printJson(report);
  else {
    process.stdout.write(
      `node        ${report.node}\nstate dir   ${report.stateDir} (${report.freeMib} MiB free)\nqemu        ${report.qemu}\n` +
        `kernel      ${report.kernel.package} ${report.kernel.version}\naccelerator ${report.accelerator}: ${report.acceleratorReason}\n`,
    );
  }
  await rt.close();
}
