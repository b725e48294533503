// The nftables policy of one sandbox namespace. It is loaded with a single
// `nft -f -` inside the namespace and dies with it. Only addresses computed by
// address-pool.ts are interpolated; no user input reaches this text.
import { formatIpv4, parseIpv4 } from "./address-pool.ts";
import { GATEWAY_ADDRESS, GUEST_ADDRESS, GUEST_MAC, NAMESPACE_UPLINK, TAP_NAME } from "./guest-addressing.ts";

export const NFT_TABLE = "firebreak";

/** Named counters, readable with `nft -j list counter inet firebreak <name>` inside the namespace. */
export const NFT_COUNTERS = {
  /** Frames from the guest with a foreign MAC or source address, or not IPv4. */
  spoofDropped: "spoof_dropped",
  /** Packets on the uplink not from this sandbox's root-namespace veth end, or not IPv4. */
  uplinkDropped: "uplink_dropped",
  /** New connections the guest tried to open through the namespace (egress). */
  egressDenied: "egress_denied",
  /** Connections the guest tried to open to the namespace itself. */
  guestToNamespaceDenied: "guest_to_namespace_denied",
} as const;

export interface RulesetAddresses {
  hostAddress: string;
  sandboxAddress: string;
}

export function renderRuleset(addrs: RulesetAddresses): string {
  // INVARIANT: only canonical dotted quads are interpolated (round-trip through the parser).
  const host = formatIpv4(parseIpv4(addrs.hostAddress));
  const sandbox = formatIpv4(parseIpv4(addrs.sandboxAddress));
  const tap = JSON.stringify(TAP_NAME);
  const up = JSON.stringify(NAMESPACE_UPLINK);
  const c = NFT_COUNTERS;
  return `table inet ${NFT_TABLE} {
  counter ${c.spoofDropped} {}
  counter ${c.uplinkDropped} {}
  counter ${c.egressDenied} {}
  counter ${c.guestToNamespaceDenied} {}

  chain prerouting_raw {
    type filter hook prerouting priority raw; policy accept;
    # SECURITY: anti-spoofing. The guest may only send IPv4 from its own MAC and
    # address; anything else is dropped before conntrack or NAT see it.
    iifname ${tap} ether saddr != ${GUEST_MAC} counter name ${c.spoofDropped} drop
    iifname ${tap} meta nfproto != ipv4 counter name ${c.spoofDropped} drop
    iifname ${tap} ip saddr != ${GUEST_ADDRESS} counter name ${c.spoofDropped} drop
    # SECURITY: on the uplink only this sandbox's root-namespace veth end may
    # talk to the namespace (not another host or sandbox routed here), IPv4 only.
    iifname ${up} meta nfproto != ipv4 counter name ${c.uplinkDropped} drop
    iifname ${up} ip saddr != ${host} counter name ${c.uplinkDropped} drop
  }

  chain prerouting_nat {
    type nat hook prerouting priority dstnat; policy accept;
    # The host dials ${sandbox}:<port>; deliver it to the guest, same port.
    iifname ${up} ip daddr ${sandbox} dnat ip to ${GUEST_ADDRESS}
  }

  chain postrouting_nat {
    type nat hook postrouting priority srcnat; policy accept;
    # Host-initiated connections reach the guest from the gateway address, so
    # the guest never learns host addressing and replies stay on-link even
    # without a default route; conntrack reverses both translations.
    oifname ${tap} ct status dnat snat ip to ${GATEWAY_ADDRESS}
    # Guest egress would leave as the namespace address (egress is denied in
    # the forward chain for now; an allow list only needs forward rules).
    oifname ${up} ip saddr ${GUEST_ADDRESS} snat ip to ${sandbox}
  }

  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid drop
    ct state established,related accept
    # Host -> guest: only connections translated by prerouting_nat.
    iifname ${up} oifname ${tap} ct status dnat accept
    # SECURITY: egress deny-all. The guest may not open any connection through
    # the namespace (host, other sandboxes, the internet); it gets an immediate
    # "administratively prohibited" instead of a hang.
    iifname ${tap} counter name ${c.egressDenied} reject with icmp type admin-prohibited
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
