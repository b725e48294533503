// The nftables policy of one sandbox namespace. It is loaded with a single
// `nft -f -` inside the namespace and dies with it. Only addresses computed by
// address-pool.ts and walls.ts are interpolated; no user input reaches this
// text. The egress policy (../egress/) fills the `policy_*` chains and the
// `dns_allowed` set later, atomically, without touching anything else.
import { formatIpv4, parseIpv4 } from "./address-pool.ts";
import { GATEWAY_ADDRESS, GUEST_ADDRESS, GUEST_MAC, NAMESPACE_UPLINK, TAP_NAME } from "./guest-addressing.ts";
import { PRIVATE_RANGES } from "./walls.ts";

export const NFT_TABLE = "firebreak";

/** Named counters, readable with `nft -j list counter inet firebreak <name>` inside the namespace. */
export const NFT_COUNTERS = {
  /** Frames from the guest with a foreign MAC or source address, or not IPv4. */
  spoofDropped: "spoof_dropped",
  /** Packets on the uplink not from this sandbox's root-namespace veth end, or not IPv4. */
  uplinkDropped: "uplink_dropped",
  /** Guest packets refused because no policy rule allowed them (egress). */
  egressDenied: "egress_denied",
  /** Connections the guest tried to open to the namespace itself. */
  guestToNamespaceDenied: "guest_to_namespace_denied",
  /** Guest packets refused by a hard wall (host, other sandboxes, link-local, metadata). */
  wallDenied: "wall_denied",
} as const;

/**
 * Connection marks (ct mark), set only by this table's own rules: the class of
 * a connection, for policy exceptions and for traffic accounting.
 */
export const CT_MARK = {
  /** Unclassified guest connection (internet or allowed private range, by destination). */
  none: 0,
  /** Guest DNS query, DNATed to the platform resolver. */
  dns: 1,
  /** Guest connection to a bound private service (DNATed). */
  service: 2,
  /** Connection between two sandboxes of one sandbox network (both ends). */
  sandbox: 3,
  /** Host-initiated connection to a guest port (ingress). */
  ingress: 5,
  /** Host-initiated connection to the guest agent (control traffic, not billed as ingress). */
  control: 6,
} as const;

/** Byte counters per traffic class and direction (tx: from the guest, rx: to the guest). */
export const TRAFFIC_CLASSES = [
  "internet",
  "private",
  "service",
  "sandbox",
  "ingress",
  "control",
  "dns",
] as const;
export type TrafficClass = (typeof TRAFFIC_CLASSES)[number];

/** Chains and sets the egress policy owns (flushed and refilled on every update). */
export const POLICY_CHAINS = {
  /** nat prerouting: DNAT of per-sandbox service addresses. */
  nat: "policy_nat",
  /** filter forward: accepts established service flows by original destination. */
  services: "policy_services",
  /** filter forward, after the walls: CIDR, domain and internet rules. */
  egress: "policy_egress",
  /** filter forward, first: optional bandwidth cap. */
  limit: "policy_limit",
} as const;
export const DNS_ALLOWED_SET = "dns_allowed";
export const PRIVATE_SET = "private";
export const WALLS_SET = "walls";
/** Namespace addresses of the other sandboxes on this sandbox's networks (may open connections to it). */
export const PEERS_SET = "peers";
/** The platform resolver listens on the host end of the veth, this port. */
export const RESOLVER_PORT = 53;
/** Agent port: host connections to it count as control traffic, not ingress. */
const CONTROL_PORT = 49983;

export interface RulesetAddresses {
  hostAddress: string;
  sandboxAddress: string;
  /** CIDRs of the hard walls (walls.ts); defaults to none (unit tests). */
  walls?: string[];
}

function canonicalCidr(cidr: string): string {
  const [addr, len] = cidr.split("/");
  const prefix = Number(len ?? "32");
  if (!/^\d{1,2}$/.test(len ?? "32") || prefix > 32) throw new Error(`not an IPv4 CIDR: ${cidr}`);
  return `${formatIpv4(parseIpv4(addr!))}/${prefix}`;
}

export function renderRuleset(addrs: RulesetAddresses): string {
  // INVARIANT: only canonical dotted quads are interpolated (round-trip through the parser).
  const host = formatIpv4(parseIpv4(addrs.hostAddress));
  const sandbox = formatIpv4(parseIpv4(addrs.sandboxAddress));
  const walls = (addrs.walls ?? []).map(canonicalCidr);
  const tap = JSON.stringify(TAP_NAME);
  const up = JSON.stringify(NAMESPACE_UPLINK);
  const c = NFT_COUNTERS;
  const m = CT_MARK;
  const P = POLICY_CHAINS;
  const counters = [...Object.values(c), ...TRAFFIC_CLASSES.flatMap((k) => [`tx_${k}`, `rx_${k}`])].map(
    (n) => `  counter ${n} {}`,
  );
  const account = (mark: number, cls: TrafficClass) =>
    `    ct mark ${mark} iifname ${tap} counter name tx_${cls}\n    ct mark ${mark} oifname ${tap} counter name rx_${cls}`;
  return `table inet ${NFT_TABLE} {
${counters.join("\n")}

  # SECURITY: the hard walls (evaluated before any policy rule).
  set ${WALLS_SET} {
    type ipv4_addr; flags interval; auto-merge;${walls.length ? `\n    elements = { ${walls.join(", ")} }` : ""}
  }
  # SECURITY: the special-purpose list (walls.ts): never "the internet"; the
  # resolver's answers reach the guest only outside it.
  set ${PRIVATE_SET} {
    type ipv4_addr; flags interval; auto-merge;
    elements = { ${PRIVATE_RANGES.join(", ")} }
  }
  # Addresses the platform resolver returned for allowed names, until their TTL runs out.
  set ${DNS_ALLOWED_SET} {
    type ipv4_addr; flags timeout;
  }
  set ${PEERS_SET} {
    type ipv4_addr;
  }

  chain prerouting_raw {
    type filter hook prerouting priority raw; policy accept;
    # SECURITY: anti-spoofing. The guest may only send IPv4 from its own MAC and
    # address; anything else is dropped before conntrack or NAT see it.
    iifname ${tap} ether saddr != ${GUEST_MAC} counter name ${c.spoofDropped} drop
    iifname ${tap} meta nfproto != ipv4 counter name ${c.spoofDropped} drop
    iifname ${tap} ip saddr != ${GUEST_ADDRESS} counter name ${c.spoofDropped} drop
    iifname ${up} meta nfproto != ipv4 counter name ${c.uplinkDropped} drop
  }

  chain prerouting_filter {
    type filter hook prerouting priority mangle; policy accept;
    # SECURITY: on the uplink only this sandbox's root-namespace veth end may
    # open connections into the namespace (not another host or sandbox routed
    # here). Other peers may only answer connections the guest opened.
    # Sandboxes on the same sandbox network (the egress policy fills @${PEERS_SET}).
    iifname ${up} ct state new ip saddr @${PEERS_SET} ip daddr ${sandbox} accept
    iifname ${up} ct state new ip saddr != ${host} counter name ${c.uplinkDropped} drop
    iifname ${up} ct state invalid counter name ${c.uplinkDropped} drop
  }

  chain prerouting_nat {
    type nat hook prerouting priority dstnat; policy accept;
    # The host dials ${sandbox}:<port>; deliver it to the guest, same port.
    iifname ${up} ip saddr @${PEERS_SET} ip daddr ${sandbox} ct mark set ${m.sandbox} dnat ip to ${GUEST_ADDRESS}
    iifname ${up} ip daddr ${sandbox} tcp dport ${CONTROL_PORT} ct mark set ${m.control} dnat ip to ${GUEST_ADDRESS}
    iifname ${up} ip daddr ${sandbox} ct mark set ${m.ingress} dnat ip to ${GUEST_ADDRESS}
    # SECURITY: every DNS query of the guest, whatever server it names, goes to
    # the platform resolver (host end of the veth), which answers only allowed names.
    iifname ${tap} meta l4proto { tcp, udp } th dport 53 ct mark set ${m.dns} dnat ip to ${host}:${RESOLVER_PORT}
    iifname ${tap} jump ${P.nat}
  }
  chain ${P.nat} {
  }

  chain postrouting_nat {
    type nat hook postrouting priority srcnat; policy accept;
    # Host-initiated connections reach the guest from the gateway address, so
    # the guest never learns host addressing and replies stay on-link even
    # without a default route; conntrack reverses both translations.
    oifname ${tap} ct status dnat snat ip to ${GATEWAY_ADDRESS}
    # Guest egress leaves as the namespace address.
    oifname ${up} ip saddr ${GUEST_ADDRESS} snat ip to ${sandbox}
  }

  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid drop
    jump ${P.limit}
    # Packets towards the guest: replies, and host-initiated connections.
    oifname ${tap} ct state established,related accept
    iifname ${up} oifname ${tap} ct status dnat accept
    # The guest answering a host-initiated connection.
    iifname ${tap} ct direction reply accept
    # From here on: packets of connections the guest opened, every packet (so
    # a policy update also cuts established flows it no longer allows).
    iifname ${tap} ct mark ${m.dns} ct status dnat accept
    iifname ${tap} jump ${P.services}
    # SECURITY: hard walls. No policy rule is evaluated before these: the host's
    # own addresses, every sandbox of the host pool, link-local and metadata.
    iifname ${tap} ip daddr @${WALLS_SET} counter name ${c.wallDenied} goto deny
    iifname ${tap} oifname != ${up} counter name ${c.wallDenied} goto deny
    iifname ${tap} jump ${P.egress}
    # SECURITY: default deny. The guest gets an immediate "administratively
    # prohibited" for a new connection (a reset for a cut TCP flow), not a hang.
    iifname ${tap} counter name ${c.egressDenied} goto deny
  }
  chain deny {
    ct state new reject with icmp type admin-prohibited
    meta l4proto tcp reject with tcp reset
    drop
  }
  chain ${P.limit} {
  }
  chain ${P.services} {
  }
  chain ${P.egress} {
  }

  # Traffic accounting: only packets the filter accepted reach this chain.
  chain account {
    type filter hook forward priority filter + 10; policy accept;
${account(m.dns, "dns")}
${account(m.service, "service")}
${account(m.sandbox, "sandbox")}
${account(m.ingress, "ingress")}
${account(m.control, "control")}
    ct mark ${m.none} iifname ${tap} ip daddr @${PRIVATE_SET} counter name tx_private
    ct mark ${m.none} iifname ${tap} ip daddr != @${PRIVATE_SET} counter name tx_internet
    ct mark ${m.none} oifname ${tap} ip saddr @${PRIVATE_SET} counter name rx_private
    ct mark ${m.none} oifname ${tap} ip saddr != @${PRIVATE_SET} counter name rx_internet
  }

  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    # SECURITY: the guest may not open connections to the namespace's own
    # addresses (gateway, uplink); only replies are accepted (above).
    iifname ${tap} counter name ${c.guestToNamespaceDenied} reject with icmp type admin-prohibited
  }
}
`;
}
