// The special-purpose address list, defined once: the hard walls (destinations
// no egress policy can open) and the private ranges (reachable only through a
// rule an admin made). See ../egress/README.md. The walls are evaluated in the
// sandbox namespace's forward chain before any policy rule; the whole list is
// the table's `private` set (everything outside it is "the internet").
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { formatIpv4, parseIpv4, parsePool } from "./address-pool.ts";

export interface SpecialRange {
  /** Canonical IPv4 CIDR. */
  cidr: string;
  /** What it is, for error messages. */
  name: string;
  /**
   * A hard wall: never reachable, whatever the policy says and whoever made it.
   * Otherwise a private range: reachable only through an admin's rule (an
   * admin policy's `allow`, or a private service).
   */
  wall: boolean;
}

/**
 * SECURITY: IANA's IPv4 special-purpose registry (the ranges that matter for
 * egress), the cloud metadata addresses and Azure's WireServer. The host's own
 * addresses and the host pool are walls too; they are known only at run time
 * (`wallCidrs`).
 */
export const SPECIAL_PURPOSE_RANGES: readonly SpecialRange[] = Object.freeze([
  { cidr: "0.0.0.0/8", name: '"this" network, RFC 791', wall: true },
  { cidr: "10.0.0.0/8", name: "private network, RFC 1918", wall: false },
  { cidr: "100.64.0.0/10", name: "shared address space, CGNAT, RFC 6598", wall: false },
  { cidr: "100.100.100.200/32", name: "Alibaba Cloud metadata", wall: true },
  { cidr: "127.0.0.0/8", name: "loopback, RFC 1122", wall: true },
  { cidr: "168.63.129.16/32", name: "Azure WireServer", wall: true },
  { cidr: "169.254.0.0/16", name: "link-local, RFC 3927", wall: true },
  { cidr: "169.254.169.254/32", name: "cloud metadata", wall: true },
  { cidr: "172.16.0.0/12", name: "private network, RFC 1918", wall: false },
  { cidr: "192.0.0.0/24", name: "IETF protocol assignments, RFC 6890", wall: false },
  { cidr: "192.0.2.0/24", name: "documentation, TEST-NET-1, RFC 5737", wall: false },
  { cidr: "192.88.99.0/24", name: "6to4 relay anycast, RFC 7526", wall: false },
  { cidr: "192.168.0.0/16", name: "private network, RFC 1918", wall: false },
  { cidr: "198.18.0.0/15", name: "benchmarking, RFC 2544", wall: false },
  { cidr: "198.51.100.0/24", name: "documentation, TEST-NET-2, RFC 5737", wall: false },
  { cidr: "203.0.113.0/24", name: "documentation, TEST-NET-3, RFC 5737", wall: false },
  { cidr: "224.0.0.0/4", name: "multicast, RFC 5771", wall: true },
  { cidr: "240.0.0.0/4", name: "reserved, RFC 1112", wall: true },
  { cidr: "255.255.255.255/32", name: "limited broadcast, RFC 919", wall: true },
]);

/** The static hard walls (host addresses and the host pool are added per network: `wallCidrs`). */
export const STATIC_WALLS: readonly string[] = minimalCidrs(
  SPECIAL_PURPOSE_RANGES.filter((r) => r.wall).map((r) => r.cidr),
);

/** Everything that is not "the internet": the whole special-purpose list, walls included. */
export const PRIVATE_RANGES: readonly string[] = minimalCidrs(SPECIAL_PURPOSE_RANGES.map((r) => r.cidr));

/** First and last address of a canonical or plain CIDR ("a.b.c.d" is a /32). Throws on bad input. */
export function cidrBounds(cidr: string): [number, number] {
  const [addr, len] = cidr.split("/");
  const prefix = len === undefined ? 32 : Number(len);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32 || (len !== undefined && !/^\d{1,2}$/.test(len)))
    throw new Error(`not an IPv4 CIDR: ${cidr}`);
  const size = 2 ** (32 - prefix);
  const base = parseIpv4(addr!);
  const first = base - (base % size);
  return [first, first + size - 1];
}

function overlap(a: [number, number], b: [number, number]): boolean {
  return a[0] <= b[1] && b[0] <= a[1];
}

function within(inner: [number, number], outer: [number, number]): boolean {
  return inner[0] >= outer[0] && inner[1] <= outer[1];
}

/** Does `cidr` contain the address `addr`? */
export function cidrContains(cidr: string, addr: string | number): boolean {
  const n = typeof addr === "number" ? addr : parseIpv4(addr);
  const [first, last] = cidrBounds(cidr);
  return n >= first && n <= last;
}

/** The special ranges `cidr` overlaps, most specific first. */
export function specialRangesOverlapping(cidr: string): SpecialRange[] {
  const b = cidrBounds(cidr);
  return SPECIAL_PURPOSE_RANGES.filter((r) => overlap(b, cidrBounds(r.cidr))).sort(
    (x, y) => cidrBounds(x.cidr)[1] - cidrBounds(x.cidr)[0] - (cidrBounds(y.cidr)[1] - cidrBounds(y.cidr)[0]),
  );
}

/** The most specific special range holding `addr`, if any. */
export function specialRangeOf(addr: string | number): SpecialRange | undefined {
  const n = typeof addr === "number" ? addr : parseIpv4(addr);
  return specialRangesOverlapping(`${formatIpv4(n)}/32`)[0];
}

/** The static wall that holds all of `cidr`, if any (a rule inside a wall can never take effect). */
export function wallHolding(cidr: string): SpecialRange | undefined {
  const b = cidrBounds(cidr);
  return SPECIAL_PURPOSE_RANGES.find((r) => r.wall && within(b, cidrBounds(r.cidr)));
}

/** Drops every CIDR that another one of the list contains (nft interval sets refuse overlaps). */
export function minimalCidrs(list: readonly string[]): string[] {
  const canon = [...new Set(list.map((c) => canonical(c)))].sort(
    (a, b) => cidrBounds(a)[0] - cidrBounds(b)[0],
  );
  return canon.filter((c, i) => !canon.some((o, j) => j !== i && within(cidrBounds(c), cidrBounds(o))));
}

function canonical(cidr: string): string {
  const [first, last] = cidrBounds(cidr);
  return `${formatIpv4(first)}/${32 - Math.log2(last - first + 1)}`;
}

/**
 * Every IPv4 address of this host (the node process runs in the root
 * namespace). SECURITY: Node lists only interfaces that are up and running;
 * the kernel also delivers locally to addresses on an interface without
 * carrier (an empty bridge), so the kernel's local table
 * (`/proc/net/fib_trie`, "/32 host LOCAL") is read too.
 */
export function hostIpv4Addresses(): string[] {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === "IPv4") out.add(formatIpv4(parseIpv4(a.address)));
  }
  let trie = "";
  try {
    trie = readFileSync("/proc/net/fib_trie", "utf8");
  } catch {}
  for (const a of localAddressesFromFibTrie(trie)) out.add(a);
  return [...out].sort();
}

/** The addresses `/proc/net/fib_trie` marks "/32 host LOCAL" (each after its "|-- a.b.c.d" line). */
export function localAddressesFromFibTrie(text: string): string[] {
  const out = new Set<string>();
  let last: string | undefined;
  for (const line of text.split("\n")) {
    const leaf = /\|-- (\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
    if (leaf) last = leaf[1];
    else if (last && /^\s*\/32 host LOCAL\s*$/.test(line)) {
      try {
        out.add(formatIpv4(parseIpv4(last)));
      } catch {}
    }
  }
  return [...out];
}

/**
 * The wall set of a sandbox namespace: the static walls, the whole host pool
 * (every other sandbox and every host-side veth end), and each address of the
 * host's own interfaces at the time the network is made.
 */
export function wallCidrs(pool: string, hostAddresses: string[] = hostIpv4Addresses()): string[] {
  const p = parsePool(pool);
  return minimalCidrs([
    ...STATIC_WALLS,
    `${formatIpv4(p.base)}/${p.prefixLength}`,
    ...hostAddresses.map((a) => `${formatIpv4(parseIpv4(a))}/32`),
  ]);
}
