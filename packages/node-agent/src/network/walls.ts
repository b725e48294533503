// The hard walls: destinations no egress policy can open (see
// ../egress/README.md). They are evaluated in the sandbox namespace's forward
// chain before any policy rule.
import { networkInterfaces } from "node:os";
import { formatIpv4, parseIpv4, parsePool } from "./address-pool.ts";

/**
 * SECURITY: ranges a guest never reaches, whatever its policy says:
 * "this" network, loopback, link-local and cloud metadata (169.254.0.0/16
 * covers 169.254.169.254 and the per-sandbox service addresses, which are only
 * reachable through their DNAT), Alibaba's metadata address, multicast and
 * reserved space (with broadcast).
 */
export const STATIC_WALLS = [
  "0.0.0.0/8",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "100.100.100.200/32",
  "224.0.0.0/4",
  "240.0.0.0/4",
] as const;

/** Ranges that are not "the internet": reachable only through an explicit allow rule or a service binding. */
export const PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"] as const;

function contains(cidr: string, addr: number): boolean {
  const [base, len] = cidr.split("/");
  const prefix = Number(len);
  const size = 2 ** (32 - prefix);
  const b = parseIpv4(base!);
  return addr >= b && addr < b + size;
}

/** Every IPv4 address on a host interface (the node process runs in the root namespace). */
export function hostIpv4Addresses(): string[] {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4") out.add(formatIpv4(parseIpv4(a.address)));
  }
  return [...out].sort();
}

/**
 * The wall set of a sandbox namespace: the static ranges, the whole host pool
 * (every other sandbox and every host-side veth end), and each address of the
 * host's own interfaces at the time the network is made.
 */
export function wallCidrs(pool: string, hostAddresses: string[] = hostIpv4Addresses()): string[] {
  const p = parsePool(pool);
  const walls: string[] = [...STATIC_WALLS, `${formatIpv4(p.base)}/${p.prefixLength}`];
  for (const a of hostAddresses) {
    const n = parseIpv4(a);
    if (!walls.some((w) => contains(w, n))) walls.push(`${formatIpv4(n)}/32`);
  }
  return walls;
}
