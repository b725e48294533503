export {
  DEFAULT_POOL,
  type ParsedPool,
  parsePool,
  type SlotAddresses,
  SlotAllocator,
  slotAddresses,
} from "./address-pool.ts";
export { NetworkError, type NetworkErrorCode } from "./errors.ts";
export {
  GATEWAY_ADDRESS,
  GATEWAY_MAC,
  GUEST_ADDRESS,
  GUEST_AGENT_PORT,
  GUEST_MAC,
  kernelCmdlineIp,
  TAP_NAME,
} from "./guest-addressing.ts";
export { NFT_COUNTERS, NFT_TABLE } from "./nft-ruleset.ts";
export {
  createSandboxNetwork,
  type DestroyOptions,
  destroySandboxNetwork,
  HOST_VETH_PREFIX,
  listNetworkResources,
  NETNS_PREFIX,
  type NetworkResources,
  type SandboxNetwork,
  type SandboxNetworkSpec,
} from "./sandbox-network.ts";
