// firebreak doctor: every host requirement set-up relies on, checked for real,
// each with the command that fixes it; then (when those hold) the runtime is
// opened to prepare the guest kernel and probe the accelerator (KVM, or why
// TCG). Exits 1 when a hard requirement is missing.
import fs from "node:fs";
import { FirebreakError } from "@firebreak/node-agent";
import { run } from "@firebreak/node-agent/host";
import {
  cgroupCheck,
  diskCheck,
  type HostCheck,
  KVM_FIX,
  kvmDevice,
  netnsCheck,
  nftablesCheck,
  nodeCheck,
  qemuCheck,
  rootCheck,
  toolsCheck,
  tunCheck,
} from "../host-checks.ts";
import { config, localRuntime } from "../local.ts";
import { printJson } from "../output.ts";
import { runningServer, serverFiles } from "../server-files.ts";
import { SYSTEMD_UNIT } from "./down.ts";

interface DoctorReport {
  /** No hard requirement is missing. */
  ok: boolean;
  checks: HostCheck[];
  node: string;
  stateDir: string;
  freeMib: number;
  qemu: string;
  kernel?: { package: string; version: string };
  accelerator?: string;
  acceleratorReason?: string;
}

async function serviceCheck(): Promise<HostCheck> {
  const pid = runningServer(serverFiles(config.stateDir));
  const running = pid
    ? `firebreak up is running on ${config.stateDir} (pid ${pid})`
    : "firebreak up is not running";
  if (!fs.existsSync("/run/systemd/system")) {
    return {
      name: "service",
      status: "info",
      detail: `${running}; systemd is not running here`,
      ...(pid ? {} : { fix: "firebreak up --detach (stop: firebreak down)" }),
    };
  }
  const enabled = await run("systemctl", ["is-enabled", SYSTEMD_UNIT], { allowFailure: true });
  const active = await run("systemctl", ["is-active", SYSTEMD_UNIT], { allowFailure: true });
  const state = `${SYSTEMD_UNIT} ${enabled.stdout.trim() || "not installed"}, ${active.stdout.trim()}`;
  return {
    name: "service",
    status: "info",
    detail: `${state}; ${running}`,
    ...(active.exitCode === 0
      ? {}
      : {
          fix:
            enabled.exitCode === 0 || enabled.stdout.trim() === "disabled"
              ? "systemctl enable --now firebreak"
              : "scripts/setup.sh installs the unit",
        }),
  };
}

export async function doctorCommand(opts: { json?: boolean }): Promise<void> {
  const root = rootCheck();
  const checks: HostCheck[] = [root, nodeCheck(), ...(await toolsCheck())];
  const { check: qemu, version: qemuVersion } = await qemuCheck();
  const { check: disk, freeMib } = await diskCheck(config.stateDir);
  checks.push(qemu, disk);
  if (root.status === "ok") {
    checks.push(await tunCheck(), await netnsCheck(), await nftablesCheck(), await cgroupCheck());
  }
  const report: DoctorReport = {
    ok: false,
    checks,
    node: process.version,
    stateDir: config.stateDir,
    freeMib,
    qemu: qemuVersion,
  };

  // The guest kernel and the accelerator need the runtime: open it when the
  // requirements it uses hold (it prepares the kernel and probes KVM).
  const kvmProblem = await kvmDevice();
  const blocking = checks.filter((c) => c.status === "fail" && c.name !== "disk");
  if (blocking.length === 0) {
    try {
      const rt = await localRuntime();
      report.kernel = { package: rt.kernel.package, version: rt.kernel.version };
      report.accelerator = rt.accel.accel;
      report.acceleratorReason = rt.accel.reason;
      checks.push({
        name: "guest kernel",
        status: "ok",
        detail: `${rt.kernel.package} ${rt.kernel.version}`,
      });
      checks.push(
        rt.accel.accel === "kvm"
          ? { name: "accelerator", status: "ok", detail: `kvm: ${rt.accel.reason}` }
          : {
              name: "accelerator",
              status: "warn",
              detail: `tcg: ${kvmProblem ?? rt.accel.reason}`,
              fix: kvmProblem
                ? KVM_FIX
                : "none needed (TCG works); KVM is used on hosts whose /dev/kvm runs a stock guest kernel (hardware VT-x/AMD-V), re-probed after each reboot",
            },
      );
      await rt.close();
    } catch (e) {
      const code = e instanceof FirebreakError ? `${e.code}: ` : "";
      checks.push({
        name: "guest kernel",
        status: "fail",
        detail: `the runtime could not be opened: ${code}${(e as Error).message}`,
        fix: "apt-get update, then scripts/setup.sh; check the Debian mirror is reachable and the state dir has room",
      });
    }
  } else {
    checks.push({
      name: "accelerator",
      status: kvmProblem ? "warn" : "info",
      detail: kvmProblem
        ? `tcg: ${kvmProblem}`
        : "/dev/kvm is usable; not probed until the failures above are fixed",
      ...(kvmProblem ? { fix: KVM_FIX } : {}),
    });
  }
  checks.push(await serviceCheck());
  report.ok = !checks.some((c) => c.status === "fail");

  if (opts.json) printJson(report);
  else {
    const width = Math.max(...checks.map((c) => c.name.length));
    for (const c of checks) {
      const tag = { ok: "ok  ", warn: "warn", fail: "FAIL", info: "info" }[c.status];
      process.stdout.write(`${tag}  ${c.name.padEnd(width)}  ${c.detail}\n`);
      if (c.fix && c.status !== "ok") process.stdout.write(`      ${" ".repeat(width)}  fix: ${c.fix}\n`);
    }
    const failed = checks.filter((c) => c.status === "fail").length;
    process.stdout.write(
      failed
        ? `\n${failed} hard requirement(s) missing: run the fixes above, then firebreak doctor again\n`
        : "\nevery hard requirement is met\n",
    );
  }
  if (!report.ok) process.exitCode = 1;
}
