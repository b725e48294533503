// Per-sandbox network (E2B's model): every sandbox lives in its own network
// namespace with identical guest-side addressing, reached from the host through
// a veth pair with a unique /31 per slot.
//
//   root ns                      fb-<id> ns                         guest (VM)
//   fbh-<slot> 10.211.x.2k  ==  eth0 10.211.x.2k+1 --nft-- tap0 169.254.0.22/30 == 169.254.0.21
//
// Process budget, on the sandbox start path: create = 3 spawns (1 `ip -batch`
// in the root namespace, then `ip -n -batch`, `nsenter sysctl` and
// `nsenter nft -f -` in parallel); destroy = 1 spawn. Listing spawns nothing.
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { CommandError, run } from "../host/exec.ts";
import { DEFAULT_POOL, SLOT_PREFIX_LENGTH, slotAddresses } from "./address-pool.ts";
import { NetworkError } from "./errors.ts";
import {
  GATEWAY_ADDRESS,
  GATEWAY_MAC,
  GUEST_ADDRESS,
  GUEST_MAC,
  GUEST_PREFIX_LENGTH,
  NAMESPACE_UPLINK,
  TAP_NAME,
} from "./guest-addressing.ts";
import { renderRuleset } from "./nft-ruleset.ts";
import { wallCidrs } from "./walls.ts";

export const NETNS_PREFIX = "fb-";
export const HOST_VETH_PREFIX = "fbh-";
export const NETNS_DIR = "/run/netns";
const SYS_CLASS_NET = "/sys/class/net";
const SANDBOX_ID_RE = /^[a-z0-9]{1,20}$/;
const COMMAND_TIMEOUT_MS = 10_000;

export interface SandboxNetworkSpec {
  sandboxId: string;
  slot: number;
  /** Owner of tap0, so an unprivileged QEMU can open it. */
  tapUid: number;
  tapGid: number;
  /**
   * `"tap"` (default) for a VM. `"veth-for-tests"` makes `tap0` one end of a
   * veth whose peer (`eth0`, MAC {@link GUEST_MAC}, 169.254.0.21/30, default
   * route via the gateway) is moved into `testGuestNetns`, which stands in for
   * the VM. A tap without a VM has no carrier, so tests need this.
   * @default "tap"
   */
  guestLink?: "tap" | "veth-for-tests";
  /** Existing namespace (name under /run/netns) that receives the guest end; only with `"veth-for-tests"`. */
  testGuestNetns?: string;
}

export interface SandboxNetwork {
  sandboxId: string;
  slot: number;
  netnsName: string;
  /** Bind mount of the namespace; `nsenter --net=<netnsPath>` (QEMU must open tap0 inside it). */
  netnsPath: string;
  tapName: "tap0";
  /** Root-namespace end of the veth (`fbh-<slot>`); its ifalias is the netns name. */
  hostVeth: string;
  /** Root-namespace side address. */
  hostAddress: string;
  /** What the host dials: `<sandboxAddress>:<port>` reaches the guest on the same port. */
  sandboxAddress: string;
  guestAddress: "169.254.0.21";
  gatewayAddress: "169.254.0.22";
  /** The VMM must give the guest NIC this MAC (anti-spoofing drops any other). */
  guestMac: string;
  gatewayMac: string;
  prefixLength: 30;
}

export interface NetworkResources {
  /** Namespaces named fb-* under /run/netns. */
  namespaces: string[];
  /** Root-namespace links named fbh-*. */
  hostVeths: string[];
  /** fbh-* link -> the namespace name recorded in its ifalias (absent if none). */
  hostVethOwners: Record<string, string>;
}

export function netnsNameFor(sandboxId: string): string {
  return NETNS_PREFIX + sandboxId;
}

export function hostVethNameFor(slot: number): string {
  return HOST_VETH_PREFIX + slot;
}

function validateSpec(spec: SandboxNetworkSpec): void {
  if (!SANDBOX_ID_RE.test(spec.sandboxId)) {
    throw new NetworkError(
      "NETWORK_INVALID_SPEC",
      `sandbox id ${JSON.stringify(spec.sandboxId)} must be 1-20 lowercase letters or digits`,
    );
  }
  for (const key of ["tapUid", "tapGid"] as const) {
    const v = spec[key];
    if (!Number.isInteger(v) || v < 0 || v > 0xfffffffe) {
      throw new NetworkError("NETWORK_INVALID_SPEC", `${key} must be a non-negative integer, got ${v}`);
    }
  }
  const link = spec.guestLink ?? "tap";
  if (link !== "tap" && link !== "veth-for-tests") {
    throw new NetworkError("NETWORK_INVALID_SPEC", `guestLink must be "tap" or "veth-for-tests"`);
  }
  if (link === "veth-for-tests" && !/^[A-Za-z0-9_.-]{1,64}$/.test(spec.testGuestNetns ?? "")) {
    throw new NetworkError("NETWORK_INVALID_SPEC", `guestLink "veth-for-tests" needs testGuestNetns`);
  }
}

/** The `ip -batch` line number that failed ("Command failed -:N"), if reported. */
function failedBatchLine(err: unknown): number | undefined {
  if (!(err instanceof CommandError)) return undefined;
  const m = /Command failed -:(\d+)/.exec(err.result.stderr);
  return m ? Number(m[1]) : undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Creates the namespace, veth, tap and firewall of one sandbox. Needs no VM:
 * warm pools may create networks ahead of time.
 *
 * Atomic: on any failure it removes what it made (never what existed before)
 * and throws a {@link NetworkError}.
 *
 * Preconditions: root; `slot` is reserved for this sandbox (see SlotAllocator).
 */
export async function createSandboxNetwork(
  spec: SandboxNetworkSpec,
  pool: string = DEFAULT_POOL,
): Promise<SandboxNetwork> {
  validateSpec(spec);
  const { hostAddress, sandboxAddress } = slotAddresses(spec.slot, pool);
  const netnsName = netnsNameFor(spec.sandboxId);
  const netnsPath = `${NETNS_DIR}/${netnsName}`;
  const hostVeth = hostVethNameFor(spec.slot);

  // Cheap pre-checks (stat, no spawn) for a clear message; the kernel still
  // enforces uniqueness below if something races us.
  if (existsSync(netnsPath)) {
    throw new NetworkError(
      "NETWORK_SANDBOX_EXISTS",
      `network namespace ${netnsName} already exists; destroy the old network first (or let the reconciler)`,
    );
  }
  if (existsSync(`${SYS_CLASS_NET}/${hostVeth}`)) {
    throw new NetworkError(
      "NETWORK_SLOT_IN_USE",
      `slot ${spec.slot} is in use: link ${hostVeth} exists; allocate another slot or destroy its owner`,
    );
  }

  // Step 1, root namespace: the namespace, and the veth born with its peer
  // already inside it. The ifalias records the owner for the reconciler and
  // for destroy's ownership check.
  const rootBatch = [
    `netns add ${netnsName}`,
    `link add ${hostVeth} type veth peer name ${NAMESPACE_UPLINK} netns ${netnsName}`,
    `link set ${hostVeth} alias ${netnsName} addrgenmode none`,
    `addr add ${hostAddress}/${SLOT_PREFIX_LENGTH} dev ${hostVeth}`,
    `link set ${hostVeth} up`,
  ];
  try {
    await run("ip", ["-batch", "-"], { input: `${rootBatch.join("\n")}\n`, timeoutMs: COMMAND_TIMEOUT_MS });
  } catch (err) {
    const line = failedBatchLine(err);
    // Line 1 failed: we made nothing. Line 2 failed: we made only the
    // namespace (the veth name may belong to someone else: leave it).
    // Later lines, or unknown: the namespace and the veth are ours.
    const madeNetns = line === undefined || line >= 2;
    const madeVeth = line === undefined || line >= 3;
    await rollback(netnsName, madeNetns, hostVeth, madeVeth);
    const exists = /File exists/.test(describe(err));
    throw new NetworkError(
      exists ? (line === 1 ? "NETWORK_SANDBOX_EXISTS" : "NETWORK_SLOT_IN_USE") : "NETWORK_CREATE_FAILED",
      `creating network for sandbox ${spec.sandboxId} (slot ${spec.slot}) failed: ${describe(err)}`,
      { cause: err },
    );
  }

  // Step 2, inside the namespace, three independent processes in parallel.
  // nft matches interface names, so the ruleset may load before the links exist.
  const testMode = (spec.guestLink ?? "tap") === "veth-for-tests";
  const guestLinkLines = testMode
    ? [
        `link add ${TAP_NAME} address ${GATEWAY_MAC} type veth peer name eth0 address ${GUEST_MAC} netns ${spec.testGuestNetns}`,
      ]
    : [
        `tuntap add dev ${TAP_NAME} mode tap user ${spec.tapUid} group ${spec.tapGid}`,
        `link set ${TAP_NAME} address ${GATEWAY_MAC}`,
      ];
  const nsBatch = [
    "link set lo up",
    `link set ${NAMESPACE_UPLINK} addrgenmode none`,
    `addr add ${sandboxAddress}/${SLOT_PREFIX_LENGTH} dev ${NAMESPACE_UPLINK}`,
    `link set ${NAMESPACE_UPLINK} up`,
    ...guestLinkLines,
    `link set ${TAP_NAME} addrgenmode none`,
    `addr add ${GATEWAY_ADDRESS}/${GUEST_PREFIX_LENGTH} dev ${TAP_NAME}`,
    `link set ${TAP_NAME} up`,
    // Guest egress the policy allows leaves through the host.
    `route add default via ${hostAddress} dev ${NAMESPACE_UPLINK}`,
  ];
  const steps: Promise<unknown>[] = [
    run("ip", ["-n", netnsName, "-batch", "-"], {
      input: `${nsBatch.join("\n")}\n`,
      timeoutMs: COMMAND_TIMEOUT_MS,
    }),
    run(
      "nsenter",
      [
        `--net=${netnsPath}`,
        "sysctl",
        "-q",
        "-w",
        // Routing between eth0 and tap0 (per-namespace setting).
        "net.ipv4.ip_forward=1",
        // SECURITY: no IPv6 anywhere in the namespace (writing "all" also sets
        // every existing link and the default for new ones: eth0 and tap0), so
        // no link-local v6 leaks past the IPv4-only policy.
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
      ],
      { timeoutMs: COMMAND_TIMEOUT_MS },
    ),
    run("nsenter", [`--net=${netnsPath}`, "nft", "-f", "-"], {
      input: renderRuleset({ hostAddress, sandboxAddress, walls: wallCidrs(pool) }),
      timeoutMs: COMMAND_TIMEOUT_MS,
    }),
  ];
  const results = await Promise.allSettled(steps);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (!failed && testMode) {
    try {
      await run("ip", ["-n", spec.testGuestNetns!, "-batch", "-"], {
        input: [
          "link set lo up",
          `addr add ${GUEST_ADDRESS}/${GUEST_PREFIX_LENGTH} dev eth0`,
          "link set eth0 up",
          `route add default via ${GATEWAY_ADDRESS}`,
          "",
        ].join("\n"),
        timeoutMs: COMMAND_TIMEOUT_MS,
      });
    } catch (err) {
      results.push({ status: "rejected", reason: err });
    }
  }
  const failure = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failure) {
    await rollback(netnsName, true, hostVeth, true);
    throw new NetworkError(
      "NETWORK_CREATE_FAILED",
      `configuring network namespace ${netnsName} failed (rolled back): ${describe(failure.reason)}`,
      { cause: failure.reason },
    );
  }

  return {
    sandboxId: spec.sandboxId,
    slot: spec.slot,
    netnsName,
    netnsPath,
    tapName: TAP_NAME,
    hostVeth,
    hostAddress,
    sandboxAddress,
    guestAddress: GUEST_ADDRESS,
    gatewayAddress: GATEWAY_ADDRESS,
    guestMac: GUEST_MAC,
    gatewayMac: GATEWAY_MAC,
    prefixLength: GUEST_PREFIX_LENGTH,
  };
}

async function rollback(netnsName: string, netns: boolean, hostVeth: string, veth: boolean): Promise<void> {
  if (!netns && !veth) return;
  try {
    await removeNetwork(netnsName, netns, hostVeth, veth);
  } catch {
    // The original error is more useful; the reconciler removes leftovers by prefix.
  }
}

/** Errors that mean "already gone", which destroy treats as success. */
const ALREADY_GONE_RE = /Cannot find device|No such file or directory|does not exist|^Command failed -:\d+$/;

async function removeNetwork(netnsName: string, netns: boolean, hostVeth: string, veth: boolean) {
  const lines: string[] = [];
  // Delete the veth explicitly and first: namespace teardown in the kernel is
  // asynchronous (and waits for every process and open tap fd in it), while
  // this frees the slot's name and address at once.
  if (veth) lines.push(`link del ${hostVeth}`);
  if (netns) lines.push(`netns del ${netnsName}`);
  const res = await run("ip", ["-force", "-batch", "-"], {
    input: `${lines.join("\n")}\n`,
    allowFailure: true,
    timeoutMs: COMMAND_TIMEOUT_MS,
  });
  if (res.exitCode !== 0) {
    const unexpected = res.stderr
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l && !ALREADY_GONE_RE.test(l));
    if (unexpected.length > 0) {
      throw new NetworkError(
        "NETWORK_DESTROY_FAILED",
        `removing ${lines.join(", ")} failed: ${unexpected.join("; ")}`,
      );
    }
  }
}

export interface DestroyOptions {
  /**
   * Delete the host veth explicitly, so the slot's name and address are free
   * on return. The kernel removes a veth only after RCU grace periods (~25-35 ms
   * here). With `false`, destroy only removes the namespace name (~3 ms) and
   * the kernel's asynchronous namespace teardown takes the veth pair with it
   * (tens of ms later, or only once the last process or tap fd holding the
   * namespace is gone). Measured A/B: explicit delete beats waiting for the
   * asynchronous teardown (p50 ~30 ms vs ~40 ms).
   * @default true
   */
  wait?: boolean;
}

/**
 * Removes a sandbox's namespace (with tap0 and its nft table) and host veth,
 * in one `ip -batch`. Idempotent: missing pieces are fine. A host veth whose
 * ifalias names another sandbox's namespace (the slot was reused) is left alone.
 *
 * Preconditions: the VM is gone. A process still holding tap0 keeps the
 * namespace alive in the kernel after its name is removed (unreachable once
 * the uplink veth is deleted).
 */
export async function destroySandboxNetwork(
  net: SandboxNetwork | { sandboxId: string; slot: number },
  opts: DestroyOptions = {},
): Promise<void> {
  if (!SANDBOX_ID_RE.test(net.sandboxId) || !Number.isInteger(net.slot) || net.slot < 0) {
    throw new NetworkError(
      "NETWORK_INVALID_SPEC",
      `invalid sandbox id or slot: ${net.sandboxId}/${net.slot}`,
    );
  }
  const netnsName = netnsNameFor(net.sandboxId);
  const hostVeth = hostVethNameFor(net.slot);
  const owner = await readAlias(hostVeth);
  // INVARIANT: never delete a veth that belongs to another sandbox.
  const vethIsOurs = owner !== undefined && (owner === "" || owner === netnsName);
  const netnsExists = existsSync(`${NETNS_DIR}/${netnsName}`);
  const deleteVeth = vethIsOurs && (opts.wait !== false || !netnsExists);
  if (!deleteVeth && !netnsExists) return;
  await removeNetwork(netnsName, netnsExists, hostVeth, deleteVeth);
}

/** ifalias of a root-namespace link: undefined if the link does not exist. */
async function readAlias(link: string): Promise<string | undefined> {
  try {
    return (await readFile(`${SYS_CLASS_NET}/${link}/ifalias`, "utf8")).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** Everything named fb-* (namespaces) and fbh-* (root-namespace links), for the reconciler. */
export async function listNetworkResources(): Promise<NetworkResources> {
  const [nsEntries, links] = await Promise.all([readdirOrEmpty(NETNS_DIR), readdirOrEmpty(SYS_CLASS_NET)]);
  const namespaces = nsEntries.filter((n) => n.startsWith(NETNS_PREFIX)).sort();
  const hostVeths = links.filter((n) => n.startsWith(HOST_VETH_PREFIX)).sort(compareNatural);
  const hostVethOwners: Record<string, string> = {};
  await Promise.all(
    hostVeths.map(async (l) => {
      const alias = await readAlias(l).catch(() => undefined);
      if (alias) hostVethOwners[l] = alias;
    }),
  );
  return { namespaces, hostVeths, hostVethOwners };
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

function compareNatural(a: string, b: string): number {
  return a.localeCompare(b, "en", { numeric: true });
}
