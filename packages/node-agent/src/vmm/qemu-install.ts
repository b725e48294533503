// Where the node's QEMU lives and whether it is new enough. Shared
// copy-on-write snapshots need QEMU >= 8.2 (memory-backend-file with
// readonly=on,rom=off: opened read-only, mapped private and writable); the
// node requires 10, which scripts/setup.sh installs from Debian 12's
// bookworm-backports into /opt/firebreak/qemu/<version>, beside (never over)
// the host's own QEMU (scripts/lib/install-qemu.sh).
import { existsSync } from "node:fs";
import path from "node:path";
import { FirebreakError } from "../errors.ts";
import { run } from "../host/exec.ts";

export const MIN_QEMU_MAJOR = 10;

/** Set-up's install (a symlink to the installed version). */
export const DEFAULT_QEMU_PREFIX = "/opt/firebreak/qemu/current/usr";

export interface QemuInstall {
  /** Directory holding bin/ and share/qemu/ (like /usr). */
  prefix: string;
  /** qemu-system-x86_64 */
  system: string;
  /** qemu-img */
  img: string;
  /**
   * The microvm firmware. QEMU 10's default bios-microvm.bin is SeaBIOS, with
   * which the 6.1 guest kernel does not boot; qboot does (and boots faster).
   */
  bios: string;
  /** `qemu-system-x86_64 --version`, first line. */
  version: string;
  major: number;
  minor: number;
}

/**
 * The prefix to use: FIREBREAK_QEMU_PREFIX, else set-up's install, else the
 * host's /usr (accepted only if new enough).
 */
export function qemuPrefix(env: NodeJS.ProcessEnv = process.env): string {
  const forced = env["FIREBREAK_QEMU_PREFIX"];
  if (forced) return path.resolve(forced);
  return existsSync(path.join(DEFAULT_QEMU_PREFIX, "bin", "qemu-system-x86_64"))
    ? DEFAULT_QEMU_PREFIX
    : "/usr";
}

/** Parses `QEMU emulator version 10.0.2 (...)`. */
export function parseQemuVersion(text: string): { major: number; minor: number } | undefined {
  const m = /QEMU emulator version (\d+)\.(\d+)/.exec(text);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
}

let cached: Promise<QemuInstall> | undefined;

/**
 * The node's QEMU, checked once per process: QEMU_MISSING when it is absent or
 * older than MIN_QEMU_MAJOR, saying how to get it.
 */
export function qemuInstall(): Promise<QemuInstall> {
  cached ??= findQemu(qemuPrefix());
  cached.catch(() => {
    cached = undefined;
  });
  return cached;
}

export async function findQemu(prefix: string): Promise<QemuInstall> {
  const system = path.join(prefix, "bin", "qemu-system-x86_64");
  const fix = `run scripts/setup.sh as root (it installs QEMU ${MIN_QEMU_MAJOR} from bookworm-backports into /opt/firebreak/qemu), or set FIREBREAK_QEMU_PREFIX to the prefix of a QEMU >= ${MIN_QEMU_MAJOR}`;
  const res = await run(system, ["--version"], { allowFailure: true }).catch((e: Error) => ({
    exitCode: -1,
    stdout: "",
    stderr: e.message,
  }));
  const first = res.stdout.split("\n")[0]?.trim() ?? "";
  const v = parseQemuVersion(first);
  if (res.exitCode !== 0 || !v) {
    throw new FirebreakError("QEMU_MISSING", `no working QEMU at ${system}; ${fix}`);
  }
  if (v.major < MIN_QEMU_MAJOR) {
    throw new FirebreakError(
      "QEMU_MISSING",
      `${system} is QEMU ${v.major}.${v.minor}; shared copy-on-write snapshots need QEMU >= ${MIN_QEMU_MAJOR}: ${fix}`,
    );
  }
  const bios = path.join(prefix, "share", "qemu", "qboot.rom");
  if (!existsSync(bios)) {
    throw new FirebreakError("QEMU_MISSING", `${bios} (the microvm firmware, qboot) is missing; ${fix}`);
  }
  return {
    prefix,
    system,
    img: path.join(prefix, "bin", "qemu-img"),
    bios,
    version: first,
    ...v,
  };
}
