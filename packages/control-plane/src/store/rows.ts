// Row codecs shared by both stores, so a record reads back the same from
// SQLite and PostgreSQL: column names, JSON columns, traffic columns. Rows
// come in with numbers as numbers (PgStore parses int8 and numeric) and
// booleans as 0/1 or true/false.
import { DEFAULT_LIMITS } from "../config.ts";
import { TRAFFIC_CLASSES, type TrafficBytes } from "../node/node-client.ts";
import type {
  ApiKeyRecord,
  DeliveryRecord,
  NodeRecord,
  NodeState,
  OverheadUsageRecord,
  SandboxRecord,
  TemplateOwner,
  Tenant,
  TenantLimits,
  UsageRecord,
  WebhookRecord,
} from "./store.ts";

export type Row = Record<string, unknown>;
/** A value bound to a statement parameter. */
export type Value = string | number | null;

/** usage_records columns: <class>_tx_bytes, <class>_rx_bytes. */
export const TRAFFIC_COLS = TRAFFIC_CLASSES.flatMap((c) => [`${c}_tx_bytes`, `${c}_rx_bytes`]);

export const LIVE_STATES = ["requested", "starting", "running", "paused", "stopping"] as const;
/** States that hold CPU and memory on a node (paused sandboxes hold neither). */
export const HOLDING_STATES = ["requested", "starting", "running", "stopping"] as const;

/** A lease's time to live: a whole number of milliseconds, at least 1. */
export function checkTtl(ttlMs: number): void {
  if (!Number.isInteger(ttlMs) || ttlMs < 1)
    throw new Error(`lease ttlMs must be a whole number >= 1, got ${ttlMs}`);
}

export const NODE_FIELDS: Record<keyof NodeRecord, string> = {
  id: "id",
  address: "address",
  secret: "secret",
  state: "state",
  leaseUntil: "lease_until",
  report: "report",
  joinedAt: "joined_at",
  lastSeenAt: "last_seen_at",
};

export function nodeCols(n: Partial<NodeRecord>): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const [k, col] of Object.entries(NODE_FIELDS)) {
    if (!(k in n)) continue;
    const v = (n as Record<string, unknown>)[k];
    if (v === undefined) continue;
    out[col] = k === "report" ? (v === null ? null : JSON.stringify(v)) : (v as Value);
  }
  return out;
}

export function nodeFrom(r: Row): NodeRecord {
  return {
    id: String(r["id"]),
    address: String(r["address"]),
    secret: String(r["secret"]),
    state: String(r["state"]) as NodeState,
    leaseUntil: r["lease_until"] === null ? null : String(r["lease_until"]),
    report: r["report"] === null ? null : JSON.parse(String(r["report"])),
    joinedAt: String(r["joined_at"]),
    lastSeenAt: r["last_seen_at"] === null ? null : String(r["last_seen_at"]),
  };
}

export function trafficFrom(r: Row): TrafficBytes {
  const out = {} as TrafficBytes;
  for (const c of TRAFFIC_CLASSES) {
    out[c] = { tx: Number(r[`${c}_tx_bytes`] ?? 0), rx: Number(r[`${c}_rx_bytes`] ?? 0) };
  }
  return out;
}

export function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

export function tenantFrom(r: Row): Tenant {
  return {
    id: String(r["id"]),
    name: String(r["name"]),
    // Limits added later (maxKeys, maxPausedMib) take their defaults for older tenants.
    limits: { ...DEFAULT_LIMITS, ...(JSON.parse(String(r["limits"])) as Partial<TenantLimits>) },
    createdAt: String(r["created_at"]),
  };
}

export function keyFrom(r: Row): ApiKeyRecord {
  return {
    id: String(r["id"]),
    tenantId: String(r["tenant_id"]),
    name: String(r["name"]),
    hash: String(r["hash"]),
    scopes: JSON.parse(String(r["scopes"])) as ApiKeyRecord["scopes"],
    createdAt: String(r["created_at"]),
    revokedAt: r["revoked_at"] === null ? null : String(r["revoked_at"]),
    createdByKey: r["created_by_key"] === null ? null : String(r["created_by_key"]),
  };
}

export function templateOwnerFrom(r: Row): TemplateOwner {
  return {
    name: String(r["name"]),
    tenantId: r["tenant_id"] === null ? null : String(r["tenant_id"]),
    createdAt: String(r["created_at"]),
    createdByKey: r["created_by_key"] === null ? null : String(r["created_by_key"]),
  };
}

export const SANDBOX_FIELDS: Record<keyof SandboxRecord, string> = {
  id: "id",
  tenantId: "tenant_id",
  nodeId: "node_id",
  nodeSandboxId: "node_sandbox_id",
  template: "template",
  state: "state",
  vcpus: "vcpus",
  memoryMib: "memory_mib",
  metadata: "metadata",
  createdAt: "created_at",
  readyAt: "ready_at",
  endedAt: "ended_at",
  endReason: "end_reason",
  endedBy: "ended_by",
  timeoutMs: "timeout_ms",
  timeoutAt: "timeout_at",
  startPath: "start_path",
  timings: "timings",
  parentId: "parent_id",
  rootId: "root_id",
  tokenHash: "token_hash",
  envdTokenHash: "envd_token_hash",
  createdByKey: "created_by_key",
  networkPolicy: "network_policy",
  pausedAt: "paused_at",
  placement: "placement",
};
export const JSON_SANDBOX_FIELDS = new Set(["metadata", "timings", "networkPolicy", "placement"]);

export function sandboxCols(s: Partial<SandboxRecord>): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const [k, col] of Object.entries(SANDBOX_FIELDS)) {
    if (!(k in s)) continue;
    const v = (s as Record<string, unknown>)[k];
    if (v === undefined) continue;
    out[col] = JSON_SANDBOX_FIELDS.has(k) ? (v === null ? null : JSON.stringify(v)) : (v as Value);
  }
  return out;
}

export function sandboxFrom(r: Row): SandboxRecord {
  const out: Record<string, unknown> = {};
  for (const [k, col] of Object.entries(SANDBOX_FIELDS)) {
    const v = r[col];
    out[k] = JSON_SANDBOX_FIELDS.has(k) && v !== null ? JSON.parse(String(v)) : v;
  }
  return out as unknown as SandboxRecord;
}

export const USAGE_FIELDS: Record<keyof UsageRecord, string> = {
  sandboxId: "sandbox_id",
  tenantId: "tenant_id",
  template: "template",
  vcpus: "vcpus",
  memoryMib: "memory_mib",
  createdAt: "created_at",
  readyAt: "ready_at",
  endedAt: "ended_at",
  lifetimeSeconds: "lifetime_seconds",
  startPath: "start_path",
  cpuSeconds: "cpu_seconds",
  memoryPeakMib: "memory_peak_mib",
  memoryGibSeconds: "memory_gib_seconds",
  endReason: "end_reason",
  metadata: "metadata",
  parentId: "parent_id",
  rootId: "root_id",
  final: "final",
  traffic: "",
  chargedFrom: "charged_from",
  overheadCpuSeconds: "overhead_cpu_seconds",
  meterState: "meter_state",
};

export function usageCols(u: UsageRecord): Record<string, Value> {
  const out: Record<string, Value> = {};
  for (const [k, col] of Object.entries(USAGE_FIELDS)) {
    const v = (u as unknown as Record<string, unknown>)[k];
    if (k === "traffic") {
      for (const c of TRAFFIC_CLASSES) {
        out[`${c}_tx_bytes`] = Math.round(u.traffic?.[c]?.tx ?? 0);
        out[`${c}_rx_bytes`] = Math.round(u.traffic?.[c]?.rx ?? 0);
      }
    } else if (k === "metadata") out[col] = JSON.stringify(v);
    else if (k === "meterState") out[col] = v === undefined || v === null ? null : JSON.stringify(v);
    else if (k === "overheadCpuSeconds") out[col] = Number(v ?? 0);
    else if (k === "final") out[col] = v ? 1 : 0;
    else out[col] = (v ?? null) as Value;
  }
  return out;
}

export function usageFrom(r: Row): UsageRecord {
  const out: Record<string, unknown> = {};
  for (const [k, col] of Object.entries(USAGE_FIELDS)) out[k] = r[col];
  out["metadata"] = JSON.parse(String(r["metadata"]));
  out["traffic"] = trafficFrom(r);
  out["final"] = Number(r["final"]) === 1 || r["final"] === true;
  out["chargedFrom"] =
    r["charged_from"] === null || r["charged_from"] === undefined ? null : String(r["charged_from"]);
  out["overheadCpuSeconds"] = Number(r["overhead_cpu_seconds"] ?? 0);
  out["meterState"] =
    r["meter_state"] === null || r["meter_state"] === undefined ? null : JSON.parse(String(r["meter_state"]));
  return out as unknown as UsageRecord;
}

export function overheadCols(o: OverheadUsageRecord): Record<string, Value> {
  return {
    id: o.id,
    node_id: o.nodeId,
    kind: o.kind,
    template: o.template,
    at: o.at,
    cpu_seconds: o.cpuSeconds,
    wall_seconds: o.wallSeconds,
    memory_mib: o.memoryMib,
    node_sandbox_id: o.nodeSandboxId,
    sandbox_id: o.sandboxId,
  };
}

export function overheadFrom(r: Row): OverheadUsageRecord {
  return {
    id: String(r["id"]),
    nodeId: String(r["node_id"]),
    kind: String(r["kind"]),
    template: String(r["template"]),
    at: String(r["at"]),
    cpuSeconds: Number(r["cpu_seconds"]),
    wallSeconds: Number(r["wall_seconds"]),
    memoryMib: Number(r["memory_mib"]),
    nodeSandboxId: r["node_sandbox_id"] === null ? null : String(r["node_sandbox_id"]),
    sandboxId: r["sandbox_id"] === null ? null : String(r["sandbox_id"]),
  };
}

export function webhookCols(w: WebhookRecord): Record<string, Value> {
  return {
    id: w.id,
    tenant_id: w.tenantId,
    url: w.url,
    secret: w.secret,
    events: JSON.stringify(w.events),
    description: JSON.stringify(w.description),
    created_at: w.createdAt,
    created_by_key: w.createdByKey,
    disabled_at: w.disabledAt,
  };
}

export function webhookFrom(r: Row): WebhookRecord {
  return {
    id: String(r["id"]),
    tenantId: String(r["tenant_id"]),
    url: String(r["url"]),
    secret: String(r["secret"]),
    events: JSON.parse(String(r["events"])) as string[],
    description: JSON.parse(String(r["description"])) as string,
    createdAt: String(r["created_at"]),
    createdByKey: r["created_by_key"] === null ? null : String(r["created_by_key"]),
    disabledAt: r["disabled_at"] === null ? null : String(r["disabled_at"]),
  };
}

export function deliveryFrom(r: Row): DeliveryRecord {
  return {
    id: String(r["id"]),
    webhookId: String(r["webhook_id"]),
    tenantId: String(r["tenant_id"]),
    eventKey: String(r["event_key"]),
    type: String(r["type"]),
    eventSeq: r["event_seq"] === null ? null : Number(r["event_seq"]),
    sandboxId: String(r["sandbox_id"]),
    attempts: Number(r["attempts"]),
    nextAttemptAt: String(r["next_attempt_at"]),
    deliveredAt: r["delivered_at"] === null ? null : String(r["delivered_at"]),
    gaveUpAt: r["gave_up_at"] === null ? null : String(r["gave_up_at"]),
    lastError: r["last_error"] === null ? null : JSON.parse(String(r["last_error"])),
    createdAt: String(r["created_at"]),
  };
}

/** The outbox rows a new event (or final usage record) makes, one per webhook that wants it. */
export function deliveriesFor(
  hooks: WebhookRecord[],
  ev: {
    eventKey: string;
    type: string;
    eventSeq: number | null;
    sandboxId: string;
    tenantId: string;
    at: string;
  },
): Record<string, Value>[] {
  return hooks.map((h) => ({
    id: `${h.id}:${ev.eventKey}`,
    webhook_id: h.id,
    tenant_id: ev.tenantId,
    event_key: ev.eventKey,
    type: ev.type,
    event_seq: ev.eventSeq,
    sandbox_id: ev.sandboxId,
    attempts: 0,
    next_attempt_at: ev.at,
    delivered_at: null,
    gave_up_at: null,
    last_error: null,
    created_at: ev.at,
    claim: null,
    claimed_until: null,
  }));
}
