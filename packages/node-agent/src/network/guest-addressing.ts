// The guest side of every sandbox network is identical, so a snapshot taken in
// one namespace restores unchanged in any other: same IP, same MAC, same
// gateway IP and MAC (the guest's ARP cache survives the restore).

export const TAP_NAME = "tap0";
export const GUEST_ADDRESS = "169.254.0.21";
export const GATEWAY_ADDRESS = "169.254.0.22";
export const GUEST_PREFIX_LENGTH = 30;
export const GUEST_NETMASK = "255.255.255.252";
/** Locally administered unicast; the low bytes spell 169.254.0.21. The VMM must give the NIC this MAC. */
export const GUEST_MAC = "06:00:a9:fe:00:15";
/** MAC of tap0 (the gateway), fixed for the same reason. */
export const GATEWAY_MAC = "06:00:a9:fe:00:16";
/** Name of the namespace end of the host veth. */
export const NAMESPACE_UPLINK = "eth0";
/** Port of the in-guest agent (E2B's envd). */
export const GUEST_AGENT_PORT = 49983;

/**
 * Kernel `ip=` argument for static guest networking:
 * `ip=<client>::<gateway>:<netmask>::<device>:off`.
 */
export function kernelCmdlineIp(device = "eth0"): string {
  return `ip=${GUEST_ADDRESS}::${GATEWAY_ADDRESS}:${GUEST_NETMASK}::${device}:off`;
}
