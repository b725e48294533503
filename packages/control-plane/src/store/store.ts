// The control plane's durable state behind one narrow interface with two
// implementations: SqliteStore (one process, the default) and PgStore
// (PostgreSQL, shared by several control-plane replicas). Every method that
// must be atomic is one method here (quota check and insert; ending a sandbox
// and writing its final usage record; key lineage; leases; join tokens), so
// each backend implements it with its own transaction, and stays atomic when
// several processes call it at once. One contract suite (store.contract.ts)
// runs against both.
//
// Times are ISO-8601 strings (UTC, millisecond precision). Free text (key
// names, metadata, event details, every JSON field) may hold any character,
// NUL included. Ids, hashes and names never hold NUL (PostgreSQL refuses to
// store one); a lookup by one that does finds nothing rather than failing.

import type { NormalizedPolicy, TrafficBytes } from "../node/node-client.ts";
import type { JobStore } from "./job-store.ts";

export type Scope = "sandboxes" | "templates" | "admin";
export const SCOPES: readonly Scope[] = ["sandboxes", "templates", "admin"];

/**
 * requested: recorded, not yet on a node; starting: the node is creating it;
 * running; paused (on disk, no CPU or RAM); stopping: being killed;
 * killed, crashed, failed: final.
 */
export type SandboxState =
  | "requested"
  | "starting"
  | "running"
  | "paused"
  | "stopping"
  | "killed"
  | "crashed"
  | "failed";

export const SANDBOX_STATES: readonly SandboxState[] = [
  "requested",
  "starting",
  "running",
  "paused",
  "stopping",
  "killed",
  "crashed",
  "failed",
];

export type StartPath = "warm" | "snapshot" | "cold";

export interface TenantLimits {
  maxSandboxes: number;
  maxVcpus: number;
  maxMemoryMib: number;
  requestsPerMinute: number;
  /** Unrevoked API keys the tenant may hold (keys minted over the API). */
  maxKeys: number;
  /** Paused sandboxes' on-disk state, estimated as their guest memory (MiB). */
  maxPausedMib: number;
}

export interface Tenant {
  id: string;
  name: string;
  limits: TenantLimits;
  createdAt: string;
}

export interface ApiKeyRecord {
  id: string;
  tenantId: string;
  name: string;
  /** sha256 (hex) of the key's secret part. */
  hash: string;
  scopes: Scope[];
  createdAt: string;
  revokedAt: string | null;
  /** The key that minted this one (null: bootstrap, FIREBREAK_ADMIN_KEY, `firebreak admin-key`). */
  createdByKey: string | null;
}

/**
 * Who owns a built template. A template without a record (built by root with
 * the local CLI, or before ownership was recorded) is an operator template.
 */
export interface TemplateOwner {
  name: string;
  /** null: an operator template (readable by every tenant, writable by admins). */
  tenantId: string | null;
  createdAt: string;
  createdByKey: string | null;
}

export interface SandboxRecord {
  id: string;
  tenantId: string;
  /** The node that runs it, and the node's own id for it (set once scheduled). */
  nodeId: string;
  nodeSandboxId: string | null;
  template: string;
  state: SandboxState;
  vcpus: number;
  memoryMib: number;
  metadata: Record<string, string>;
  createdAt: string;
  readyAt: string | null;
  endedAt: string | null;
  endReason: string | null;
  /** Who ended it: `key:<id>`, `reaper`, `node`, `control-plane`. */
  endedBy: string | null;
  timeoutMs: number;
  /** When the reaper kills it (null while requested/starting and while paused). */
  timeoutAt: string | null;
  startPath: StartPath | null;
  timings: { totalMs: number; phases: Record<string, number> } | null;
  parentId: string | null;
  rootId: string;
  /** sha256 of the per-sandbox token (X-Firebreak-Sandbox-Token). */
  tokenHash: string;
  /** sha256 of the guest agent's access token (envd proxy lookup); set when started. */
  envdTokenHash: string | null;
  createdByKey: string;
  /** Egress policy in force (last set); null: the node's default (deny all). */
  networkPolicy: NormalizedPolicy | null;
  /** When it was paused (null unless paused); the reaper ends it after the paused retention. */
  pausedAt: string | null;
  /** The scheduler's placement decision (JSON, opaque to the store); null until placed. */
  placement: unknown;
}

export interface SandboxEvent {
  at: string;
  type: string;
  detail: Record<string, unknown>;
}

export interface UsageRecord {
  sandboxId: string;
  tenantId: string;
  template: string;
  vcpus: number;
  memoryMib: number;
  createdAt: string;
  readyAt: string | null;
  /** For an interim record: the time of its last sample. */
  endedAt: string | null;
  lifetimeSeconds: number;
  startPath: StartPath | null;
  cpuSeconds: number;
  memoryPeakMib: number;
  memoryGibSeconds: number;
  endReason: string | null;
  metadata: Record<string, string>;
  parentId: string | null;
  rootId: string;
  final: boolean;
  /** Network bytes per destination class (tx from the guest, rx to it), up to the last sample. */
  traffic: TrafficBytes;
  /**
   * When charging began: the hand-over (the sandbox was ready for its tenant).
   * CPU, memory and traffic are charged from then until `endedAt`; null when
   * it never started (nothing charged).
   */
  chargedFrom: string | null;
  /** CPU its VM used before hand-over (restore, boot, its time in a warm pool): the platform's, not charged. */
  overheadCpuSeconds: number;
  /**
   * The meter's raw state (usage/meter.ts), so any replica continues it
   * exactly (opaque to the store; null in records written before it existed).
   */
  meterState: unknown;
}

/**
 * CPU the platform spent that no tenant is charged for, as a node reported
 * it (node-agent daemon/overhead.ts): warm pools, snapshot preparation,
 * restores and boots before hand-over, template builds, failed starts.
 */
export interface OverheadUsageRecord {
  /** Unique per record (`<node>:<epoch>:<seq>`); storing one twice changes nothing. */
  id: string;
  nodeId: string;
  /** warm_pool | restore | boot | resume | fork | snapshot_prepare | template_build | failed_start */
  kind: string;
  template: string;
  at: string;
  cpuSeconds: number;
  wallSeconds: number;
  memoryMib: number;
  nodeSandboxId: string | null;
  /** The control plane's sandbox id, when the work was for one. */
  sandboxId: string | null;
}

/** A tenant's webhook subscription. */
export interface WebhookRecord {
  id: string;
  tenantId: string;
  url: string;
  /**
   * The signing secret (whsec_...). SECURITY: stored as given: signing needs
   * the secret itself, so the database is as secret as the secrets in it.
   */
  secret: string;
  /** Event types it wants (`sandbox.ended`, `usage.final`, `sandbox.*`, `*`). */
  events: string[];
  description: string;
  createdAt: string;
  createdByKey: string | null;
  disabledAt: string | null;
}

/** One event due to one webhook (the outbox): at least once, until delivered or given up. */
export interface DeliveryRecord {
  id: string;
  webhookId: string;
  tenantId: string;
  /** The event's stable id: the idempotency key receivers deduplicate by (`evt_<seq>`, `usage_<sandbox>`). */
  eventKey: string;
  /** sandbox.<event type> or usage.final */
  type: string;
  /** The sandbox event's seq (sandbox events), or null (usage records). */
  eventSeq: number | null;
  sandboxId: string;
  attempts: number;
  nextAttemptAt: string;
  deliveredAt: string | null;
  gaveUpAt: string | null;
  lastError: string | null;
  createdAt: string;
}

export type DeliveryOutcome =
  | { ok: true; at: string }
  | { ok: false; error: string; nextAttemptAt: string }
  | { ok: false; error: string; gaveUpAt: string };

/** A sandbox event with its place in the store's global order (the event stream's cursor). */
export interface StoredEvent extends SandboxEvent {
  seq: number;
  sandboxId: string;
  tenantId: string;
}

export interface UsageGroup {
  key: string | null;
  sandboxes: number;
  lifetimeSeconds: number;
  cpuSeconds: number;
  memoryGibSeconds: number;
  peakMemoryMib: number;
  traffic: TrafficBytes;
}

export type UsageGroupBy = "tenant" | "template" | "root" | { metadata: string };

/**
 * What a node may still commit: vCPUs and memory (guest memory plus
 * `overheadMib` per sandbox) over every tenant's sandboxes on it.
 */
export interface NodeBudget {
  nodeId: string;
  vcpus: number;
  memoryMib: number;
  overheadMib: number;
}

export type QuotaResult =
  | { ok: true }
  | { ok: false; limit: keyof TenantLimits | "nodeVcpus" | "nodeMemoryMib"; message: string };

export type KeyInsertResult =
  | { ok: true }
  | { ok: false; reason: "maxKeys" | "minter_revoked"; message: string };

/** A held lease: background work that must run once across replicas (reaper, sampler). */
export interface LeaseState {
  /** True when the caller holds it now (acquired or renewed by this call). */
  held: boolean;
  /** The holder in force ("" when nobody holds it). */
  holder: string;
  /** When the holder's lease runs out, by the store's clock. */
  expiresAt: string;
}

export type NodeState = "active" | "draining" | "lost";
export const NODE_STATES: readonly NodeState[] = ["active", "draining", "lost"];

/** A node daemon known to the control plane. */
export interface NodeRecord {
  id: string;
  /** Where its API listens (host:port). */
  address: string;
  /**
   * The node credential (bearer token and TLS-PSK key). SECURITY: stored as
   * given, because TLS-PSK needs the key itself on both ends: the database is
   * as secret as the credentials in it.
   */
  secret: string;
  state: NodeState;
  /** Until when its last heartbeat vouches for it (null: never reported). */
  leaseUntil: string | null;
  /** Its last report (capacity, warm slots, ...), JSON, opaque to the store. */
  report: unknown | null;
  joinedAt: string;
  lastSeenAt: string | null;
}

/** A single-use join token for a node (only its sha256 is stored). */
export interface JoinTokenRecord {
  hash: string;
  createdAt: string;
  expiresAt: string;
  createdByKey: string | null;
}

export interface ListSandboxesQuery {
  tenantId: string;
  states?: SandboxState[];
  metadata?: Record<string, string>;
  limit: number;
  cursor?: string;
}

export interface Store {
  // Tenants
  createTenant(t: Tenant): Promise<void>;
  getTenant(id: string): Promise<Tenant | undefined>;
  listTenants(): Promise<Tenant[]>;

  // API keys
  /** Inserts a key as it is (bootstrap, recovery): no limit, no minter check. */
  createKey(k: ApiKeyRecord): Promise<void>;
  /**
   * Inserts a key minted over the API, atomically: refused when its tenant
   * already holds `maxKeys` unrevoked keys, or when its minter
   * (`k.createdByKey`) is revoked by now (so a key minted while its minter is
   * being revoked cannot outlive it).
   */
  createKeyWithinLimit(k: ApiKeyRecord, maxKeys: number): Promise<KeyInsertResult>;
  findKeyByHash(hash: string): Promise<ApiKeyRecord | undefined>;
  getKey(id: string): Promise<ApiKeyRecord | undefined>;
  listKeys(tenantId: string | null): Promise<ApiKeyRecord[]>;
  /**
   * Revokes a key and, in the same transaction, every key minted by it (and
   * by those, transitively). Returns the ids revoked now; empty when the key
   * was unknown or already revoked.
   */
  revokeKeyTree(id: string, at: string): Promise<string[]>;

  // Templates (ownership; the images themselves live on the node)
  getTemplateOwner(name: string): Promise<TemplateOwner | undefined>;
  listTemplateOwners(): Promise<TemplateOwner[]>;
  /**
   * Records `owner` unless the name already has a record; returns the record
   * in force afterwards (the existing one when there was one).
   */
  claimTemplate(owner: TemplateOwner): Promise<{ owner: TemplateOwner; created: boolean }>;
  removeTemplateOwner(name: string): Promise<void>;

  // Sandboxes
  /**
   * Inserts a sandbox unless the tenant's limits (or, when given, the node's
   * budget) would be exceeded by it plus `extra` more of the same shape.
   * Atomic: concurrent creates cannot both pass. Tenant limits are checked
   * first.
   */
  insertSandboxWithinQuota(
    s: SandboxRecord,
    limits: TenantLimits,
    extra?: number,
    node?: NodeBudget,
  ): Promise<QuotaResult>;
  /** Checks the quota (and the node's budget) for `count` more sandboxes of a shape without inserting. */
  checkQuota(
    tenantId: string,
    shape: { vcpus: number; memoryMib: number },
    count: number,
    limits: TenantLimits,
    node?: NodeBudget,
  ): Promise<QuotaResult>;
  /** A tenant's paused sandboxes: how many, and their guest memory summed. */
  pausedUsage(tenantId: string): Promise<{ sandboxes: number; memoryMib: number }>;
  getSandbox(id: string): Promise<SandboxRecord | undefined>;
  findSandboxByTokenHash(hash: string): Promise<SandboxRecord | undefined>;
  findSandboxByEnvdTokenHash(hash: string): Promise<SandboxRecord | undefined>;
  listSandboxes(q: ListSandboxesQuery): Promise<{ sandboxes: SandboxRecord[]; nextCursor: string | null }>;
  /** Every sandbox not in a final state (all tenants). */
  listLiveSandboxes(): Promise<SandboxRecord[]>;
  /** Every sandbox not in a final state on one node (all tenants), oldest first. */
  listLiveSandboxesOnNode(nodeId: string): Promise<SandboxRecord[]>;
  /**
   * Updates fields of a live sandbox; `from` (when given) must match its
   * current state. Returns false (and changes nothing) otherwise.
   */
  updateSandbox(id: string, patch: Partial<SandboxRecord>, from?: SandboxState[]): Promise<boolean>;
  /**
   * Ends a sandbox and writes its final usage record, exactly once, in one
   * transaction. False when it had already ended (nothing is written).
   */
  endSandbox(
    id: string,
    end: { state: "killed" | "crashed" | "failed"; endedAt: string; endReason: string; endedBy: string },
    usage: UsageRecord,
  ): Promise<boolean>;
  // (endSandbox also enqueues, in its transaction, a `usage.final` delivery for every webhook of the tenant that wants it.)

  // Events
  /**
   * Appends an event and, in the same transaction, a delivery for every
   * webhook of the sandbox's tenant that wants its type (`sandbox.<type>`).
   * INVARIANT: events become visible in seq order (listTenantEvents never
   * skips one that commits later with a lower seq).
   */
  addEvent(sandboxId: string, e: SandboxEvent): Promise<void>;
  listEvents(sandboxId: string): Promise<SandboxEvent[]>;
  /** Events after `afterSeq` in seq order, of one tenant (null: all), optionally of one sandbox. */
  listTenantEvents(q: {
    tenantId: string | null;
    afterSeq: number;
    limit: number;
    sandboxId?: string;
  }): Promise<StoredEvent[]>;
  getEvent(seq: number): Promise<StoredEvent | undefined>;
  /** The highest event seq stored (0 when none): where a new event stream starts. */
  latestEventSeq(): Promise<number>;

  // Usage
  /** Writes the interim record of a live sandbox (never over a final one). */
  putInterimUsage(u: UsageRecord): Promise<void>;
  getUsage(sandboxId: string): Promise<UsageRecord | undefined>;
  /**
   * Usage records, newest first: of a tenant (null: all), a sandbox, a root
   * request, created in [from, to).
   */
  listUsage(q: {
    tenantId: string | null;
    sandboxId?: string;
    rootId?: string;
    from?: string;
    to?: string;
    limit: number;
  }): Promise<UsageRecord[]>;
  /** Stores overhead records; ones stored before (same id) are left as they are. Returns how many were new. */
  putOverhead(records: OverheadUsageRecord[]): Promise<number>;
  /** Overhead records with `at` in [from, to), newest first. */
  listOverhead(q: { from?: string; to?: string; limit: number }): Promise<OverheadUsageRecord[]>;

  // Settings (operator configuration shared by replicas: the price sheet)
  getSetting(key: string): Promise<unknown | undefined>;
  putSetting(key: string, value: unknown): Promise<void>;

  // Webhooks
  createWebhook(w: WebhookRecord): Promise<void>;
  getWebhook(id: string): Promise<WebhookRecord | undefined>;
  /** A tenant's webhooks (null: every tenant's), disabled ones included. */
  listWebhooks(tenantId: string | null): Promise<WebhookRecord[]>;
  /** False when there was no such enabled webhook. Its pending deliveries are given up. */
  disableWebhook(id: string, at: string): Promise<boolean>;
  /**
   * Claims deliveries that are due (not delivered, not given up, next attempt
   * passed, not claimed by a live holder) for `leaseMs`. Atomic: concurrent
   * claimers never get the same delivery while its claim holds.
   */
  claimDeliveries(holder: string, now: string, leaseMs: number, limit: number): Promise<DeliveryRecord[]>;
  /** Records an attempt's outcome; false when `holder` no longer holds the claim. */
  finishDelivery(id: string, holder: string, outcome: DeliveryOutcome): Promise<boolean>;
  listDeliveries(webhookId: string, limit: number): Promise<DeliveryRecord[]>;
  usageGroups(q: {
    tenantId: string | null;
    groupBy: UsageGroupBy;
    from?: string;
    to?: string;
  }): Promise<UsageGroup[]>;

  // Leases (table-based, with an expiry by the store's clock)
  /**
   * Acquires the lease when it is free or expired, renews it when `holder`
   * holds it already (a new expiry `ttlMs` from now); otherwise leaves it.
   * Atomic: of concurrent callers at most one holds it.
   */
  tryLease(name: string, holder: string, ttlMs: number): Promise<LeaseState>;
  /** Gives the lease up at once, if `holder` holds it (else nothing). */
  releaseLease(name: string, holder: string): Promise<void>;
  /** The lease as recorded (expired ones included), or undefined when it was never taken or was released. */
  getLease(name: string): Promise<{ holder: string; expiresAt: string } | undefined>;

  // Nodes
  /** Inserts the node, or replaces every field of an existing one with the same id. */
  upsertNode(n: NodeRecord): Promise<void>;
  getNode(id: string): Promise<NodeRecord | undefined>;
  /** Every node, by id. */
  listNodes(): Promise<NodeRecord[]>;
  /**
   * Updates fields of a node (not its id); `fromStates` (when given) must
   * match its current state. False (and nothing changed) otherwise, or when
   * there is no such node.
   */
  updateNode(id: string, patch: Partial<Omit<NodeRecord, "id">>, fromStates?: NodeState[]): Promise<boolean>;
  /** False when there was no such node. */
  removeNode(id: string): Promise<boolean>;

  // Join tokens
  createJoinToken(t: JoinTokenRecord): Promise<void>;
  /**
   * Uses a join token: true once, when it exists, has not been used and
   * `at` is before its expiry. Atomic: of concurrent uses at most one wins.
   */
  useJoinToken(hash: string, at: string): Promise<boolean>;

  /** The job queue (jobs, tasks, attempts, logs, uploaded files): job-store.ts. */
  readonly jobs: JobStore;

  close(): void | Promise<void>;
}

export function isFinalState(s: SandboxState): boolean {
  return s === "killed" || s === "crashed" || s === "failed";
}

/** Whether a webhook subscribed to `type` (exact, `<prefix>.*`, or `*`). */
export function webhookWants(events: readonly string[], type: string): boolean {
  return events.some((e) => e === "*" || e === type || (e.endsWith(".*") && type.startsWith(e.slice(0, -1))));
}
