// The embedded store: one SQLite file in the state dir (node:sqlite, no native
// addon), WAL mode, migrations in code (PRAGMA user_version).
import fs from "node:fs";
import path from "node:path";
import { DatabaseSync, type SQLInputValue } from "node:sqlite";
import { DEFAULT_LIMITS } from "../config.ts";
import { TRAFFIC_CLASSES, type TrafficBytes } from "../node/node-client.ts";
import type {
  ApiKeyRecord,
  KeyInsertResult,
  ListSandboxesQuery,
  NodeBudget,
  QuotaResult,
  SandboxEvent,
  SandboxRecord,
  SandboxState,
  Store,
  TemplateOwner,
  Tenant,
  TenantLimits,
  UsageGroup,
  UsageGroupBy,
  UsageRecord,
} from "./store.ts";

/** usage_records columns: <class>_tx_bytes, <class>_rx_bytes. */
const TRAFFIC_COLS = TRAFFIC_CLASSES.flatMap((c) => [`${c}_tx_bytes`, `${c}_rx_bytes`]);

export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    limits TEXT NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
  );
  CREATE TABLE sandboxes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    node_id TEXT NOT NULL,
    node_sandbox_id TEXT,
    template TEXT NOT NULL,
    state TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    ready_at TEXT,
    ended_at TEXT,
    end_reason TEXT,
    ended_by TEXT,
    timeout_ms INTEGER NOT NULL,
    timeout_at TEXT,
    start_path TEXT,
    timings TEXT,
    parent_id TEXT,
    root_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    envd_token_hash TEXT,
    created_by_key TEXT NOT NULL
  );
  CREATE INDEX sandboxes_tenant_state ON sandboxes(tenant_id, state);
  CREATE INDEX sandboxes_envd_token ON sandboxes(envd_token_hash);
  CREATE TABLE sandbox_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT NOT NULL,
    at TEXT NOT NULL,
    type TEXT NOT NULL,
    detail TEXT NOT NULL
  );
  CREATE INDEX sandbox_events_sandbox ON sandbox_events(sandbox_id, seq);
  -- One row per sandbox: interim while it lives, final once it ended.
  -- INVARIANT: a final row is never changed again (every UPDATE says final = 0).
  CREATE TABLE usage_records (
    sandbox_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    template TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    ready_at TEXT,
    ended_at TEXT,
    lifetime_seconds REAL NOT NULL,
    start_path TEXT,
    cpu_seconds REAL NOT NULL,
    memory_peak_mib REAL NOT NULL,
    memory_gib_seconds REAL NOT NULL,
    end_reason TEXT,
    metadata TEXT NOT NULL,
    parent_id TEXT,
    root_id TEXT NOT NULL,
    final INTEGER NOT NULL
  );
  CREATE INDEX usage_records_tenant ON usage_records(tenant_id, created_at);
  `,
  // 2: egress policy per sandbox; traffic bytes per destination class in the ledger.
  `
  ALTER TABLE sandboxes ADD COLUMN network_policy TEXT;
  ${TRAFFIC_COLS.map((c) => `ALTER TABLE usage_records ADD COLUMN ${c} INTEGER NOT NULL DEFAULT 0;`).join("\n  ")}
  `,
  // 3: key lineage (revocation cascades), template ownership, paused retention.
  // Sandboxes paused before this migration get a full retention period from now.
  `
  ALTER TABLE api_keys ADD COLUMN created_by_key TEXT;
  CREATE INDEX api_keys_created_by ON api_keys(created_by_key);
  CREATE INDEX api_keys_tenant ON api_keys(tenant_id, revoked_at);
  CREATE TABLE templates (
    name TEXT PRIMARY KEY,
    tenant_id TEXT REFERENCES tenants(id),
    created_at TEXT NOT NULL,
    created_by_key TEXT
  );
  ALTER TABLE sandboxes ADD COLUMN paused_at TEXT;
  UPDATE sandboxes SET paused_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE state = 'paused';
  `,
];

const LIVE = "('requested','starting','running','paused','stopping')";
/** States that hold CPU and memory on a node (paused sandboxes hold neither). */
const HOLDING = "('requested','starting','running','stopping')";

type Row = Record<string, SQLInputValue>;

export class SqliteStore implements Store {
  readonly db: DatabaseSync;

  constructor(file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    this.db = new DatabaseSync(file);
    // SECURITY: key hashes and sandbox token hashes live here: root-only.
    fs.chmodSync(file, 0o600);
    this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;");
    this.db.exec("PRAGMA foreign_keys = ON;");
    this.#migrate();
  }

  #migrate(): void {
    const version = (this.db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.#tx(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.exec(`PRAGMA user_version = ${v + 1}`);
      });
    }
  }

  #tx<T>(fn: () => T): T {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const out = fn();
      this.db.exec("COMMIT");
      return out;
    } catch (e) {
      this.db.exec("ROLLBACK");
      throw e;
    }
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }

  // Tenants

  async createTenant(t: Tenant): Promise<void> {
    this.db
      .prepare("INSERT INTO tenants (id, name, limits, created_at) VALUES (?, ?, ?, ?)")
      .run(t.id, t.name, JSON.stringify(t.limits), t.createdAt);
  }

  async getTenant(id: string): Promise<Tenant | undefined> {
    const r = this.db.prepare("SELECT * FROM tenants WHERE id = ?").get(id) as Row | undefined;
    return r ? tenantFrom(r) : undefined;
  }

  async listTenants(): Promise<Tenant[]> {
    return (this.db.prepare("SELECT * FROM tenants ORDER BY created_at, id").all() as Row[]).map(tenantFrom);
  }

  // Keys

  async createKey(k: ApiKeyRecord): Promise<void> {
    this.#insertKey(k);
  }

  #insertKey(k: ApiKeyRecord): void {
    this.db
      .prepare(
        "INSERT INTO api_keys (id, tenant_id, name, hash, scopes, created_at, revoked_at, created_by_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      )
      .run(
        k.id,
        k.tenantId,
        k.name,
        k.hash,
        JSON.stringify(k.scopes),
        k.createdAt,
        k.revokedAt,
        k.createdByKey,
      );
  }

  async createKeyWithinLimit(k: ApiKeyRecord, maxKeys: number): Promise<KeyInsertResult> {
    return this.#tx(() => {
      if (k.createdByKey !== null) {
        const minter = this.db.prepare("SELECT revoked_at FROM api_keys WHERE id = ?").get(k.createdByKey) as
          | Row
          | undefined;
        // INVARIANT: no key outlives its minter's revocation (the cascade
        // runs in a transaction too, so one of the two sees the other).
        if (!minter || minter["revoked_at"] !== null) {
          return {
            ok: false,
            reason: "minter_revoked",
            message: `API key ${k.createdByKey} was revoked; use another key`,
          };
        }
      }
      const held = this.db
        .prepare("SELECT COUNT(*) AS n FROM api_keys WHERE tenant_id = ? AND revoked_at IS NULL")
        .get(k.tenantId) as { n: number };
      if (held.n >= maxKeys) {
        return {
          ok: false,
          reason: "maxKeys",
          message: `quota exceeded: maxKeys is ${maxKeys} and tenant ${k.tenantId} holds ${held.n} unrevoked keys; revoke one (DELETE /v1/keys/{id}) or ask for a higher limit`,
        };
      }
      this.#insertKey(k);
      return { ok: true };
    });
  }

  async getKey(id: string): Promise<ApiKeyRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM api_keys WHERE id = ?").get(id) as Row | undefined;
    return r ? keyFrom(r) : undefined;
  }

  async findKeyByHash(hash: string): Promise<ApiKeyRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM api_keys WHERE hash = ?").get(hash) as Row | undefined;
    return r ? keyFrom(r) : undefined;
  }

  async listKeys(tenantId: string | null): Promise<ApiKeyRecord[]> {
    const rows =
      tenantId === null
        ? this.db.prepare("SELECT * FROM api_keys ORDER BY created_at, id").all()
        : this.db.prepare("SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at, id").all(tenantId);
    return (rows as Row[]).map(keyFrom);
  }

  async revokeKeyTree(id: string, at: string): Promise<string[]> {
    return this.#tx(() => {
      const root = this.db.prepare("SELECT revoked_at FROM api_keys WHERE id = ?").get(id) as Row | undefined;
      if (!root || root["revoked_at"] !== null) return [];
      // Every key minted by this one, transitively (revoked ones included:
      // what they minted goes too). UNION stops at cycles, which ids cannot form anyway.
      const ids = (
        this.db
          .prepare(
            `WITH RECURSIVE tree(id) AS (
               SELECT ? UNION SELECT k.id FROM api_keys k JOIN tree ON k.created_by_key = tree.id
             ) SELECT k.id FROM api_keys k JOIN tree ON k.id = tree.id WHERE k.revoked_at IS NULL`,
          )
          .all(id) as Row[]
      ).map((r) => String(r["id"]));
      const revoke = this.db.prepare(
        "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
      );
      for (const k of ids) revoke.run(at, k);
      return ids;
    });
  }

  // Templates

  async getTemplateOwner(name: string): Promise<TemplateOwner | undefined> {
    const r = this.db.prepare("SELECT * FROM templates WHERE name = ?").get(name) as Row | undefined;
    return r ? templateOwnerFrom(r) : undefined;
  }

  async listTemplateOwners(): Promise<TemplateOwner[]> {
    return (this.db.prepare("SELECT * FROM templates ORDER BY name").all() as Row[]).map(templateOwnerFrom);
  }

  async claimTemplate(owner: TemplateOwner): Promise<{ owner: TemplateOwner; created: boolean }> {
    return this.#tx(() => {
      const r = this.db
        .prepare(
          "INSERT INTO templates (name, tenant_id, created_at, created_by_key) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
        )
        .run(owner.name, owner.tenantId, owner.createdAt, owner.createdByKey);
      const now = this.db.prepare("SELECT * FROM templates WHERE name = ?").get(owner.name) as Row;
      return { owner: templateOwnerFrom(now), created: Number(r.changes) === 1 };
    });
  }

  async removeTemplateOwner(name: string): Promise<void> {
    this.db.prepare("DELETE FROM templates WHERE name = ?").run(name);
  }

  // Sandboxes

  #quota(
    tenantId: string,
    shape: { vcpus: number; memoryMib: number },
    count: number,
    l: TenantLimits,
    node: NodeBudget | undefined,
  ): QuotaResult {
    const live = this.db
      .prepare(`SELECT COUNT(*) AS n FROM sandboxes WHERE tenant_id = ? AND state IN ${LIVE}`)
      .get(tenantId) as { n: number };
    const held = this.db
      .prepare(
        `SELECT COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS mem FROM sandboxes WHERE tenant_id = ? AND state IN ${HOLDING}`,
      )
      .get(tenantId) as { vcpus: number; mem: number };
    if (live.n + count > l.maxSandboxes) {
      return {
        ok: false,
        limit: "maxSandboxes",
        message: `quota exceeded: maxSandboxes is ${l.maxSandboxes} and this tenant has ${live.n} live sandboxes (paused ones count); kill one or ask for a higher limit`,
      };
    }
    if (held.vcpus + shape.vcpus * count > l.maxVcpus) {
      return {
        ok: false,
        limit: "maxVcpus",
        message: `quota exceeded: maxVcpus is ${l.maxVcpus}, ${held.vcpus} in use, ${shape.vcpus * count} requested; use fewer vCPUs or kill a sandbox`,
      };
    }
    if (held.mem + shape.memoryMib * count > l.maxMemoryMib) {
      return {
        ok: false,
        limit: "maxMemoryMib",
        message: `quota exceeded: maxMemoryMib is ${l.maxMemoryMib}, ${held.mem} MiB in use, ${shape.memoryMib * count} MiB requested; use less memory or kill a sandbox`,
      };
    }
    return node ? this.#nodeBudget(shape, count, node) : { ok: true };
  }

  /** Every tenant's sandboxes that hold CPU and memory on the node, against its budget. */
  #nodeBudget(shape: { vcpus: number; memoryMib: number }, count: number, node: NodeBudget): QuotaResult {
    const held = this.db
      .prepare(
        `SELECT COUNT(*) AS n, COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS mem FROM sandboxes WHERE node_id = ? AND state IN ${HOLDING}`,
      )
      .get(node.nodeId) as { n: number; vcpus: number; mem: number };
    const wantVcpus = shape.vcpus * count;
    if (held.vcpus + wantVcpus > node.vcpus) {
      return {
        ok: false,
        limit: "nodeVcpus",
        message: `node ${node.nodeId} is full: ${held.vcpus} vCPUs committed of ${Math.floor(node.vcpus)} it may commit, ${wantVcpus} requested; retry later or use fewer vCPUs`,
      };
    }
    const committedMib = held.mem + held.n * node.overheadMib;
    const wantMib = (shape.memoryMib + node.overheadMib) * count;
    if (committedMib + wantMib > node.memoryMib) {
      return {
        ok: false,
        limit: "nodeMemoryMib",
        message: `node ${node.nodeId} is full: ${committedMib} MiB committed of ${Math.floor(node.memoryMib)} MiB it may commit, ${wantMib} MiB requested (guest memory + ${node.overheadMib} MiB each); retry later or use less memory`,
      };
    }
    return { ok: true };
  }

  async pausedUsage(tenantId: string): Promise<{ sandboxes: number; memoryMib: number }> {
    const r = this.db
      .prepare(
        "SELECT COUNT(*) AS n, COALESCE(SUM(memory_mib), 0) AS mem FROM sandboxes WHERE tenant_id = ? AND state = 'paused'",
      )
      .get(tenantId) as { n: number; mem: number };
    return { sandboxes: Number(r.n), memoryMib: Number(r.mem) };
  }

  async checkQuota(
    tenantId: string,
    shape: { vcpus: number; memoryMib: number },
    count: number,
    limits: TenantLimits,
    node?: NodeBudget,
  ): Promise<QuotaResult> {
    return this.#quota(tenantId, shape, count, limits, node);
  }

  async insertSandboxWithinQuota(
    s: SandboxRecord,
    limits: TenantLimits,
    extra = 0,
    node?: NodeBudget,
  ): Promise<QuotaResult> {
    return this.#tx(() => {
      const q = this.#quota(s.tenantId, s, 1 + extra, limits, node);
      if (!q.ok) return q;
      const cols = sandboxCols(s);
      this.db
        .prepare(
          `INSERT INTO sandboxes (${Object.keys(cols).join(", ")}) VALUES (${Object.keys(cols)
            .map(() => "?")
            .join(", ")})`,
        )
        .run(...Object.values(cols));
      return q;
    });
  }

  async getSandbox(id: string): Promise<SandboxRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM sandboxes WHERE id = ?").get(id) as Row | undefined;
    return r ? sandboxFrom(r) : undefined;
  }

  async findSandboxByTokenHash(hash: string): Promise<SandboxRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM sandboxes WHERE token_hash = ?").get(hash) as Row | undefined;
    return r ? sandboxFrom(r) : undefined;
  }

  async findSandboxByEnvdTokenHash(hash: string): Promise<SandboxRecord | undefined> {
    const r = this.db
      .prepare(`SELECT * FROM sandboxes WHERE envd_token_hash = ? AND state IN ${LIVE}`)
      .get(hash) as Row | undefined;
    return r ? sandboxFrom(r) : undefined;
  }

  async listSandboxes(
    q: ListSandboxesQuery,
  ): Promise<{ sandboxes: SandboxRecord[]; nextCursor: string | null }> {
    const limit = Math.max(1, Math.floor(q.limit)); // SQLite refuses a fractional LIMIT
    const where = ["tenant_id = ?"];
    const args: SQLInputValue[] = [q.tenantId];
    if (q.states?.length) {
      where.push(`state IN (${q.states.map(() => "?").join(", ")})`);
      args.push(...q.states);
    }
    // Keys are matched as values (json_each), never spliced into a JSON path:
    // a key may hold any character, quotes and NUL included.
    for (const [k, v] of Object.entries(q.metadata ?? {})) {
      where.push("EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND type = 'text' AND value = ?)");
      args.push(k, v);
    }
    if (q.cursor) {
      where.push("seq < ?");
      args.push(Number.parseInt(q.cursor, 36));
    }
    const rows = this.db
      .prepare(`SELECT * FROM sandboxes WHERE ${where.join(" AND ")} ORDER BY seq DESC LIMIT ?`)
      .all(...args, limit + 1) as Row[];
    const more = rows.length > limit;
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      sandboxes: page.map(sandboxFrom),
      nextCursor: more && last ? Number(last["seq"]).toString(36) : null,
    };
  }

  async listLiveSandboxes(): Promise<SandboxRecord[]> {
    return (
      this.db.prepare(`SELECT * FROM sandboxes WHERE state IN ${LIVE} ORDER BY seq`).all() as Row[]
    ).map(sandboxFrom);
  }

  async updateSandbox(id: string, patch: Partial<SandboxRecord>, from?: SandboxState[]): Promise<boolean> {
    const cols = sandboxCols(patch);
    const sets = Object.keys(cols).map((c) => `${c} = ?`);
    if (!sets.length) return true;
    const states = from ?? ["requested", "starting", "running", "paused", "stopping"];
    const r = this.db
      .prepare(
        `UPDATE sandboxes SET ${sets.join(", ")} WHERE id = ? AND state IN (${states.map(() => "?").join(", ")})`,
      )
      .run(...Object.values(cols), id, ...states);
    return Number(r.changes) === 1;
  }

  async endSandbox(
    id: string,
    end: { state: "killed" | "crashed" | "failed"; endedAt: string; endReason: string; endedBy: string },
    usage: UsageRecord,
  ): Promise<boolean> {
    return this.#tx(() => {
      const r = this.db
        .prepare(
          `UPDATE sandboxes SET state = ?, ended_at = ?, end_reason = ?, ended_by = ? WHERE id = ? AND state IN ${LIVE}`,
        )
        .run(end.state, end.endedAt, end.endReason, end.endedBy, id);
      if (Number(r.changes) !== 1) return false;
      // INVARIANT: exactly one final usage record per sandbox. The sandbox row
      // left a live state in this same transaction, so this runs once.
      this.#writeUsage({ ...usage, final: true });
      return true;
    });
  }

  // Events

  async addEvent(sandboxId: string, e: SandboxEvent): Promise<void> {
    this.db
      .prepare("INSERT INTO sandbox_events (sandbox_id, at, type, detail) VALUES (?, ?, ?, ?)")
      .run(sandboxId, e.at, e.type, JSON.stringify(e.detail));
  }

  async listEvents(sandboxId: string): Promise<SandboxEvent[]> {
    return (
      this.db
        .prepare("SELECT * FROM sandbox_events WHERE sandbox_id = ? ORDER BY seq")
        .all(sandboxId) as Row[]
    ).map((r) => ({
      at: String(r["at"]),
      type: String(r["type"]),
      detail: JSON.parse(String(r["detail"])) as Record<string, unknown>,
    }));
  }

  // Usage

  #writeUsage(u: UsageRecord): void {
    const cols = usageCols(u);
    const names = Object.keys(cols);
    this.db
      .prepare(
        `INSERT INTO usage_records (${names.join(", ")}) VALUES (${names.map(() => "?").join(", ")})
         ON CONFLICT(sandbox_id) DO UPDATE SET ${names
           .filter((n) => n !== "sandbox_id")
           .map((n) => `${n} = excluded.${n}`)
           .join(", ")} WHERE usage_records.final = 0`,
      )
      .run(...Object.values(cols));
  }

  async putInterimUsage(u: UsageRecord): Promise<void> {
    this.#writeUsage({ ...u, final: false });
  }

  async getUsage(sandboxId: string): Promise<UsageRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM usage_records WHERE sandbox_id = ?").get(sandboxId) as
      | Row
      | undefined;
    return r ? usageFrom(r) : undefined;
  }

  async listUsage(q: { tenantId: string | null; sandboxId?: string; limit: number }): Promise<UsageRecord[]> {
    const where: string[] = [];
    const args: SQLInputValue[] = [];
    if (q.tenantId !== null) {
      where.push("tenant_id = ?");
      args.push(q.tenantId);
    }
    if (q.sandboxId) {
      where.push("sandbox_id = ?");
      args.push(q.sandboxId);
    }
    const sql = `SELECT * FROM usage_records ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at DESC, sandbox_id LIMIT ?`;
    return (this.db.prepare(sql).all(...args, Math.max(1, Math.floor(q.limit))) as Row[]).map(usageFrom);
  }

  async usageGroups(q: {
    tenantId: string | null;
    groupBy: UsageGroupBy;
    from?: string;
    to?: string;
  }): Promise<UsageGroup[]> {
    const args: SQLInputValue[] = [];
    let keyExpr: string;
    if (q.groupBy === "tenant") keyExpr = "tenant_id";
    else if (q.groupBy === "template") keyExpr = "template";
    else if (q.groupBy === "root") keyExpr = "root_id";
    else {
      keyExpr = "(SELECT value FROM json_each(metadata) WHERE key = ? AND type = 'text')";
      args.push(q.groupBy.metadata);
    }
    const where: string[] = [];
    if (q.tenantId !== null) {
      where.push("tenant_id = ?");
      args.push(q.tenantId);
    }
    if (q.from) {
      where.push("created_at >= ?");
      args.push(q.from);
    }
    if (q.to) {
      where.push("created_at < ?");
      args.push(q.to);
    }
    const rows = this.db
      .prepare(
        `SELECT ${keyExpr} AS key, COUNT(*) AS sandboxes, SUM(lifetime_seconds) AS lifetime, SUM(cpu_seconds) AS cpu,
                SUM(memory_gib_seconds) AS gib, MAX(memory_peak_mib) AS peak,
                ${TRAFFIC_COLS.map((c) => `SUM(${c}) AS ${c}`).join(", ")}
         FROM usage_records ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
         GROUP BY 1 ORDER BY 1`,
      )
      .all(...args) as Row[];
    return rows.map((r) => ({
      key: r["key"] === null ? null : String(r["key"]),
      sandboxes: Number(r["sandboxes"]),
      lifetimeSeconds: round3(Number(r["lifetime"])),
      cpuSeconds: round3(Number(r["cpu"])),
      memoryGibSeconds: round3(Number(r["gib"])),
      peakMemoryMib: round3(Number(r["peak"])),
      traffic: trafficFrom(r),
    }));
  }
}

function trafficFrom(r: Row): TrafficBytes {
  const out = {} as TrafficBytes;
  for (const c of TRAFFIC_CLASSES) {
    out[c] = { tx: Number(r[`${c}_tx_bytes`] ?? 0), rx: Number(r[`${c}_rx_bytes`] ?? 0) };
  }
  return out;
}

function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}

function tenantFrom(r: Row): Tenant {
  return {
    id: String(r["id"]),
    name: String(r["name"]),
    // Limits added later (maxKeys, maxPausedMib) take their defaults for older tenants.
    limits: { ...DEFAULT_LIMITS, ...(JSON.parse(String(r["limits"])) as Partial<TenantLimits>) },
    createdAt: String(r["created_at"]),
  };
}

function keyFrom(r: Row): ApiKeyRecord {
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

function templateOwnerFrom(r: Row): TemplateOwner {
  return {
    name: String(r["name"]),
    tenantId: r["tenant_id"] === null ? null : String(r["tenant_id"]),
    createdAt: String(r["created_at"]),
    createdByKey: r["created_by_key"] === null ? null : String(r["created_by_key"]),
  };
}

const SANDBOX_FIELDS: Record<keyof SandboxRecord, string> = {
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
};
const JSON_SANDBOX_FIELDS = new Set(["metadata", "timings", "networkPolicy"]);

function sandboxCols(s: Partial<SandboxRecord>): Record<string, SQLInputValue> {
  const out: Record<string, SQLInputValue> = {};
  for (const [k, col] of Object.entries(SANDBOX_FIELDS)) {
    if (!(k in s)) continue;
    const v = (s as Record<string, unknown>)[k];
    if (v === undefined) continue;
    out[col] = JSON_SANDBOX_FIELDS.has(k) ? (v === null ? null : JSON.stringify(v)) : (v as SQLInputValue);
  }
  return out;
}

function sandboxFrom(r: Row): SandboxRecord {
  const out: Record<string, unknown> = {};
  for (const [k, col] of Object.entries(SANDBOX_FIELDS)) {
    const v = r[col];
    out[k] = JSON_SANDBOX_FIELDS.has(k) && v !== null ? JSON.parse(String(v)) : v;
  }
  return out as unknown as SandboxRecord;
}

const USAGE_FIELDS: Record<keyof UsageRecord, string> = {
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
};

function usageCols(u: UsageRecord): Record<string, SQLInputValue> {
  const out: Record<string, SQLInputValue> = {};
  for (const [k, col] of Object.entries(USAGE_FIELDS)) {
    const v = (u as unknown as Record<string, unknown>)[k];
    if (k === "traffic") {
      for (const c of TRAFFIC_CLASSES) {
        out[`${c}_tx_bytes`] = Math.round(u.traffic?.[c]?.tx ?? 0);
        out[`${c}_rx_bytes`] = Math.round(u.traffic?.[c]?.rx ?? 0);
      }
    } else if (k === "metadata") out[col] = JSON.stringify(v);
    else if (k === "final") out[col] = v ? 1 : 0;
    else out[col] = (v ?? null) as SQLInputValue;
  }
  return out;
}

function usageFrom(r: Row): UsageRecord {
  const out: Record<string, unknown> = {};
  for (const [k, col] of Object.entries(USAGE_FIELDS)) out[k] = r[col];
  out["metadata"] = JSON.parse(String(r["metadata"]));
  out["traffic"] = trafficFrom(r);
  out["final"] = Number(r["final"]) === 1;
  return out as unknown as UsageRecord;
}
