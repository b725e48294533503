// Where a node keeps its state, and the defaults every sandbox starts from.
import path from "node:path";

export interface NodeConfig {
  /** Root of everything this node stores. @default FIREBREAK_STATE_DIR or /var/lib/firebreak */
  stateDir: string;
  /**
   * QEMU runs as an unprivileged uid of its own per sandbox: base + slot (gid the
   * same), so an escaped VMM cannot read or write another sandbox's files.
   * Numeric ids need no passwd entry. @default FIREBREAK_VM_UID_BASE or 2000000
   */
  vmUidBase: number;
  /** Address pool for the host side of sandbox veths. @default FIREBREAK_HOST_POOL or 10.211.0.0/16 */
  hostPool: string;
  /**
   * Host-wide registry of sandbox owners and network slots. Namespaces, veths,
   * cgroups and QEMU processes are host-global, so ownership is too: every
   * Firebreak process on the host (whatever its state dir) shares this.
   * @default FIREBREAK_RUN_DIR or /run/firebreak
   */
  runDir: string;
  /**
   * Freeze a running sandbox (its QEMU, in its cgroup) once it has used
   * almost no CPU and had no connection open for this long; any request to
   * it thaws it first. A frozen sandbox costs no host CPU, and its own timers
   * wait too (a `sleep 600; work` in it runs late). 0: never.
   * @default FIREBREAK_FREEZE_IDLE_MS or 0
   */
  freezeIdleMs?: number;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): NodeConfig {
  return {
    stateDir: path.resolve(env["FIREBREAK_STATE_DIR"] ?? "/var/lib/firebreak"),
    vmUidBase: Number(env["FIREBREAK_VM_UID_BASE"] ?? 2_000_000),
    hostPool: env["FIREBREAK_HOST_POOL"] ?? "10.211.0.0/16",
    runDir: path.resolve(env["FIREBREAK_RUN_DIR"] ?? "/run/firebreak"),
    freezeIdleMs: Number(env["FIREBREAK_FREEZE_IDLE_MS"] ?? 0) || 0,
  };
}

export const paths = {
  kernelDir: (c: NodeConfig) => path.join(c.stateDir, "kernel"),
  initramfsDir: (c: NodeConfig) => path.join(c.stateDir, "initramfs"),
  imagesDir: (c: NodeConfig) => path.join(c.stateDir, "images"),
  templatesDir: (c: NodeConfig) => path.join(c.stateDir, "templates"),
  sandboxesDir: (c: NodeConfig) => path.join(c.stateDir, "sandboxes"),
  cacheDir: (c: NodeConfig) => path.join(c.stateDir, "cache"),
  slotsDir: (c: NodeConfig) => path.join(c.runDir, "slots"),
  ownersDir: (c: NodeConfig) => path.join(c.runDir, "owners"),
};
