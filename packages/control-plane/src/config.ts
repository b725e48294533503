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
   * vCPUs the node may commit per host CPU (node admission). @default
   * FIREBREAK_VCPU_OVERCOMMIT or 8 (sandboxes are mostly idle; CPU contention
   * costs latency, not safety)
   */
  vcpuOvercommit: number;
  /**
   * Memory the node may commit per MiB of host memory, counting each sandbox
   * as its guest memory plus `sandboxOverheadMib`. @default
   * FIREBREAK_MEMORY_OVERCOMMIT or 1 (no overcommit: a guest may touch all its memory)
   */
  memoryOvercommit: number;
  /** Host memory charged per sandbox on top of its guest memory (its cgroup allows this much more). @default 256 */
  sandboxOverheadMib: number;
  /** Retry-After (seconds) of a 503 CAPACITY_EXHAUSTED from node admission. @default 10 */
  capacityRetryAfterSeconds: number;
  /**
   * How long a sandbox may stay paused before the reaper kills it (final
   * usage record, reason `paused_retention`). @default FIREBREAK_PAUSED_RETENTION_MS or 7 days
   */
  pausedRetentionMs: number;
  /**
   * With a shared (PostgreSQL) store: how long a replica's lease on a
   * background pass (reaper, sampler) lasts unrenewed; renewed every third of
   * it. A dead holder's work moves to another replica within this time.
   * @default FIREBREAK_LEASE_TTL_MS or 10_000
   */
  leaseTtlMs: number;
  /**
   * How long a command may take to start (the agent's `start` event) before
   * the request fails with AGENT_ERROR. @default 60_000
   */
  commandStartTimeoutMs: number;
  /** How often the `nodes` lease holder looks for lost and returned nodes. @default 1000 */
  nodeWatchIntervalMs: number;
  /** How often the `templates` lease holder copies templates to nodes that lack them. @default 10000 */
  templateSyncIntervalMs: number;
  /**
   * A node that has not reported for this long is lost (its sandboxes end).
   * @default FIREBREAK_NODE_LEASE_MS or 15000
   */
  nodeLeaseMs: number;
  /**
   * How creates are placed: by predicted activation time ("cost"), or at
   * random among nodes with room (the benchmark's baseline).
   * @default FIREBREAK_PLACEMENT or "cost"
   */
  placement: "cost" | "random";
  /**
   * E2B-created sandboxes reach the public internet unless the create says
   * otherwise (E2B's default). @default FIREBREAK_E2B_INTERNET, else true
   */
  e2bInternetDefault: boolean;
  /**
   * E2B-created sandboxes' ports are public (no token through ingress) unless
   * the create sends `allowPublicTraffic: false` (E2B's default).
   * @default FIREBREAK_E2B_PUBLIC_PORTS, else true
   */
  e2bPublicPortsDefault: boolean;
  /**
   * Warm pool targets follow demand (scheduler/pool-autoscaler.ts): every
   * `poolDemandIntervalMs` the holder of the "pools" lease sets each node's
   * pool per template from the recent creates. Off, pools are what the
   * operator sets (POST /v1/nodes/{id}/pools, FIREBREAK_WARM_POOL).
   * @default FIREBREAK_POOL_DEMAND=on, else off
   */
  poolDemand: boolean;
  /** @default 10_000 */
  poolDemandIntervalMs: number;
  /** Webhook delivery (src/webhooks). */
  webhooks: WebhookConfig;
}

export interface WebhookConfig {
  /**
   * SECURITY: let webhooks go to loopback, link-local, private and this
   * host's own addresses (a lab, or receivers on the operator's network).
   * Off, such URLs are refused at create and at every delivery.
   * @default FIREBREAK_WEBHOOK_ALLOW_PRIVATE=1, else false
   */
  allowPrivate: boolean;
  /** How long one attempt may take (connect, answer). @default 10_000 */
  attemptTimeoutMs: number;
  /** How often the worker looks for due deliveries. @default 1_000 */
  pollIntervalMs: number;
  /** Attempts in flight at once per control plane. @default 32 */
  concurrency: number;
  /** Attempts in flight at once to one webhook per control plane (a slow receiver holds only these). @default 4 */
  perWebhookConcurrency: number;
  /** Delay before the second attempt; doubled after every failure, plus up to 20% jitter. @default 5_000 */
  retryFirstDelayMs: number;
  /** Longest delay between attempts. @default 300_000 (5 minutes) */
  retryMaxDelayMs: number;
  /** A delivery is given up after this many attempts... @default 300 */
  maxAttempts: number;
  /** ...or when its next attempt would come this long after the event. @default 24 h */
  giveUpAfterMs: number;
}

export function defaultWebhookConfig(env: NodeJS.ProcessEnv = process.env): WebhookConfig {
  return {
    allowPrivate: flag(env, "FIREBREAK_WEBHOOK_ALLOW_PRIVATE", false),
    attemptTimeoutMs: 10_000,
    pollIntervalMs: 1_000,
    concurrency: 32,
    perWebhookConcurrency: 4,
    retryFirstDelayMs: 5_000,
    retryMaxDelayMs: 300_000,
    maxAttempts: 300,
    giveUpAfterMs: 24 * 3600_000,
  };
}

/** A true/false setting from the environment (unset: the default); anything else is refused at start. */
function flag(env: NodeJS.ProcessEnv, name: string, fallback: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (raw === "true" || raw === "1") return true;
  if (raw === "false" || raw === "0") return false;
  throw new Error(`${name} must be true or false, got ${JSON.stringify(raw)}`);
}

export const DEFAULT_LIMITS: TenantLimits = {
  maxSandboxes: 100,
  maxVcpus: 64,
  maxMemoryMib: 65_536,
  requestsPerMinute: 6_000,
  maxKeys: 100,
  maxPausedMib: 32_768,
};

/** A positive number from the environment, or the default; anything else is refused at start. */
function positive(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) {
    throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  }
  return n;
}

export function defaultConfig(env: NodeJS.ProcessEnv = process.env): ControlPlaneConfig {
  return {
    defaultTimeoutMs: 300_000,
    maxTimeoutMs: positive(env, "FIREBREAK_MAX_TIMEOUT_MS", 24 * 3600_000),
    usageIntervalMs: 5_000,
    reaperIntervalMs: 250,
    defaultLimits: DEFAULT_LIMITS,
    maxJsonBytes: 1024 * 1024,
    vcpuOvercommit: positive(env, "FIREBREAK_VCPU_OVERCOMMIT", 8),
    memoryOvercommit: positive(env, "FIREBREAK_MEMORY_OVERCOMMIT", 1),
    sandboxOverheadMib: 256,
    capacityRetryAfterSeconds: 10,
    pausedRetentionMs: positive(env, "FIREBREAK_PAUSED_RETENTION_MS", 7 * 24 * 3600_000),
    leaseTtlMs: Math.max(3, Math.round(positive(env, "FIREBREAK_LEASE_TTL_MS", 10_000))),
    commandStartTimeoutMs: 60_000,
    nodeWatchIntervalMs: 1_000,
    templateSyncIntervalMs: 10_000,
    nodeLeaseMs: positive(env, "FIREBREAK_NODE_LEASE_MS", 15_000),
    placement: env["FIREBREAK_PLACEMENT"] === "random" ? "random" : "cost",
    e2bInternetDefault: flag(env, "FIREBREAK_E2B_INTERNET", true),
    e2bPublicPortsDefault: flag(env, "FIREBREAK_E2B_PUBLIC_PORTS", true),
    poolDemand: env["FIREBREAK_POOL_DEMAND"] === "on",
    poolDemandIntervalMs: 10_000,
    webhooks: defaultWebhookConfig(env),
  };
}
