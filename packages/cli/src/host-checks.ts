// Host requirements Firebreak's set-up relies on, each checked for real (a
// throwaway network namespace, tap, veth, nftables ruleset and cgroup) and
// each with the command that fixes it. `firebreak doctor` prints them.
import { constants as fsc } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { FirebreakError, MIN_QEMU_MAJOR, type QemuInstall, qemuInstall } from "@firebreak/node-agent";
import { HOST_PATH, run } from "@firebreak/node-agent/host";

export type CheckStatus = "ok" | "warn" | "fail" | "info";

export interface HostCheck {
  name: string;
  /** fail: a hard requirement is missing (doctor exits 1); warn: works, degraded; info: a fact. */
  status: CheckStatus;
  detail: string;
  /** The command (or step) that fixes it. */
  fix?: string;
}

const SETUP = "scripts/setup.sh (as root) does this";

/** Host commands the node runs, and the Debian package of each. */
const REQUIRED_TOOLS: [string, string][] = [
  ["debootstrap", "debootstrap"],
  ["mkfs.ext4", "e2fsprogs"],
  ["cpio", "cpio"],
  ["lz4", "lz4"],
  ["zstd", "zstd"],
  ["gcc", "gcc"],
  ["tini", "tini"],
  ["ip", "iproute2"],
  ["nft", "nftables"],
  ["nsenter", "util-linux"],
  ["setpriv", "util-linux"],
  ["unshare", "util-linux"],
  ["dpkg-deb", "dpkg"],
  ["apt-get", "apt"],
  ["pgrep", "procps"],
  ["fuser", "psmisc"],
];
/** Only `firebreak bench` uses these (the peers it compares against). */
const BENCH_TOOLS: [string, string][] = [
  ["runsc", "runsc"],
  ["bwrap", "bubblewrap"],
];

async function onPath(cmd: string): Promise<boolean> {
  for (const dir of HOST_PATH.split(":")) {
    if (
      await fs.access(path.join(dir, cmd), fsc.X_OK).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

/** The line of a tool's error output that says what went wrong. */
function errorLine(s: string): string {
  const lines = s
    .trim()
    .split("\n")
    .filter((l) => l.trim());
  return (lines.find((l) => /error/i.test(l)) ?? lines.at(-1) ?? "").trim();
}

export function rootCheck(): HostCheck {
  const uid = process.getuid?.() ?? -1;
  return uid === 0
    ? { name: "root", status: "ok", detail: "running as uid 0" }
    : {
        name: "root",
        status: "fail",
        detail: `running as uid ${uid}; the node creates namespaces, taps, nftables rules and cgroups`,
        fix: "run it as root (log in as root, or: su -c 'firebreak doctor')",
      };
}

export function nodeCheck(): HostCheck {
  const major = Number(process.versions.node.split(".")[0]);
  return major === 24
    ? { name: "node", status: "ok", detail: process.version }
    : {
        name: "node",
        status: "warn",
        detail: `${process.version}; Firebreak targets Node.js 24`,
        fix: `scripts/setup.sh (installs Node.js 24 into /opt/firebreak/node)`,
      };
}

export async function toolsCheck(): Promise<HostCheck[]> {
  const missing: [string, string][] = [];
  for (const t of REQUIRED_TOOLS) if (!(await onPath(t[0]))) missing.push(t);
  const busybox = await fs.access("/bin/busybox").then(
    () => true,
    () => false,
  );
  if (!busybox) missing.push(["/bin/busybox", "busybox-static"]);
  const out: HostCheck[] = [
    missing.length
      ? {
          name: "host tools",
          status: "fail",
          detail: `missing: ${missing.map((t) => t[0]).join(", ")}`,
          fix: `apt-get install -y --no-install-recommends ${[...new Set(missing.map((t) => t[1]))].join(" ")} (${SETUP})`,
        }
      : { name: "host tools", status: "ok", detail: `${REQUIRED_TOOLS.length + 1} commands present` },
  ];
  const bench: [string, string][] = [];
  for (const t of BENCH_TOOLS) if (!(await onPath(t[0]))) bench.push(t);
  if (bench.length) {
    out.push({
      name: "bench peers",
      status: "warn",
      detail: `missing: ${bench.map((t) => t[0]).join(", ")} (only firebreak bench needs them)`,
      fix: `apt-get install -y --no-install-recommends ${bench.map((t) => t[1]).join(" ")}`,
    });
  }
  return out;
}

/**
 * /dev/net/tun: present, the right device, and the tun driver answers. Its mode
 * does not matter: only the root node process opens it; QEMU is handed the
 * tap's file descriptor.
 */
export async function tunCheck(device = "/dev/net/tun"): Promise<HostCheck> {
  const create = `mkdir -p ${path.dirname(device)} && mknod -m 0600 ${device} c 10 200 (${SETUP})`;
  let st: import("node:fs").Stats;
  try {
    st = await fs.stat(device);
  } catch {
    return { name: "tun", status: "fail", detail: `${device} does not exist`, fix: create };
  }
  const major = Math.floor(st.rdev / 256);
  const minor = st.rdev % 256;
  if (!st.isCharacterDevice() || major !== 10 || minor !== 200) {
    return {
      name: "tun",
      status: "fail",
      detail: `${device} is not the tun device (char 10:200)`,
      fix: `rm ${device} && ${create}`,
    };
  }
  const mode = (st.mode & 0o777).toString(8).padStart(4, "0");
  try {
    const fh = await fs.open(device, "r+");
    await fh.close();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return {
      name: "tun",
      status: "fail",
      detail: `${device} cannot be opened (${code})`,
      fix:
        code === "ENODEV" || code === "ENXIO"
          ? "modprobe tun (the kernel needs CONFIG_TUN)"
          : code === "EACCES" || code === "EPERM"
            ? "run as root; in a container, allow the device (e.g. docker run --device /dev/net/tun)"
            : "modprobe tun",
    };
  }
  return {
    name: "tun",
    status: "ok",
    detail: `${device} (char 10:200, mode ${mode}; only the node opens it, QEMU gets the tap's descriptor)`,
  };
}

/** A network namespace with a veth pair and a tap in it, and a named namespace (`ip netns`). */
export async function netnsCheck(): Promise<HostCheck> {
  const fix =
    "the kernel needs network namespaces, veth and tun (modprobe veth tun); in a container, give it CAP_NET_ADMIN and CAP_SYS_ADMIN";
  const r = await run("unshare", ["--net", "--", "ip", "-batch", "-"], {
    input: "link add fbdoctor0 type veth peer name fbdoctor1\ntuntap add dev fbdoctor2 mode tap\n",
    allowFailure: true,
    timeoutMs: 20_000,
  }).catch((e: Error) => ({ exitCode: -1, stderr: e.message, stdout: "" }));
  if (r.exitCode !== 0) {
    return {
      name: "netns",
      status: "fail",
      detail: `a throwaway namespace with a veth and a tap failed: ${errorLine(r.stderr || r.stdout)}`,
      fix,
    };
  }
  const name = `firebreak-doctor-${process.pid}`;
  const add = await run("ip", ["netns", "add", name], { allowFailure: true });
  await run("ip", ["netns", "del", name], { allowFailure: true });
  if (add.exitCode !== 0) {
    return {
      name: "netns",
      status: "fail",
      detail: `ip netns add failed: ${errorLine(add.stderr)}`,
      fix: "/run must be writable by root (ip netns keeps namespaces in /run/netns)",
    };
  }
  return { name: "netns", status: "ok", detail: "network namespaces, veth pairs and taps work" };
}

/** The nftables features the sandbox rulesets use, loaded for real in a throwaway namespace. */
const NFT_PROBE = `table inet fbdoctor {
  counter c {
  }
  set walls {
    type ipv4_addr; flags interval; auto-merge;
    elements = { 10.0.0.0/8, 169.254.0.0/16 }
  }
  set dns {
    type ipv4_addr; flags timeout;
  }
  chain prerouting_raw {
    type filter hook prerouting priority raw; policy accept;
    iifname "tap0" ether saddr != 02:00:00:00:00:01 counter name c drop
    iifname "tap0" ip saddr != 10.0.0.2 drop
  }
  chain prerouting_nat {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "tap0" meta l4proto { tcp, udp } th dport 53 ct mark set 4 dnat ip to 10.0.0.1:53
  }
  chain postrouting_nat {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "tap0" ct status dnat snat ip to 10.0.0.1
    oifname "eth0" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid drop
    iifname "tap0" ct direction reply accept
    iifname "tap0" ip daddr @walls counter name c goto deny
  }
  chain deny {
    ct state new reject with icmp type admin-prohibited
    meta l4proto tcp reject with tcp reset
    drop
  }
}
`;

export async function nftablesCheck(): Promise<HostCheck> {
  if (!(await onPath("nft"))) {
    return {
      name: "nftables",
      status: "fail",
      detail: "nft is not installed",
      fix: `apt-get install -y nftables (${SETUP})`,
    };
  }
  const r = await run("unshare", ["--net", "--", "nft", "-f", "-"], {
    input: NFT_PROBE,
    allowFailure: true,
    timeoutMs: 20_000,
  }).catch((e: Error) => ({ exitCode: -1, stderr: e.message, stdout: "" }));
  if (r.exitCode !== 0) {
    return {
      name: "nftables",
      status: "fail",
      detail: `a sandbox-like ruleset does not load: ${errorLine(r.stderr || r.stdout)}`,
      fix: "the kernel needs nf_tables with conntrack, NAT, masquerade and reject (modprobe nf_tables nft_chain_nat nft_ct nft_masq nft_reject_inet)",
    };
  }
  const v = await run("nft", ["--version"], { allowFailure: true });
  return { name: "nftables", status: "ok", detail: `${v.stdout.trim()}; sets, NAT, conntrack marks, reject` };
}

const V1_CONTROLLERS = ["cpu", "cpuacct", "memory", "pids"];

/** The cgroup controllers the per-sandbox limits use (v1 or v2), and that a group can be made. */
export async function cgroupCheck(
  cgroupRoot = process.env["FIREBREAK_cgroupRoot"] ?? "/sys/fs/cgroup",
): Promise<HostCheck> {
  const probe = `doctor-${process.pid}`;
  const tryMkdir = async (dir: string): Promise<string | undefined> => {
    try {
      await fs.mkdir(path.join(dir, "firebreak"), { recursive: true });
      await fs.mkdir(path.join(dir, "firebreak", probe));
      await fs.rmdir(path.join(dir, "firebreak", probe));
      return undefined;
    } catch (e) {
      return `${dir}: ${(e as Error).message}`;
    }
  };
  const controllers = await fs
    .readFile(path.join(cgroupRoot, "cgroup.controllers"), "utf8")
    .catch(() => null);
  if (controllers !== null) {
    const have = controllers.trim().split(/\s+/);
    const missing = ["cpu", "memory", "pids"].filter((c) => !have.includes(c));
    if (missing.length) {
      return {
        name: "cgroups",
        status: "fail",
        detail: `cgroup v2 at ${cgroupRoot} lacks the ${missing.join(", ")} controller(s)`,
        fix: "delegate them to this host or container (systemd: Delegate=yes; docker: --cgroupns=private), or boot with them enabled",
      };
    }
    const err = await tryMkdir(cgroupRoot);
    return err
      ? {
          name: "cgroups",
          status: "fail",
          detail: `cannot create a cgroup: ${err}`,
          fix: "mount cgroup2 read-write: mount -o remount,rw /sys/fs/cgroup",
        }
      : { name: "cgroups", status: "ok", detail: `cgroup v2 at ${cgroupRoot} (cpu, memory, pids)` };
  }
  const missing: string[] = [];
  for (const c of V1_CONTROLLERS) {
    const ok = await fs.access(path.join(cgroupRoot, c, "cgroup.procs")).then(
      () => true,
      () => false,
    );
    if (!ok) missing.push(c);
  }
  if (missing.length === V1_CONTROLLERS.length) {
    return {
      name: "cgroups",
      status: "fail",
      detail: `no cgroup hierarchy at ${cgroupRoot}`,
      fix: `mount -t cgroup2 none ${cgroupRoot}`,
    };
  }
  if (missing.length) {
    return {
      name: "cgroups",
      status: "fail",
      detail: `cgroup v1 at ${cgroupRoot} lacks ${missing.join(", ")}`,
      fix: missing
        .map((c) => `mkdir -p ${cgroupRoot}/${c} && mount -t cgroup -o ${c} cgroup ${cgroupRoot}/${c}`)
        .join("; "),
    };
  }
  for (const c of V1_CONTROLLERS) {
    const err = await tryMkdir(path.join(cgroupRoot, c));
    if (err) {
      return {
        name: "cgroups",
        status: "fail",
        detail: `cannot create a cgroup: ${err}`,
        fix: `mount -o remount,rw ${cgroupRoot}/${c}`,
      };
    }
  }
  return {
    name: "cgroups",
    status: "ok",
    detail: `cgroup v1 at ${cgroupRoot} (${V1_CONTROLLERS.join(", ")})`,
  };
}

/** Free space where the state dir is (or will be). */
export async function diskCheck(
  stateDir: string,
  needMib = Number(process.env["FIREBREAK_MIN_FREE_MIB"] ?? 2048),
): Promise<{ check: HostCheck; freeMib: number }> {
  let dir = stateDir;
  for (;;) {
    const ok = await fs.access(dir).then(
      () => true,
      () => false,
    );
    if (ok || dir === path.dirname(dir)) break;
    dir = path.dirname(dir);
  }
  const st = await fs.statfs(dir);
  const freeMib = Math.floor((st.bavail * st.bsize) / 2 ** 20);
  const check: HostCheck =
    freeMib >= needMib
      ? { name: "disk", status: "ok", detail: `${stateDir}: ${freeMib} MiB free` }
      : {
          name: "disk",
          status: "fail",
          detail: `${stateDir}: ${freeMib} MiB free, template builds need ${needMib} MiB (FIREBREAK_MIN_FREE_MIB)`,
          fix: `free space on that file system, or point FIREBREAK_STATE_DIR at a bigger one`,
        };
  return { check, freeMib };
}

/**
 * The node's QEMU (set-up's QEMU 10 in /opt/firebreak/qemu, or
 * FIREBREAK_QEMU_PREFIX): the same lookup the runtime does, which refuses a
 * QEMU older than MIN_QEMU_MAJOR or without qboot (QEMU_MISSING, with the fix).
 */
export async function qemuCheck(): Promise<{ check: HostCheck; version: string }> {
  let q: QemuInstall;
  try {
    q = await qemuInstall();
  } catch (e) {
    const message = e instanceof FirebreakError ? e.message : (e as Error).message;
    return {
      check: {
        name: "qemu",
        status: "fail",
        detail: message,
        fix: `QEMU >= ${MIN_QEMU_MAJOR} from bookworm-backports (${SETUP})`,
      },
      version: "",
    };
  }
  const machines = await run(q.system, ["-machine", "help"], { allowFailure: true });
  if (!/^microvm\b/m.test(machines.stdout)) {
    return {
      check: {
        name: "qemu",
        status: "fail",
        detail: `${q.version} (${q.system}) has no microvm machine type`,
        fix: `QEMU >= ${MIN_QEMU_MAJOR} from bookworm-backports (${SETUP})`,
      },
      version: q.version,
    };
  }
  return {
    check: { name: "qemu", status: "ok", detail: `${q.version} (${q.system}, microvm)` },
    version: q.version,
  };
}

/** Whether /dev/kvm can be used at all; the accelerator probe decides whether it works. */
export async function kvmDevice(): Promise<string | undefined> {
  try {
    const st = await fs.stat("/dev/kvm");
    if (!st.isCharacterDevice()) return "/dev/kvm is not a character device";
    await fs.access("/dev/kvm", fsc.R_OK | fsc.W_OK);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT"
      ? "/dev/kvm does not exist: this host exposes no hardware virtualization"
      : `/dev/kvm cannot be used (${(e as NodeJS.ErrnoException).code})`;
  }
}

export const KVM_FIX =
  "enable VT-x/AMD-V in the firmware (on a VM: nested virtualization), then modprobe kvm_intel or kvm_amd; TCG works meanwhile, about 20x slower";
