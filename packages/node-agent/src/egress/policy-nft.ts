// Renders one egress policy update: a single `nft -f -` transaction that
// flushes and refills the policy chains and the resolver's address set of one
// sandbox namespace. The base table (../network/nft-ruleset.ts), with the hard
// walls, is never touched, so no policy text can weaken a wall.
import { formatIpv4, parseIpv4 } from "../network/address-pool.ts";
import { TAP_NAME } from "../network/guest-addressing.ts";
import {
  CT_MARK,
  DNS_ALLOWED_SET,
  NFT_TABLE,
  PEERS_SET,
  POLICY_CHAINS,
  PRIVATE_SET,
} from "../network/nft-ruleset.ts";
import type { NormalizedPolicy } from "./policy.ts";

/** One bound service as the namespace sees it. */
export interface ServiceRoute {
  /** Per-sandbox address the resolver answers for the name (169.254.16.0/20). */
  serviceAddress: string;
  port: number;
  /** Where the namespace sends it: the real service, or the host-side proxy. */
  targetAddress: string;
  targetPort: number;
}

/** Another sandbox of one of this sandbox's networks. */
export interface PeerRoute {
  /** Per-sandbox address the resolver answers for `<id>.<network>.fb` (169.254.32.0/20). */
  peerAddress: string;
  /** The peer's namespace address (its host-dialled address). */
  targetAddress: string;
}

export interface DnsElement {
  address: string;
  /** Seconds left. */
  timeoutS: number;
}

const ip = (a: string) => formatIpv4(parseIpv4(a));
const int = (n: number, min: number, max: number) => {
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`out of range: ${n}`);
  return n;
};

/** nft text for adding resolver answers to the set (used alone, and inside a policy update). */
export function renderDnsElements(elements: readonly DnsElement[]): string {
  if (!elements.length) return "";
  const list = elements.map((e) => `${ip(e.address)} timeout ${int(e.timeoutS, 1, 86_400)}s`).join(", ");
  return `add element inet ${NFT_TABLE} ${DNS_ALLOWED_SET} { ${list} }\n`;
}

export function renderPolicy(
  policy: NormalizedPolicy,
  services: readonly ServiceRoute[],
  dns: readonly DnsElement[],
  peers: readonly PeerRoute[] = [],
): string {
  // INVARIANT: everything interpolated is a canonical address, a validated CIDR
  // (policy.ts) or an integer in range; names never reach nft.
  const t = `inet ${NFT_TABLE}`;
  const P = POLICY_CHAINS;
  const tap = JSON.stringify(TAP_NAME);
  const out: string[] = [
    `flush chain ${t} ${P.nat}`,
    `flush chain ${t} ${P.services}`,
    `flush chain ${t} ${P.egress}`,
    `flush chain ${t} ${P.limit}`,
    `flush set ${t} ${DNS_ALLOWED_SET}`,
    `flush set ${t} ${PEERS_SET}`,
  ];
  if (peers.length) {
    out.push(`add element ${t} ${PEERS_SET} { ${peers.map((p) => ip(p.targetAddress)).join(", ")} }`);
  }
  for (const p of peers) {
    const pa = ip(p.peerAddress);
    // Every port but the peer's guest agent (its API belongs to the node).
    out.push(
      `add rule ${t} ${P.nat} ip daddr ${pa} meta l4proto { tcp, udp } th dport != 49983 ct mark set ${CT_MARK.sandbox} dnat ip to ${ip(p.targetAddress)}`,
      `add rule ${t} ${P.services} ct mark ${CT_MARK.sandbox} ct status dnat ct original ip daddr ${pa} accept`,
    );
  }
  if (policy.bandwidthKBps !== undefined) {
    const rate = int(policy.bandwidthKBps, 1, 10_000_000);
    // Policing per direction; TCP backs off when packets over the rate are dropped.
    out.push(
      `add rule ${t} ${P.limit} iifname ${tap} limit rate over ${rate} kbytes/second burst ${Math.max(rate, 64)} kbytes drop`,
      `add rule ${t} ${P.limit} oifname ${tap} limit rate over ${rate} kbytes/second burst ${Math.max(rate, 64)} kbytes drop`,
    );
  }
  for (const s of services) {
    const sa = ip(s.serviceAddress);
    const port = int(s.port, 1, 65_535);
    out.push(
      `add rule ${t} ${P.nat} ip daddr ${sa} tcp dport ${port} ct mark set ${CT_MARK.service} dnat ip to ${ip(s.targetAddress)}:${int(s.targetPort, 1, 65_535)}`,
      `add rule ${t} ${P.services} ct mark ${CT_MARK.service} ct status dnat ct original ip daddr ${sa} meta l4proto tcp ct original proto-dst ${port} accept`,
    );
  }
  // SECURITY: resolver answers open public addresses only, even if a private
  // one reached the set (the resolver already drops them: egress-manager.ts).
  out.push(`add rule ${t} ${P.egress} ip daddr != @${PRIVATE_SET} ip daddr @${DNS_ALLOWED_SET} accept`);
  for (const r of policy.allow) {
    const dst = `ip daddr ${r.cidr}`;
    const protos = r.protocol === "any" ? ["tcp", "udp"] : [r.protocol];
    if (r.ports === "any") {
      if (r.protocol === "any") out.push(`add rule ${t} ${P.egress} ${dst} accept`);
      else out.push(`add rule ${t} ${P.egress} ${dst} meta l4proto ${r.protocol} accept`);
    } else {
      const ports = r.ports.map((p) => int(p, 1, 65_535)).join(", ");
      for (const proto of protos)
        out.push(`add rule ${t} ${P.egress} ${dst} ${proto} dport { ${ports} } accept`);
    }
  }
  if (policy.internet) out.push(`add rule ${t} ${P.egress} ip daddr != @${PRIVATE_SET} accept`);
  return `${out.join("\n")}\n${renderDnsElements(dns)}`;
}
