// Control plane settings and their defaults.
import type { TenantLimits } from "./store/store.ts";

export interface ControlPlaneConfig {
  /** Sandbox timeout when a create names none. @default 300_000 (5 minutes) */
  defaultTimeoutMs: number;
  /** Longest timeout a create or set-timeout may ask for. @default FIREBREAK_MAX_TIMEOUT_MS or 24 h */
  maxTimeoutMs: number;
  /** How often running sandboxes are sampled and their interim usage written. @default 5_000 */
  usageIntervalMs: number;
  /** How often the reaper looks for expired sandboxes. @default 250 */
  reaperIntervalMs: number;
  /** Limits of tenants created without explicit ones (and of the default tenant). */
  defaultLimits: TenantLimits;
  /** Largest JSON body accepted. @default 1 MiB */
  maxJsonBytes: number;
  /**
   * How long a command may take to start (the agent's `start` event) before
   * the request fails with AGENT_ERROR. @default 60_000
   */
  commandStartTimeoutMs: number;
}

export const DEFAULT_LIMITS: TenantLimits = {
  maxSandboxes: 100,
  maxVcpus: 64,
  maxMemoryMib: 65_536,
  requestsPerMinute: 6_000,
};

export function defaultConfig(env: NodeJS.ProcessEnv = process.env): ControlPlaneConfig {
  return {
    defaultTimeoutMs: 300_000,
    maxTimeoutMs: Number(env["FIREBREAK_MAX_TIMEOUT_MS"] ?? 24 * 3600_000),
    usageIntervalMs: 5_000,
    reaperIntervalMs: 250,
    defaultLimits: DEFAULT_LIMITS,
    maxJsonBytes: 1024 * 1024,
    commandStartTimeoutMs: 60_000,
  };
}
