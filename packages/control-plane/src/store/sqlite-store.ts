// The embedded store: one SQLite file in the state dir (node:sqlite, no native
// addon), WAL mode, migrations in code (PRAGMA user_version). One process owns
// the file (server.ts locks it) and every write transaction is BEGIN
// IMMEDIATE, so SQLite's single writer makes each method atomic.
import fs from "node:fs";
import path from "node:path";
import { DatabaseSync, type SQLInputValue } from "node:sqlite";
import { keyVerdict, nodeVerdict, tenantVerdict } from "./quota.ts";
import {
  checkTtl,
  deliveriesFor,
  deliveryFrom,
  keyFrom,
  nodeCols,
  nodeFrom,
  overheadCols,
  overheadFrom,
  round3,
  sandboxCols,
  sandboxFrom,
  TRAFFIC_COLS,
  templateOwnerFrom,
  tenantFrom,
  trafficFrom,
  usageCols,
  usageFrom,
  webhookCols,
  webhookFrom,
} from "./rows.ts";
import { SQLITE_JOBS_MIGRATION, SqliteJobStore } from "./sqlite-job-store.ts";
import {
  type ApiKeyRecord,
  type DeliveryOutcome,
  type DeliveryRecord,
  type JoinTokenRecord,
  type KeyInsertResult,
  type LeaseState,
  type ListSandboxesQuery,
  type NodeBudget,
  type NodeRecord,
  type NodeState,
  type OverheadUsageRecord,
  type QuotaResult,
  type SandboxEvent,
  type SandboxRecord,
  type SandboxState,
  type Store,
  type StoredEvent,
  type TemplateOwner,
  type Tenant,
  type TenantLimits,
  type UsageGroup,
  type UsageGroupBy,
  type UsageRecord,
  type WebhookRecord,
  webhookWants,
} from "./store.ts";

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
  // 4: several nodes: placement per sandbox, the node registry, join tokens,
  // leases; lists page by (tenant, seq) without sorting.
  `
  ALTER TABLE sandboxes ADD COLUMN placement TEXT;
  CREATE INDEX sandboxes_node_state ON sandboxes(node_id, state);
  CREATE INDEX sandboxes_tenant_seq ON sandboxes(tenant_id, seq);
  CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    secret TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_until TEXT,
    report TEXT,
    joined_at TEXT NOT NULL,
    last_seen_at TEXT
  );
  CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_by_key TEXT,
    used_at TEXT
  );
  CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TEXT NOT NULL
  );
  `,
  // 5: the job queue: jobs, tasks, attempts, their logs, uploaded files (sqlite-job-store.ts).
  SQLITE_JOBS_MIGRATION,
  // 6: honest metering (charged from hand-over, the meter's raw state with
  // the interim record, the platform's overhead account), the price sheet,
  // webhooks and their outbox.
  `
  ALTER TABLE usage_records ADD COLUMN charged_from TEXT;
  ALTER TABLE usage_records ADD COLUMN overhead_cpu_seconds REAL NOT NULL DEFAULT 0;
  ALTER TABLE usage_records ADD COLUMN meter_state TEXT;
  CREATE INDEX usage_records_root ON usage_records(root_id);
  CREATE TABLE overhead_records (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    template TEXT NOT NULL,
    at TEXT NOT NULL,
    cpu_seconds REAL NOT NULL,
    wall_seconds REAL NOT NULL,
    memory_mib INTEGER NOT NULL,
    node_sandbox_id TEXT,
    sandbox_id TEXT
  );
  CREATE INDEX overhead_records_at ON overhead_records(at);
  CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
  );
  CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by_key TEXT,
    disabled_at TEXT
  );
  CREATE INDEX webhooks_tenant ON webhooks(tenant_id);
  CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    type TEXT NOT NULL,
    event_seq INTEGER,
    sandbox_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    delivered_at TEXT,
    gave_up_at TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    claim TEXT,
    claimed_until TEXT
  );
  CREATE INDEX webhook_deliveries_due ON webhook_deliveries(delivered_at, gave_up_at, next_attempt_at);
  CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, created_at);
  `,
];

const LIVE = "('requested','starting','running','paused','stopping')";
/** States that hold CPU and memory on a node (paused sandboxes hold neither). */
const HOLDING = "('requested','starting','running','stopping')";

type Row = Record<string, SQLInputValue>;

export class SqliteStore implements Store {
  readonly db: DatabaseSync;
  readonly jobs: SqliteJobStore;

  constructor(file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    this.db = new DatabaseSync(file);
    // SECURITY: key hashes and sandbox token hashes live here: root-only.
    fs.chmodSync(file, 0o600);
    this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;");
    this.db.exec("PRAGMA foreign_keys = ON;");
    this.#migrate();
    this.jobs = new SqliteJobStore(this.db);
  }

  #migrate(): void {
    const version = (this.db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
    if (version > MIGRATIONS.length) {
      throw new Error(
        `the control plane database is at schema version ${version}, newer than this Firebreak (${MIGRATIONS.length}); run the newer Firebreak, or restore a backup`,
      );
    }
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
      // INVARIANT: no key outlives its minter's revocation (the cascade
      // runs in a transaction too, so one of the two sees the other).
      const minter =
        k.createdByKey === null
          ? undefined
          : (this.db.prepare("SELECT revoked_at FROM api_keys WHERE id = ?").get(k.createdByKey) as
              | Row
              | undefined);
      const held = this.db
        .prepare("SELECT COUNT(*) AS n FROM api_keys WHERE tenant_id = ? AND revoked_at IS NULL")
        .get(k.tenantId) as { n: number };
      const refused = keyVerdict(
        minter === undefined ? undefined : minter["revoked_at"] !== null,
        k.createdByKey,
        held.n,
        maxKeys,
        k.tenantId,
      );
      if (refused) return refused;
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
    const t = tenantVerdict({ live: live.n, vcpus: held.vcpus, memoryMib: held.mem }, shape, count, l);
    if (!t.ok || !node) return t;
    // Every tenant's sandboxes that hold CPU and memory on the node, against its budget.
    const onNode = this.db
      .prepare(
        `SELECT COUNT(*) AS n, COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS mem FROM sandboxes WHERE node_id = ? AND state IN ${HOLDING}`,
      )
      .get(node.nodeId) as { n: number; vcpus: number; mem: number };
    return nodeVerdict(
      { sandboxes: onNode.n, vcpus: onNode.vcpus, memoryMib: onNode.mem },
      shape,
      count,
      node,
    );
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

  async listLiveSandboxesOnNode(nodeId: string): Promise<SandboxRecord[]> {
    return (
      this.db
        .prepare(`SELECT * FROM sandboxes WHERE node_id = ? AND state IN ${LIVE} ORDER BY seq`)
        .all(nodeId) as Row[]
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
      this.#enqueue(usage.tenantId, {
        eventKey: `usage_${id}`,
        type: "usage.final",
        eventSeq: null,
        sandboxId: id,
        at: end.endedAt,
      });
      return true;
    });
  }

  /** Outbox rows for the tenant's webhooks that want `type` (inside a transaction). */
  #enqueue(
    tenantId: string,
    ev: { eventKey: string; type: string; eventSeq: number | null; sandboxId: string; at: string },
  ): void {
    const hooks = (
      this.db
        .prepare("SELECT * FROM webhooks WHERE tenant_id = ? AND disabled_at IS NULL")
        .all(tenantId) as Row[]
    )
      .map(webhookFrom)
      .filter((h) => webhookWants(h.events, ev.type));
    for (const cols of deliveriesFor(hooks, { ...ev, tenantId })) {
      this.db
        .prepare(
          `INSERT INTO webhook_deliveries (${Object.keys(cols).join(", ")}) VALUES (${Object.keys(cols)
            .map(() => "?")
            .join(", ")}) ON CONFLICT(id) DO NOTHING`,
        )
        .run(...(Object.values(cols) as SQLInputValue[]));
    }
  }

  // Leases: one process owns a SQLite file (the db lock), so the process clock is the store's clock.

  async tryLease(name: string, holder: string, ttlMs: number): Promise<LeaseState> {
    checkTtl(ttlMs);
    return this.#tx(() => {
      const now = Date.now();
      const expiresAt = new Date(now + ttlMs).toISOString();
      // INVARIANT: taken only when free, expired, or already ours (one write transaction).
      this.db
        .prepare(
          `INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
           ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
           WHERE leases.holder = excluded.holder OR leases.expires_at <= ?`,
        )
        .run(name, holder, expiresAt, new Date(now).toISOString());
      const r = this.db.prepare("SELECT holder, expires_at FROM leases WHERE name = ?").get(name) as Row;
      return {
        held: String(r["holder"]) === holder,
        holder: String(r["holder"]),
        expiresAt: String(r["expires_at"]),
      };
    });
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    this.db.prepare("DELETE FROM leases WHERE name = ? AND holder = ?").run(name, holder);
  }

  async getLease(name: string): Promise<{ holder: string; expiresAt: string } | undefined> {
    const r = this.db.prepare("SELECT holder, expires_at FROM leases WHERE name = ?").get(name) as
      | Row
      | undefined;
    return r ? { holder: String(r["holder"]), expiresAt: String(r["expires_at"]) } : undefined;
  }

  // Nodes

  async upsertNode(n: NodeRecord): Promise<void> {
    const cols = nodeCols(n);
    const names = Object.keys(cols);
    this.db
      .prepare(
        `INSERT INTO nodes (${names.join(", ")}) VALUES (${names.map(() => "?").join(", ")})
         ON CONFLICT(id) DO UPDATE SET ${names
           .filter((c) => c !== "id")
           .map((c) => `${c} = excluded.${c}`)
           .join(", ")}`,
      )
      .run(...Object.values(cols));
  }

  async getNode(id: string): Promise<NodeRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM nodes WHERE id = ?").get(id) as Row | undefined;
    return r ? nodeFrom(r) : undefined;
  }

  async listNodes(): Promise<NodeRecord[]> {
    return (this.db.prepare("SELECT * FROM nodes ORDER BY id").all() as Row[]).map(nodeFrom);
  }

  async updateNode(
    id: string,
    patch: Partial<Omit<NodeRecord, "id">>,
    fromStates?: NodeState[],
  ): Promise<boolean> {
    const { id: _ignored, ...rest } = patch as Partial<NodeRecord>;
    const cols = nodeCols(rest);
    const sets = Object.keys(cols).map((c) => `${c} = ?`);
    const where = ["id = ?"];
    const args: SQLInputValue[] = [id];
    if (fromStates) {
      where.push(`state IN (${fromStates.map(() => "?").join(", ") || "NULL"})`);
      args.push(...fromStates);
    }
    if (!sets.length) {
      return this.db.prepare(`SELECT 1 FROM nodes WHERE ${where.join(" AND ")}`).get(...args) !== undefined;
    }
    const r = this.db
      .prepare(`UPDATE nodes SET ${sets.join(", ")} WHERE ${where.join(" AND ")}`)
      .run(...Object.values(cols), ...args);
    return Number(r.changes) === 1;
  }

  async removeNode(id: string): Promise<boolean> {
    return Number(this.db.prepare("DELETE FROM nodes WHERE id = ?").run(id).changes) === 1;
  }

  // Join tokens

  async createJoinToken(t: JoinTokenRecord): Promise<void> {
    this.db
      .prepare("INSERT INTO join_tokens (hash, created_at, expires_at, created_by_key) VALUES (?, ?, ?, ?)")
      .run(t.hash, t.createdAt, t.expiresAt, t.createdByKey);
  }

  async useJoinToken(hash: string, at: string): Promise<boolean> {
    // INVARIANT: single use: one UPDATE that only matches an unused, unexpired token.
    const r = this.db
      .prepare("UPDATE join_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at > ?")
      .run(at, hash, at);
    return Number(r.changes) === 1;
  }

  // Events

  async addEvent(sandboxId: string, e: SandboxEvent): Promise<void> {
    this.#tx(() => {
      const r = this.db
        .prepare("INSERT INTO sandbox_events (sandbox_id, at, type, detail) VALUES (?, ?, ?, ?)")
        .run(sandboxId, e.at, e.type, JSON.stringify(e.detail));
      const owner = this.db.prepare("SELECT tenant_id FROM sandboxes WHERE id = ?").get(sandboxId) as
        | Row
        | undefined;
      if (!owner) return;
      const seq = Number(r.lastInsertRowid);
      this.#enqueue(String(owner["tenant_id"]), {
        eventKey: `evt_${seq}`,
        type: `sandbox.${e.type}`,
        eventSeq: seq,
        sandboxId,
        at: e.at,
      });
    });
  }

  async latestEventSeq(): Promise<number> {
    const r = this.db.prepare("SELECT COALESCE(MAX(seq), 0) AS seq FROM sandbox_events").get() as Row;
    return Number(r["seq"]);
  }

  async listTenantEvents(q: {
    tenantId: string | null;
    afterSeq: number;
    limit: number;
    sandboxId?: string;
  }): Promise<StoredEvent[]> {
    const where = ["e.seq > ?"];
    const args: SQLInputValue[] = [Math.floor(q.afterSeq)];
    if (q.tenantId !== null) {
      where.push("s.tenant_id = ?");
      args.push(q.tenantId);
    }
    if (q.sandboxId) {
      where.push("e.sandbox_id = ?");
      args.push(q.sandboxId);
    }
    return (
      this.db
        .prepare(
          `SELECT e.*, s.tenant_id AS tenant_id FROM sandbox_events e JOIN sandboxes s ON s.id = e.sandbox_id
           WHERE ${where.join(" AND ")} ORDER BY e.seq LIMIT ?`,
        )
        .all(...args, Math.max(1, Math.floor(q.limit))) as Row[]
    ).map(storedEventFrom);
  }

  async getEvent(seq: number): Promise<StoredEvent | undefined> {
    const r = this.db
      .prepare(
        "SELECT e.*, s.tenant_id AS tenant_id FROM sandbox_events e JOIN sandboxes s ON s.id = e.sandbox_id WHERE e.seq = ?",
      )
      .get(Math.floor(seq)) as Row | undefined;
    return r ? storedEventFrom(r) : undefined;
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

  async listUsage(q: {
    tenantId: string | null;
    sandboxId?: string;
    rootId?: string;
    from?: string;
    to?: string;
    limit: number;
  }): Promise<UsageRecord[]> {
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
    if (q.rootId) {
      where.push("root_id = ?");
      args.push(q.rootId);
    }
    if (q.from) {
      where.push("created_at >= ?");
      args.push(q.from);
    }
    if (q.to) {
      where.push("created_at < ?");
      args.push(q.to);
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

  // Overhead

  async putOverhead(records: OverheadUsageRecord[]): Promise<number> {
    if (!records.length) return 0;
    return this.#tx(() => {
      let added = 0;
      for (const o of records) {
        const cols = overheadCols(o);
        const r = this.db
          .prepare(
            `INSERT INTO overhead_records (${Object.keys(cols).join(", ")}) VALUES (${Object.keys(cols)
              .map(() => "?")
              .join(", ")}) ON CONFLICT(id) DO NOTHING`,
          )
          .run(...Object.values(cols));
        added += Number(r.changes);
      }
      return added;
    });
  }

  async listOverhead(q: { from?: string; to?: string; limit: number }): Promise<OverheadUsageRecord[]> {
    const where: string[] = [];
    const args: SQLInputValue[] = [];
    if (q.from) {
      where.push("at >= ?");
      args.push(q.from);
    }
    if (q.to) {
      where.push("at < ?");
      args.push(q.to);
    }
    return (
      this.db
        .prepare(
          `SELECT * FROM overhead_records ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY at DESC, id LIMIT ?`,
        )
        .all(...args, Math.max(1, Math.floor(q.limit))) as Row[]
    ).map(overheadFrom);
  }

  // Settings

  async getSetting(key: string): Promise<unknown | undefined> {
    const r = this.db.prepare("SELECT value FROM settings WHERE key = ?").get(key) as Row | undefined;
    return r ? JSON.parse(String(r["value"])) : undefined;
  }

  async putSetting(key: string, value: unknown): Promise<void> {
    this.db
      .prepare(
        "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      )
      .run(key, JSON.stringify(value));
  }

  // Webhooks

  async createWebhook(w: WebhookRecord): Promise<void> {
    const cols = webhookCols(w);
    this.db
      .prepare(
        `INSERT INTO webhooks (${Object.keys(cols).join(", ")}) VALUES (${Object.keys(cols)
          .map(() => "?")
          .join(", ")})`,
      )
      .run(...Object.values(cols));
  }

  async getWebhook(id: string): Promise<WebhookRecord | undefined> {
    const r = this.db.prepare("SELECT * FROM webhooks WHERE id = ?").get(id) as Row | undefined;
    return r ? webhookFrom(r) : undefined;
  }

  async listWebhooks(tenantId: string | null): Promise<WebhookRecord[]> {
    const rows =
      tenantId === null
        ? this.db.prepare("SELECT * FROM webhooks ORDER BY created_at, id").all()
        : this.db.prepare("SELECT * FROM webhooks WHERE tenant_id = ? ORDER BY created_at, id").all(tenantId);
    return (rows as Row[]).map(webhookFrom);
  }

  async disableWebhook(id: string, at: string): Promise<boolean> {
    return this.#tx(() => {
      const r = this.db
        .prepare("UPDATE webhooks SET disabled_at = ? WHERE id = ? AND disabled_at IS NULL")
        .run(at, id);
      if (Number(r.changes) !== 1) return false;
      this.db
        .prepare(
          "UPDATE webhook_deliveries SET gave_up_at = ?, last_error = ? WHERE webhook_id = ? AND delivered_at IS NULL AND gave_up_at IS NULL",
        )
        .run(at, JSON.stringify("the webhook was deleted"), id);
      return true;
    });
  }

  async claimDeliveries(
    holder: string,
    now: string,
    leaseMs: number,
    limit: number,
  ): Promise<DeliveryRecord[]> {
    return this.#tx(() => {
      const until = new Date(Date.parse(now) + leaseMs).toISOString();
      const rows = this.db
        .prepare(
          `SELECT * FROM webhook_deliveries
           WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= ?
             AND (claimed_until IS NULL OR claimed_until <= ?)
           ORDER BY next_attempt_at, created_at, id LIMIT ?`,
        )
        .all(now, now, Math.max(1, Math.floor(limit))) as Row[];
      const claim = this.db.prepare(
        "UPDATE webhook_deliveries SET claim = ?, claimed_until = ? WHERE id = ?",
      );
      for (const r of rows) claim.run(holder, until, String(r["id"]));
      return rows.map(deliveryFrom);
    });
  }

  async finishDelivery(id: string, holder: string, outcome: DeliveryOutcome): Promise<boolean> {
    const sets = outcome.ok
      ? { delivered_at: outcome.at, last_error: null as string | null }
      : "gaveUpAt" in outcome
        ? { gave_up_at: outcome.gaveUpAt, last_error: JSON.stringify(outcome.error) }
        : { next_attempt_at: outcome.nextAttemptAt, last_error: JSON.stringify(outcome.error) };
    const names = Object.keys(sets);
    const r = this.db
      .prepare(
        `UPDATE webhook_deliveries SET ${names.map((n) => `${n} = ?`).join(", ")}, attempts = attempts + 1, claim = NULL, claimed_until = NULL
         WHERE id = ? AND claim = ? AND delivered_at IS NULL AND gave_up_at IS NULL`,
      )
      .run(...(Object.values(sets) as SQLInputValue[]), id, holder);
    return Number(r.changes) === 1;
  }

  async listDeliveries(webhookId: string, limit: number): Promise<DeliveryRecord[]> {
    return (
      this.db
        .prepare("SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY created_at DESC, id LIMIT ?")
        .all(webhookId, Math.max(1, Math.floor(limit))) as Row[]
    ).map(deliveryFrom);
  }
}

function storedEventFrom(r: Row): StoredEvent {
  return {
    seq: Number(r["seq"]),
    sandboxId: String(r["sandbox_id"]),
    tenantId: String(r["tenant_id"]),
    at: String(r["at"]),
    type: String(r["type"]),
    detail: JSON.parse(String(r["detail"])) as Record<string, unknown>,
  };
}
