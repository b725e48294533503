export {
  type AttachOptions,
  defaultUpstream,
  EgressManager,
  type EgressManagerOptions,
  type EgressTarget,
  PLATFORM_HEADER,
  PLATFORM_SERVICE_NAME,
  type PlatformTarget,
  type SandboxTraffic,
  type TrafficCounters,
} from "./egress-manager.ts";
export { EgressError, type EgressErrorCode } from "./errors.ts";
export {
  type AllowRule,
  DEFAULT_POLICY,
  domainAllowed,
  type EgressPolicy,
  EgressPolicySchema,
  type NormalizedPolicy,
  normalizePolicy,
} from "./policy.ts";
export { type PrivateService, ServiceRegistry } from "./service-registry.ts";
