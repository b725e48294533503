// Per-sandbox cgroups that bound what one QEMU process may take from the host:
// CPU time, memory and process count, and freeze it while it is idle.
// Supports cgroup v1 (one hierarchy per controller, as on this machine) and
// the unified v2 hierarchy.
import fs from "node:fs/promises";
import path from "node:path";

const ROOT = process.env["FIREBREAK_CGROUP_ROOT"] ?? "/sys/fs/cgroup";
const GROUP = "firebreak";
const V1_CONTROLLERS = ["cpu", "cpuacct", "memory", "pids"] as const;
/** cgroup v1's freezer, used where the host mounts it (idle sandboxes are frozen there). */
const V1_FREEZER = "freezer";

export interface CgroupLimits {
  /** CPU bandwidth in whole vCPUs (cfs quota = vcpus x period). */
  vcpus: number;
  /** Hard memory limit for the whole QEMU process (guest RAM + VMM overhead). */
  memoryBytes: number;
  /** Maximum number of tasks (QEMU threads). */
  pids: number;
}

export interface CgroupUsage {
  cpuNanos: number;
  memoryBytes: number;
  memoryPeakBytes: number;
}

async function isV2(): Promise<boolean> {
  try {
    await fs.access(path.join(ROOT, "cgroup.controllers"));
    return true;
  } catch {
    return false;
  }
}

export class SandboxCgroup {
  readonly name: string;
  readonly #v2: boolean;
  readonly #v1Freezer: boolean;

  private constructor(name: string, v2: boolean, v1Freezer: boolean) {
    this.name = name;
    this.#v2 = v2;
    this.#v1Freezer = v1Freezer;
  }

  static async open(name: string): Promise<SandboxCgroup> {
    const v2 = await isV2();
    const v1Freezer =
      !v2 &&
      (await fs.access(path.join(ROOT, V1_FREEZER, "cgroup.procs")).then(
        () => true,
        () => false,
      ));
    return new SandboxCgroup(name, v2, v1Freezer);
  }

  /** Every directory this cgroup occupies (QEMU's pid goes into each). */
  dirs(): string[] {
    if (this.#v2) return [path.join(ROOT, GROUP, this.name)];
    return [...V1_CONTROLLERS, ...(this.#v1Freezer ? [V1_FREEZER] : [])].map((c) =>
      path.join(ROOT, c, GROUP, this.name),
    );
  }

  async create(limits: CgroupLimits): Promise<void> {
    const periodUs = 100_000;
    const quotaUs = Math.round(limits.vcpus * periodUs);
    if (this.#v2) {
      const parent = path.join(ROOT, GROUP);
      await fs.mkdir(parent, { recursive: true });
      await fs.writeFile(path.join(ROOT, "cgroup.subtree_control"), "+cpu +memory +pids").catch(() => {});
      await fs.writeFile(path.join(parent, "cgroup.subtree_control"), "+cpu +memory +pids").catch(() => {});
      const dir = this.dirs()[0]!;
      await fs.mkdir(dir, { recursive: true });
      await fs.writeFile(path.join(dir, "cpu.max"), `${quotaUs} ${periodUs}`);
      await fs.writeFile(path.join(dir, "memory.max"), String(limits.memoryBytes));
      await fs.writeFile(path.join(dir, "memory.swap.max"), "0").catch(() => {});
      await fs.writeFile(path.join(dir, "pids.max"), String(limits.pids));
      return;
    }
    for (const dir of this.dirs()) await fs.mkdir(dir, { recursive: true });
    const [cpu, , memory, pids] = this.dirs() as [string, string, string, string];
    await fs.writeFile(path.join(cpu, "cpu.cfs_period_us"), String(periodUs));
    await fs.writeFile(path.join(cpu, "cpu.cfs_quota_us"), String(quotaUs));
    await fs.writeFile(path.join(memory, "memory.limit_in_bytes"), String(limits.memoryBytes));
    await fs.writeFile(path.join(pids, "pids.max"), String(limits.pids));
  }

  /** Moves a whole process (all its threads) into the cgroup. */
  async add(pid: number): Promise<void> {
    for (const dir of this.dirs()) await fs.writeFile(path.join(dir, "cgroup.procs"), String(pid));
  }

  async usage(): Promise<CgroupUsage> {
    const read = (f: string) =>
      fs.readFile(f, "utf8").then(
        (s) => s.trim(),
        () => "0",
      );
    if (this.#v2) {
      const dir = this.dirs()[0]!;
      const stat = await read(path.join(dir, "cpu.stat"));
      const usec = Number(/usage_usec (\d+)/.exec(stat)?.[1] ?? 0);
      return {
        cpuNanos: usec * 1000,
        memoryBytes: Number(await read(path.join(dir, "memory.current"))),
        memoryPeakBytes: Number(await read(path.join(dir, "memory.peak"))),
      };
    }
    const [, cpuacct, memory] = this.dirs() as [string, string, string, string];
    return {
      cpuNanos: Number(await read(path.join(cpuacct, "cpuacct.usage"))),
      memoryBytes: Number(await read(path.join(memory, "memory.usage_in_bytes"))),
      memoryPeakBytes: Number(await read(path.join(memory, "memory.max_usage_in_bytes"))),
    };
  }

  /**
   * Freezes (or thaws) every process in the cgroup: a frozen QEMU runs no
   * instruction until thawed. Resolves with whether the kernel reports the
   * new state within a second.
   */
  async freeze(on: boolean): Promise<boolean> {
    const v2 = this.#v2;
    if (!v2 && !this.#v1Freezer) return false;
    const dir = v2 ? this.dirs()[0]! : path.join(ROOT, V1_FREEZER, GROUP, this.name);
    const [file, value, stateFile, want] = v2
      ? ["cgroup.freeze", on ? "1" : "0", "cgroup.events", `frozen ${on ? 1 : 0}`]
      : ["freezer.state", on ? "FROZEN" : "THAWED", "freezer.state", on ? "FROZEN" : "THAWED"];
    await fs.writeFile(path.join(dir, file), value);
    for (let i = 0; i < 100; i++) {
      const state = await fs.readFile(path.join(dir, stateFile), "utf8").catch(() => "");
      if (state.includes(want)) return true;
      await new Promise((r) => setTimeout(r, 10));
    }
    return false;
  }

  /** Removes the cgroup; idempotent. Processes still inside are killed first. */
  async destroy(): Promise<void> {
    // A frozen task does not act on SIGKILL until thawed (cgroup v1).
    await this.freeze(false).catch(() => {});
    for (const dir of this.dirs()) {
      const procs = await fs.readFile(path.join(dir, "cgroup.procs"), "utf8").catch(() => "");
      for (const pid of procs.split("\n").filter(Boolean)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    for (const dir of this.dirs()) {
      for (let i = 0; i < 50; i++) {
        try {
          await fs.rmdir(dir);
          break;
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          if (code !== "EBUSY") throw e;
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }
  }
}

/** Names of every sandbox cgroup present (for the reconciler). */
export async function listSandboxCgroups(): Promise<string[]> {
  const base = (await isV2()) ? path.join(ROOT, GROUP) : path.join(ROOT, "memory", GROUP);
  try {
    const entries = await fs.readdir(base, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}
