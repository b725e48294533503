// The shared store: PostgreSQL through node-postgres, for several control-plane
// replicas (or one that should not keep its state on its own disk). Same Store
// contract as SqliteStore (store.contract.ts runs against both); its own
// migrations, versioned in the table firebreak_schema.
//
// Concurrency. Transactions run at READ COMMITTED; what SQLite gets from its
// single writer, this store gets from locks, per method:
// - insertSandboxWithinQuota: transaction-scoped advisory locks on the tenant,
//   then (when a node budget is given) on the node, always in that order, held
//   from the counts to the insert: two inserts for one tenant (or one node)
//   never both see room for one.
// - createKeyWithinLimit and revokeKeyTree: one advisory lock for every key
//   lineage write (minting over the API is rare): the minter check, the count
//   and the insert cannot interleave with a cascade that should have reached
//   the new key.
// - endSandbox: the UPDATE ... WHERE state IN (live) takes the row lock; a
//   second ender waits, re-reads the row (now final) and matches nothing, so
//   the final usage record is written once.
// - updateSandbox, updateNode, useJoinToken, tryLease: one statement each,
//   whose WHERE is re-checked on the newest row version after a wait.
// - claimTemplate: INSERT ... ON CONFLICT DO NOTHING (waits for a concurrent
//   insert of the same name), then reads the winner.
// - putInterimUsage: an upsert that never touches a final row.
// Deadlocks and serialization failures (none expected with the lock order
// above) are retried, a whole transaction at a time.
//
// Text. PostgreSQL text cannot hold NUL (U+0000); SQLite's can. Free text is
// therefore stored JSON-encoded (key names; metadata, event details and every
// other JSON column are JSON anyway), and metadata is matched through
// `metadata_idx`, a jsonb whose keys and values are JSON-encoded strings (no
// NUL survives encoding). Ids, hashes and names that select rows never hold
// NUL; a lookup by one that does finds nothing. Every text column compares
// bytewise (COLLATE "C"), like SQLite, so orderings agree.
import pg from "pg";
import { PG_JOBS_MIGRATION, PgJobStore } from "./pg-job-store.ts";
import { keyVerdict, nodeVerdict, tenantVerdict } from "./quota.ts";
import {
  checkTtl,
  deliveriesFor,
  deliveryFrom,
  HOLDING_STATES,
  keyFrom,
  LIVE_STATES,
  nodeCols,
  nodeFrom,
  overheadCols,
  overheadFrom,
  type Row,
  round3,
  sandboxCols,
  sandboxFrom,
  TRAFFIC_COLS,
  templateOwnerFrom,
  tenantFrom,
  trafficFrom,
  usageCols,
  usageFrom,
  type Value,
  webhookCols,
  webhookFrom,
} from "./rows.ts";
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

const C = 'COLLATE "C"';

/** Schema versions; firebreak_schema.version is how many have run. Never edit one that shipped. */
export const PG_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE tenants (
    id TEXT ${C} PRIMARY KEY,
    name TEXT ${C} NOT NULL UNIQUE,
    limits TEXT NOT NULL,
    created_at TEXT ${C} NOT NULL
  );
  CREATE TABLE api_keys (
    id TEXT ${C} PRIMARY KEY,
    tenant_id TEXT ${C} NOT NULL REFERENCES tenants(id),
    name_json TEXT NOT NULL,
    hash TEXT ${C} NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at TEXT ${C} NOT NULL,
    revoked_at TEXT ${C},
    created_by_key TEXT ${C}
  );
  CREATE INDEX api_keys_created_by ON api_keys(created_by_key);
  CREATE INDEX api_keys_tenant ON api_keys(tenant_id, revoked_at);
  CREATE TABLE templates (
    name TEXT ${C} PRIMARY KEY,
    tenant_id TEXT ${C} REFERENCES tenants(id),
    created_at TEXT ${C} NOT NULL,
    created_by_key TEXT ${C}
  );
  CREATE TABLE sandboxes (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT ${C} NOT NULL UNIQUE,
    tenant_id TEXT ${C} NOT NULL REFERENCES tenants(id),
    node_id TEXT ${C} NOT NULL,
    node_sandbox_id TEXT ${C},
    template TEXT ${C} NOT NULL,
    state TEXT ${C} NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    metadata_idx JSONB NOT NULL,
    created_at TEXT ${C} NOT NULL,
    ready_at TEXT ${C},
    ended_at TEXT ${C},
    end_reason TEXT ${C},
    ended_by TEXT ${C},
    timeout_ms BIGINT NOT NULL,
    timeout_at TEXT ${C},
    start_path TEXT ${C},
    timings TEXT,
    parent_id TEXT ${C},
    root_id TEXT ${C} NOT NULL,
    token_hash TEXT ${C} NOT NULL UNIQUE,
    envd_token_hash TEXT ${C},
    created_by_key TEXT ${C} NOT NULL,
    network_policy TEXT,
    paused_at TEXT ${C},
    placement TEXT
  );
  CREATE INDEX sandboxes_tenant_seq ON sandboxes(tenant_id, seq);
  CREATE INDEX sandboxes_tenant_state ON sandboxes(tenant_id, state);
  CREATE INDEX sandboxes_node_state ON sandboxes(node_id, state);
  CREATE INDEX sandboxes_state ON sandboxes(state);
  CREATE INDEX sandboxes_envd_token ON sandboxes(envd_token_hash);
  CREATE TABLE sandbox_events (
    seq BIGSERIAL PRIMARY KEY,
    sandbox_id TEXT ${C} NOT NULL,
    at TEXT ${C} NOT NULL,
    type TEXT ${C} NOT NULL,
    detail TEXT NOT NULL
  );
  CREATE INDEX sandbox_events_sandbox ON sandbox_events(sandbox_id, seq);
  -- One row per sandbox: interim while it lives, final once it ended.
  -- INVARIANT: a final row is never changed again (every update says NOT final).
  CREATE TABLE usage_records (
    sandbox_id TEXT ${C} PRIMARY KEY,
    tenant_id TEXT ${C} NOT NULL,
    template TEXT ${C} NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    created_at TEXT ${C} NOT NULL,
    ready_at TEXT ${C},
    ended_at TEXT ${C},
    lifetime_seconds DOUBLE PRECISION NOT NULL,
    start_path TEXT ${C},
    cpu_seconds DOUBLE PRECISION NOT NULL,
    memory_peak_mib DOUBLE PRECISION NOT NULL,
    memory_gib_seconds DOUBLE PRECISION NOT NULL,
    end_reason TEXT ${C},
    metadata TEXT NOT NULL,
    metadata_idx JSONB NOT NULL,
    parent_id TEXT ${C},
    root_id TEXT ${C} NOT NULL,
    final BOOLEAN NOT NULL,
    ${TRAFFIC_COLS.map((c) => `${c} BIGINT NOT NULL DEFAULT 0`).join(",\n    ")}
  );
  CREATE INDEX usage_records_tenant ON usage_records(tenant_id, created_at);
  CREATE TABLE nodes (
    id TEXT ${C} PRIMARY KEY,
    address TEXT ${C} NOT NULL,
    secret TEXT ${C} NOT NULL,
    state TEXT ${C} NOT NULL,
    lease_until TEXT ${C},
    report TEXT,
    joined_at TEXT ${C} NOT NULL,
    last_seen_at TEXT ${C}
  );
  CREATE TABLE join_tokens (
    hash TEXT ${C} PRIMARY KEY,
    created_at TEXT ${C} NOT NULL,
    expires_at TEXT ${C} NOT NULL,
    created_by_key TEXT ${C},
    used_at TEXT ${C}
  );
  -- Expiry by the database server's clock, so replicas' clocks do not matter.
  CREATE TABLE leases (
    name TEXT ${C} PRIMARY KEY,
    holder TEXT ${C} NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
  );
  `,
  // 2: the job queue: jobs, tasks, attempts, their logs, uploaded files (pg-job-store.ts).
  PG_JOBS_MIGRATION,
  // 3: honest metering (charged from hand-over, the meter's raw state with
  // the interim record, the platform's overhead account), the price sheet,
  // webhooks and their outbox.
  `
  ALTER TABLE usage_records ADD COLUMN charged_from TEXT ${C};
  ALTER TABLE usage_records ADD COLUMN overhead_cpu_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
  ALTER TABLE usage_records ADD COLUMN meter_state TEXT;
  CREATE INDEX usage_records_root ON usage_records(root_id);
  CREATE TABLE overhead_records (
    id TEXT ${C} PRIMARY KEY,
    node_id TEXT ${C} NOT NULL,
    kind TEXT ${C} NOT NULL,
    template TEXT ${C} NOT NULL,
    at TEXT ${C} NOT NULL,
    cpu_seconds DOUBLE PRECISION NOT NULL,
    wall_seconds DOUBLE PRECISION NOT NULL,
    memory_mib INTEGER NOT NULL,
    node_sandbox_id TEXT ${C},
    sandbox_id TEXT ${C}
  );
  CREATE INDEX overhead_records_at ON overhead_records(at);
  CREATE TABLE settings (
    key TEXT ${C} PRIMARY KEY,
    value TEXT NOT NULL
  );
  CREATE TABLE webhooks (
    id TEXT ${C} PRIMARY KEY,
    tenant_id TEXT ${C} NOT NULL REFERENCES tenants(id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT ${C} NOT NULL,
    created_by_key TEXT ${C},
    disabled_at TEXT ${C}
  );
  CREATE INDEX webhooks_tenant ON webhooks(tenant_id);
  CREATE TABLE webhook_deliveries (
    id TEXT ${C} PRIMARY KEY,
    webhook_id TEXT ${C} NOT NULL,
    tenant_id TEXT ${C} NOT NULL,
    event_key TEXT ${C} NOT NULL,
    type TEXT ${C} NOT NULL,
    event_seq BIGINT,
    sandbox_id TEXT ${C} NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT ${C} NOT NULL,
    delivered_at TEXT ${C},
    gave_up_at TEXT ${C},
    last_error TEXT,
    created_at TEXT ${C} NOT NULL,
    claim TEXT ${C},
    claimed_until TEXT ${C}
  );
  CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
  CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, created_at);
  `,
];

/** Advisory lock classes (first key of pg_advisory_xact_lock(int4, int4)); "FB" in the high bytes. */
const LOCK = {
  tenantQuota: 0x46420001,
  nodeBudget: 0x46420002,
  keyLineage: 0x46420003,
  migrate: 0x46420004,
  events: 0x46420005,
} as const;

const LIVE = `('${LIVE_STATES.join("','")}')`;
const HOLDING = `('${HOLDING_STATES.join("','")}')`;

/** PostgreSQL errors worth running the whole transaction again for. */
const RETRYABLE = new Set(["40001", "40P01"]); // serialization_failure, deadlock_detected
const MAX_TX_ATTEMPTS = 8;

type Queryable = Pick<pg.Pool, "query"> | pg.PoolClient;

const hasNul = (...vals: unknown[]) => vals.some((v) => typeof v === "string" && v.includes("\u0000"));

/** int8 and numeric as JS numbers (counts, sums, byte counters, sequence numbers stay below 2^53). */
const TYPES = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === 20 || oid === 1700
      ? (v: string) => Number(v)
      : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
};

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparseable PostgreSQL URL)";
  }
}

/** jsonb of a metadata map with every key and value JSON-encoded (no NUL reaches jsonb). */
function metadataIndex(m: Record<string, string>): string {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m)) out[JSON.stringify(k)] = JSON.stringify(v);
  return JSON.stringify(out);
}

/** SQLite's ORDER BY on text: NULL first, then bytewise UTF-8. */
function compareKeys(a: string | null, b: string | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

export interface PgStoreOptions {
  /** Connections in the pool. @default 10 */
  maxConnections?: number;
  /** Called with errors of idle connections (the server restarted, the network broke). */
  onIdleError?: (e: Error) => void;
}

export class PgStore implements Store {
  readonly pool: pg.Pool;
  readonly jobs: PgJobStore;
  #closed: Promise<void> | undefined;

  private constructor(pool: pg.Pool) {
    this.pool = pool;
    this.jobs = new PgJobStore(pool);
  }

  /** Connects, runs the migrations this database lacks, and returns the store. */
  static async open(url: string, opts: PgStoreOptions = {}): Promise<PgStore> {
    const pool = new pg.Pool({
      connectionString: url,
      max: opts.maxConnections ?? 10,
      types: TYPES,
      application_name: "firebreak-control-plane",
      // A database that does not answer fails requests instead of hanging them.
      connectionTimeoutMillis: 10_000,
      statement_timeout: 30_000,
    });
    // An idle connection that breaks emits 'error' on the pool; unhandled, that
    // would end the process. The next query gets a fresh connection.
    pool.on("error", (e) => opts.onIdleError?.(e));
    const store = new PgStore(pool);
    try {
      await store.#migrate();
    } catch (e) {
      await pool.end().catch(() => {});
      const err = e as Error & { code?: string };
      throw new Error(`cannot open the PostgreSQL store at ${redactUrl(url)}: ${err.message}`, { cause: e });
    }
    return store;
  }

  async #migrate(): Promise<void> {
    await this.#tx(async (c) => {
      // INVARIANT: replicas starting together migrate one at a time.
      await c.query("SELECT pg_advisory_xact_lock($1, 0)", [LOCK.migrate]);
      await c.query("CREATE TABLE IF NOT EXISTS firebreak_schema (version INTEGER NOT NULL)");
      const r = await c.query("SELECT version FROM firebreak_schema");
      let version = r.rows.length ? Number(r.rows[0].version) : 0;
      if (!r.rows.length) await c.query("INSERT INTO firebreak_schema (version) VALUES (0)");
      if (version > PG_MIGRATIONS.length) {
        throw new Error(
          `the database is at schema version ${version}, newer than this Firebreak (${PG_MIGRATIONS.length}); run the newer Firebreak`,
        );
      }
      for (; version < PG_MIGRATIONS.length; version++) {
        await c.query(PG_MIGRATIONS[version]!);
        await c.query("UPDATE firebreak_schema SET version = $1", [version + 1]);
      }
    });
  }

  async #q(sql: string, params: Value[] = [], on: Queryable = this.pool): Promise<Row[]> {
    for (const p of params) {
      if (hasNul(p)) throw new Error("PostgreSQL text cannot hold NUL (U+0000); this value cannot be stored");
    }
    const r = await on.query(sql, params);
    return r.rows as Row[];
  }

  /** Runs fn in one transaction (READ COMMITTED), again from the start on a deadlock or serialization failure. */
  async #tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = await this.pool.connect();
      let broken: Error | undefined;
      try {
        await c.query("BEGIN");
        const out = await fn(c);
        await c.query("COMMIT");
        return out;
      } catch (e) {
        await c.query("ROLLBACK").catch((re: Error) => {
          broken = re; // the connection is unusable: drop it from the pool
        });
        const code = (e as { code?: string }).code;
        if (code && RETRYABLE.has(code) && attempt < MAX_TX_ATTEMPTS) {
          await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
          continue;
        }
        throw e;
      } finally {
        c.release(broken);
      }
    }
  }

  async #lock(c: pg.PoolClient, cls: number, key: string): Promise<void> {
    await c.query("SELECT pg_advisory_xact_lock($1, hashtext($2))", [cls, key]);
  }

  close(): Promise<void> {
    this.#closed ??= this.pool.end();
    return this.#closed;
  }

  // Tenants

  async createTenant(t: Tenant): Promise<void> {
    await this.#q("INSERT INTO tenants (id, name, limits, created_at) VALUES ($1, $2, $3, $4)", [
      t.id,
      t.name,
      JSON.stringify(t.limits),
      t.createdAt,
    ]);
  }

  async getTenant(id: string): Promise<Tenant | undefined> {
    if (hasNul(id)) return undefined;
    const [r] = await this.#q("SELECT * FROM tenants WHERE id = $1", [id]);
    return r ? tenantFrom(r) : undefined;
  }

  async listTenants(): Promise<Tenant[]> {
    return (await this.#q("SELECT * FROM tenants ORDER BY created_at, id")).map(tenantFrom);
  }

  // Keys

  async createKey(k: ApiKeyRecord): Promise<void> {
    await this.#insertKey(k, this.pool);
  }

  async #insertKey(k: ApiKeyRecord, on: Queryable): Promise<void> {
    await this.#q(
      "INSERT INTO api_keys (id, tenant_id, name_json, hash, scopes, created_at, revoked_at, created_by_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
      [
        k.id,
        k.tenantId,
        JSON.stringify(k.name),
        k.hash,
        JSON.stringify(k.scopes),
        k.createdAt,
        k.revokedAt,
        k.createdByKey,
      ],
      on,
    );
  }

  async createKeyWithinLimit(k: ApiKeyRecord, maxKeys: number): Promise<KeyInsertResult> {
    return this.#tx(async (c) => {
      // INVARIANT: no key outlives its minter's revocation: this and
      // revokeKeyTree hold the same lock from their reads to their writes.
      await c.query("SELECT pg_advisory_xact_lock($1, 0)", [LOCK.keyLineage]);
      const [minter] =
        k.createdByKey === null || hasNul(k.createdByKey)
          ? []
          : await this.#q("SELECT revoked_at FROM api_keys WHERE id = $1", [k.createdByKey], c);
      const [held] = await this.#q(
        "SELECT COUNT(*) AS n FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL",
        [k.tenantId],
        c,
      );
      const refused = keyVerdict(
        minter === undefined ? undefined : minter["revoked_at"] !== null,
        k.createdByKey,
        Number(held!["n"]),
        maxKeys,
        k.tenantId,
      );
      if (refused) return refused;
      await this.#insertKey(k, c);
      return { ok: true };
    });
  }

  async getKey(id: string): Promise<ApiKeyRecord | undefined> {
    if (hasNul(id)) return undefined;
    const [r] = await this.#q("SELECT * FROM api_keys WHERE id = $1", [id]);
    return r ? pgKeyFrom(r) : undefined;
  }

  async findKeyByHash(hash: string): Promise<ApiKeyRecord | undefined> {
    if (hasNul(hash)) return undefined;
    const [r] = await this.#q("SELECT * FROM api_keys WHERE hash = $1", [hash]);
    return r ? pgKeyFrom(r) : undefined;
  }

  async listKeys(tenantId: string | null): Promise<ApiKeyRecord[]> {
    if (hasNul(tenantId)) return [];
    const rows =
      tenantId === null
        ? await this.#q("SELECT * FROM api_keys ORDER BY created_at, id")
        : await this.#q("SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id", [tenantId]);
    return rows.map(pgKeyFrom);
  }

  async revokeKeyTree(id: string, at: string): Promise<string[]> {
    if (hasNul(id)) return [];
    return this.#tx(async (c) => {
      await c.query("SELECT pg_advisory_xact_lock($1, 0)", [LOCK.keyLineage]);
      const [root] = await this.#q("SELECT revoked_at FROM api_keys WHERE id = $1", [id], c);
      if (!root || root["revoked_at"] !== null) return [];
      // Every key minted by this one, transitively (revoked ones included:
      // what they minted goes too). UNION stops at cycles.
      const ids = (
        await this.#q(
          `WITH RECURSIVE tree(id) AS (
             SELECT $1::text ${C} UNION SELECT k.id FROM api_keys k JOIN tree ON k.created_by_key = tree.id
           ) SELECT k.id FROM api_keys k JOIN tree ON k.id = tree.id WHERE k.revoked_at IS NULL`,
          [id],
          c,
        )
      ).map((r) => String(r["id"]));
      await c.query("UPDATE api_keys SET revoked_at = $1 WHERE id = ANY($2::text[]) AND revoked_at IS NULL", [
        at,
        ids,
      ]);
      return ids;
    });
  }

  // Templates

  async getTemplateOwner(name: string): Promise<TemplateOwner | undefined> {
    if (hasNul(name)) return undefined;
    const [r] = await this.#q("SELECT * FROM templates WHERE name = $1", [name]);
    return r ? templateOwnerFrom(r) : undefined;
  }

  async listTemplateOwners(): Promise<TemplateOwner[]> {
    return (await this.#q("SELECT * FROM templates ORDER BY name")).map(templateOwnerFrom);
  }

  async claimTemplate(owner: TemplateOwner): Promise<{ owner: TemplateOwner; created: boolean }> {
    // Each round is two statements, each atomic; the loop only repeats when
    // the record was removed between them.
    for (;;) {
      const [made] = await this.#q(
        "INSERT INTO templates (name, tenant_id, created_at, created_by_key) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING RETURNING *",
        [owner.name, owner.tenantId, owner.createdAt, owner.createdByKey],
      );
      if (made) return { owner: templateOwnerFrom(made), created: true };
      const [now] = await this.#q("SELECT * FROM templates WHERE name = $1", [owner.name]);
      if (now) return { owner: templateOwnerFrom(now), created: false };
    }
  }

  async removeTemplateOwner(name: string): Promise<void> {
    if (hasNul(name)) return;
    await this.#q("DELETE FROM templates WHERE name = $1", [name]);
  }

  // Sandboxes

  async #quota(
    on: Queryable,
    tenantId: string,
    shape: { vcpus: number; memoryMib: number },
    count: number,
    l: TenantLimits,
    node: NodeBudget | undefined,
  ): Promise<QuotaResult> {
    const [t] = await this.#q(
      `SELECT COUNT(*) AS n,
              COALESCE(SUM(vcpus) FILTER (WHERE state IN ${HOLDING}), 0) AS vcpus,
              COALESCE(SUM(memory_mib) FILTER (WHERE state IN ${HOLDING}), 0) AS mem
       FROM sandboxes WHERE tenant_id = $1 AND state IN ${LIVE}`,
      [tenantId],
      on,
    );
    const verdict = tenantVerdict(
      { live: Number(t!["n"]), vcpus: Number(t!["vcpus"]), memoryMib: Number(t!["mem"]) },
      shape,
      count,
      l,
    );
    if (!verdict.ok || !node) return verdict;
    const [n] = await this.#q(
      `SELECT COUNT(*) AS n, COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS mem
       FROM sandboxes WHERE node_id = $1 AND state IN ${HOLDING}`,
      [node.nodeId],
      on,
    );
    return nodeVerdict(
      { sandboxes: Number(n!["n"]), vcpus: Number(n!["vcpus"]), memoryMib: Number(n!["mem"]) },
      shape,
      count,
      node,
    );
  }

  async checkQuota(
    tenantId: string,
    shape: { vcpus: number; memoryMib: number },
    count: number,
    limits: TenantLimits,
    node?: NodeBudget,
  ): Promise<QuotaResult> {
    return this.#quota(this.pool, tenantId, shape, count, limits, node);
  }

  async insertSandboxWithinQuota(
    s: SandboxRecord,
    limits: TenantLimits,
    extra = 0,
    node?: NodeBudget,
  ): Promise<QuotaResult> {
    return this.#tx(async (c) => {
      // INVARIANT: concurrent creates of one tenant (and on one node) cannot
      // both pass: the locks are held from the counts to the insert, tenant
      // first, node second, by every caller.
      await this.#lock(c, LOCK.tenantQuota, s.tenantId);
      if (node) await this.#lock(c, LOCK.nodeBudget, node.nodeId);
      const q = await this.#quota(c, s.tenantId, s, 1 + extra, limits, node);
      if (!q.ok) return q;
      const cols = pgSandboxCols(s);
      const names = Object.keys(cols);
      await this.#q(
        `INSERT INTO sandboxes (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})`,
        Object.values(cols),
        c,
      );
      return q;
    });
  }

  async pausedUsage(tenantId: string): Promise<{ sandboxes: number; memoryMib: number }> {
    const [r] = await this.#q(
      "SELECT COUNT(*) AS n, COALESCE(SUM(memory_mib), 0) AS mem FROM sandboxes WHERE tenant_id = $1 AND state = 'paused'",
      [hasNul(tenantId) ? "" : tenantId],
    );
    return { sandboxes: Number(r!["n"]), memoryMib: Number(r!["mem"]) };
  }

  async getSandbox(id: string): Promise<SandboxRecord | undefined> {
    if (hasNul(id)) return undefined;
    const [r] = await this.#q("SELECT * FROM sandboxes WHERE id = $1", [id]);
    return r ? sandboxFrom(r) : undefined;
  }

  async findSandboxByTokenHash(hash: string): Promise<SandboxRecord | undefined> {
    if (hasNul(hash)) return undefined;
    const [r] = await this.#q("SELECT * FROM sandboxes WHERE token_hash = $1", [hash]);
    return r ? sandboxFrom(r) : undefined;
  }

  async findSandboxByEnvdTokenHash(hash: string): Promise<SandboxRecord | undefined> {
    if (hasNul(hash)) return undefined;
    const [r] = await this.#q(`SELECT * FROM sandboxes WHERE envd_token_hash = $1 AND state IN ${LIVE}`, [
      hash,
    ]);
    return r ? sandboxFrom(r) : undefined;
  }

  async listSandboxes(
    q: ListSandboxesQuery,
  ): Promise<{ sandboxes: SandboxRecord[]; nextCursor: string | null }> {
    if (hasNul(q.tenantId, ...(q.states ?? []))) return { sandboxes: [], nextCursor: null };
    const limit = Math.max(1, Math.floor(q.limit));
    const where = ["tenant_id = $1"];
    const args: unknown[] = [q.tenantId];
    if (q.states?.length) {
      args.push(q.states);
      where.push(`state = ANY($${args.length}::text[])`);
    }
    // Keys and values are matched JSON-encoded (containment), never spliced
    // into a path: a key may hold any character, quotes and NUL included.
    if (q.metadata && Object.keys(q.metadata).length) {
      args.push(metadataIndex(q.metadata));
      where.push(`metadata_idx @> $${args.length}::jsonb`);
    }
    if (q.cursor) {
      const seq = Number.parseInt(q.cursor, 36);
      args.push(Number.isFinite(seq) ? Math.min(seq, Number.MAX_SAFE_INTEGER) : 0);
      where.push(`seq < $${args.length}`);
    }
    args.push(limit + 1);
    const r = await this.pool.query(
      `SELECT * FROM sandboxes WHERE ${where.join(" AND ")} ORDER BY seq DESC LIMIT $${args.length}`,
      args,
    );
    const rows = r.rows as Row[];
    const more = rows.length > limit;
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    return {
      sandboxes: page.map(sandboxFrom),
      nextCursor: more && last ? Number(last["seq"]).toString(36) : null,
    };
  }

  async listLiveSandboxes(): Promise<SandboxRecord[]> {
    return (await this.#q(`SELECT * FROM sandboxes WHERE state IN ${LIVE} ORDER BY seq`)).map(sandboxFrom);
  }

  async listLiveSandboxesOnNode(nodeId: string): Promise<SandboxRecord[]> {
    if (hasNul(nodeId)) return [];
    return (
      await this.#q(`SELECT * FROM sandboxes WHERE node_id = $1 AND state IN ${LIVE} ORDER BY seq`, [nodeId])
    ).map(sandboxFrom);
  }

  async updateSandbox(id: string, patch: Partial<SandboxRecord>, from?: SandboxState[]): Promise<boolean> {
    const cols = pgSandboxCols(patch);
    const names = Object.keys(cols);
    if (!names.length) return true;
    if (hasNul(id)) return false;
    const states = from ?? [...LIVE_STATES];
    const r = await this.pool.query(
      `UPDATE sandboxes SET ${names.map((c, i) => `${c} = $${i + 1}`).join(", ")}
       WHERE id = $${names.length + 1} AND state = ANY($${names.length + 2}::text[])`,
      [...Object.values(cols), id, states],
    );
    return r.rowCount === 1;
  }

  async endSandbox(
    id: string,
    end: { state: "killed" | "crashed" | "failed"; endedAt: string; endReason: string; endedBy: string },
    usage: UsageRecord,
  ): Promise<boolean> {
    if (hasNul(id)) return false;
    return this.#tx(async (c) => {
      const ended = await this.#q(
        `UPDATE sandboxes SET state = $1, ended_at = $2, end_reason = $3, ended_by = $4
         WHERE id = $5 AND state IN ${LIVE} RETURNING id`,
        [end.state, end.endedAt, end.endReason, end.endedBy, id],
        c,
      );
      if (ended.length !== 1) return false;
      // INVARIANT: exactly one final usage record per sandbox. The row lock
      // taken above makes a concurrent end wait and then match nothing.
      await this.#writeUsage({ ...usage, final: true }, c);
      await this.#enqueue(c, usage.tenantId, {
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
  async #enqueue(
    c: pg.PoolClient,
    tenantId: string,
    ev: { eventKey: string; type: string; eventSeq: number | null; sandboxId: string; at: string },
  ): Promise<void> {
    const hooks = (
      await this.#q("SELECT * FROM webhooks WHERE tenant_id = $1 AND disabled_at IS NULL", [tenantId], c)
    )
      .map(webhookFrom)
      .filter((h) => webhookWants(h.events, ev.type));
    for (const cols of deliveriesFor(hooks, { ...ev, tenantId })) {
      const names = Object.keys(cols);
      await c.query(
        `INSERT INTO webhook_deliveries (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})
         ON CONFLICT (id) DO NOTHING`,
        Object.values(cols),
      );
    }
  }

  // Leases

  async tryLease(name: string, holder: string, ttlMs: number): Promise<LeaseState> {
    checkTtl(ttlMs);
    for (;;) {
      // INVARIANT: taken only when free, expired, or already ours: the upsert
      // locks the row and re-checks the WHERE on its newest version.
      const [won] = await this.#q(
        `INSERT INTO leases (name, holder, expires_at)
         VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond')
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
         WHERE leases.holder = excluded.holder OR leases.expires_at <= clock_timestamp()
         RETURNING holder, expires_at`,
        [name, holder, ttlMs],
      );
      if (won) return { held: true, holder, expiresAt: (won["expires_at"] as Date).toISOString() };
      const [now] = await this.#q("SELECT holder, expires_at FROM leases WHERE name = $1", [name]);
      if (now) {
        return {
          held: String(now["holder"]) === holder,
          holder: String(now["holder"]),
          expiresAt: (now["expires_at"] as Date).toISOString(),
        };
      }
      // Released between the two statements: try again.
    }
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    if (hasNul(name, holder)) return;
    await this.#q("DELETE FROM leases WHERE name = $1 AND holder = $2", [name, holder]);
  }

  async getLease(name: string): Promise<{ holder: string; expiresAt: string } | undefined> {
    if (hasNul(name)) return undefined;
    const [r] = await this.#q("SELECT holder, expires_at FROM leases WHERE name = $1", [name]);
    return r
      ? { holder: String(r["holder"]), expiresAt: (r["expires_at"] as Date).toISOString() }
      : undefined;
  }

  // Nodes

  async upsertNode(n: NodeRecord): Promise<void> {
    const cols = nodeCols(n);
    const names = Object.keys(cols);
    await this.#q(
      `INSERT INTO nodes (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})
       ON CONFLICT (id) DO UPDATE SET ${names
         .filter((c) => c !== "id")
         .map((c) => `${c} = excluded.${c}`)
         .join(", ")}`,
      Object.values(cols),
    );
  }

  async getNode(id: string): Promise<NodeRecord | undefined> {
    if (hasNul(id)) return undefined;
    const [r] = await this.#q("SELECT * FROM nodes WHERE id = $1", [id]);
    return r ? nodeFrom(r) : undefined;
  }

  async listNodes(): Promise<NodeRecord[]> {
    return (await this.#q("SELECT * FROM nodes ORDER BY id")).map(nodeFrom);
  }

  async updateNode(
    id: string,
    patch: Partial<Omit<NodeRecord, "id">>,
    fromStates?: NodeState[],
  ): Promise<boolean> {
    if (hasNul(id)) return false;
    const { id: _ignored, ...rest } = patch as Partial<NodeRecord>;
    const cols = nodeCols(rest);
    const names = Object.keys(cols);
    const args: unknown[] = [...Object.values(cols), id];
    let where = `id = $${args.length}`;
    if (fromStates) {
      args.push(fromStates);
      where += ` AND state = ANY($${args.length}::text[])`;
    }
    const r = names.length
      ? await this.pool.query(
          `UPDATE nodes SET ${names.map((c, i) => `${c} = $${i + 1}`).join(", ")} WHERE ${where}`,
          args,
        )
      : await this.pool.query(`SELECT 1 FROM nodes WHERE ${where}`, args);
    return r.rowCount === 1;
  }

  async removeNode(id: string): Promise<boolean> {
    if (hasNul(id)) return false;
    const r = await this.pool.query("DELETE FROM nodes WHERE id = $1", [id]);
    return r.rowCount === 1;
  }

  // Join tokens

  async createJoinToken(t: JoinTokenRecord): Promise<void> {
    await this.#q(
      "INSERT INTO join_tokens (hash, created_at, expires_at, created_by_key) VALUES ($1, $2, $3, $4)",
      [t.hash, t.createdAt, t.expiresAt, t.createdByKey],
    );
  }

  async useJoinToken(hash: string, at: string): Promise<boolean> {
    if (hasNul(hash, at)) return false;
    // INVARIANT: single use: one UPDATE that only matches an unused, unexpired
    // token; a concurrent use waits for the row and then matches nothing.
    const r = await this.pool.query(
      "UPDATE join_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND expires_at > $1",
      [at, hash],
    );
    return r.rowCount === 1;
  }

  // Events

  async addEvent(sandboxId: string, e: SandboxEvent): Promise<void> {
    await this.#tx(async (c) => {
      // INVARIANT: events commit in seq order: a stream reading "after seq N"
      // never misses one that commits later with a lower seq.
      await c.query("SELECT pg_advisory_xact_lock($1, 0)", [LOCK.events]);
      const [ins] = await this.#q(
        "INSERT INTO sandbox_events (sandbox_id, at, type, detail) VALUES ($1, $2, $3, $4) RETURNING seq",
        [sandboxId, e.at, e.type, JSON.stringify(e.detail)],
        c,
      );
      const [owner] = await this.#q("SELECT tenant_id FROM sandboxes WHERE id = $1", [sandboxId], c);
      if (!owner) return;
      const seq = Number(ins!["seq"]);
      await this.#enqueue(c, String(owner["tenant_id"]), {
        eventKey: `evt_${seq}`,
        type: `sandbox.${e.type}`,
        eventSeq: seq,
        sandboxId,
        at: e.at,
      });
    });
  }

  async latestEventSeq(): Promise<number> {
    const [r] = await this.#q("SELECT COALESCE(MAX(seq), 0) AS seq FROM sandbox_events");
    return Number(r?.["seq"] ?? 0);
  }

  async listTenantEvents(q: {
    tenantId: string | null;
    afterSeq: number;
    limit: number;
    sandboxId?: string;
  }): Promise<StoredEvent[]> {
    if (hasNul(q.tenantId, q.sandboxId)) return [];
    const args: Value[] = [Math.floor(q.afterSeq)];
    const where = ["e.seq > $1"];
    if (q.tenantId !== null) {
      args.push(q.tenantId);
      where.push(`s.tenant_id = $${args.length}`);
    }
    if (q.sandboxId) {
      args.push(q.sandboxId);
      where.push(`e.sandbox_id = $${args.length}`);
    }
    args.push(Math.max(1, Math.floor(q.limit)));
    return (
      await this.#q(
        `SELECT e.*, s.tenant_id AS tenant_id FROM sandbox_events e JOIN sandboxes s ON s.id = e.sandbox_id
         WHERE ${where.join(" AND ")} ORDER BY e.seq LIMIT $${args.length}`,
        args,
      )
    ).map(storedEventFrom);
  }

  async getEvent(seq: number): Promise<StoredEvent | undefined> {
    const [r] = await this.#q(
      "SELECT e.*, s.tenant_id AS tenant_id FROM sandbox_events e JOIN sandboxes s ON s.id = e.sandbox_id WHERE e.seq = $1",
      [Math.floor(seq)],
    );
    return r ? storedEventFrom(r) : undefined;
  }

  async listEvents(sandboxId: string): Promise<SandboxEvent[]> {
    if (hasNul(sandboxId)) return [];
    return (
      await this.#q("SELECT * FROM sandbox_events WHERE sandbox_id = $1 ORDER BY seq", [sandboxId])
    ).map((r) => ({
      at: String(r["at"]),
      type: String(r["type"]),
      detail: JSON.parse(String(r["detail"])) as Record<string, unknown>,
    }));
  }

  // Usage

  async #writeUsage(u: UsageRecord, on: Queryable): Promise<void> {
    const cols: Record<string, Value | boolean> = {
      ...usageCols(u),
      final: u.final,
      metadata_idx: metadataIndex(u.metadata),
    };
    const names = Object.keys(cols);
    await on.query(
      `INSERT INTO usage_records (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})
       ON CONFLICT (sandbox_id) DO UPDATE SET ${names
         .filter((n) => n !== "sandbox_id")
         .map((n) => `${n} = excluded.${n}`)
         .join(", ")} WHERE NOT usage_records.final`,
      Object.values(cols),
    );
  }

  async putInterimUsage(u: UsageRecord): Promise<void> {
    await this.#writeUsage({ ...u, final: false }, this.pool);
  }

  async getUsage(sandboxId: string): Promise<UsageRecord | undefined> {
    if (hasNul(sandboxId)) return undefined;
    const [r] = await this.#q("SELECT * FROM usage_records WHERE sandbox_id = $1", [sandboxId]);
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
    if (hasNul(q.tenantId, q.sandboxId, q.rootId, q.from, q.to)) return [];
    const where: string[] = [];
    const args: Value[] = [];
    if (q.tenantId !== null) {
      args.push(q.tenantId);
      where.push(`tenant_id = $${args.length}`);
    }
    if (q.sandboxId) {
      args.push(q.sandboxId);
      where.push(`sandbox_id = $${args.length}`);
    }
    if (q.rootId) {
      args.push(q.rootId);
      where.push(`root_id = $${args.length}`);
    }
    if (q.from) {
      args.push(q.from);
      where.push(`created_at >= $${args.length}`);
    }
    if (q.to) {
      args.push(q.to);
      where.push(`created_at < $${args.length}`);
    }
    args.push(Math.max(1, Math.floor(q.limit)));
    const sql = `SELECT * FROM usage_records ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at DESC, sandbox_id LIMIT $${args.length}`;
    return (await this.#q(sql, args)).map(usageFrom);
  }

  async usageGroups(q: {
    tenantId: string | null;
    groupBy: UsageGroupBy;
    from?: string;
    to?: string;
  }): Promise<UsageGroup[]> {
    if (hasNul(q.tenantId, q.from, q.to)) return [];
    const args: Value[] = [];
    let keyExpr: string;
    const byMetadata = typeof q.groupBy === "object";
    if (q.groupBy === "tenant") keyExpr = "tenant_id";
    else if (q.groupBy === "template") keyExpr = "template";
    else if (q.groupBy === "root") keyExpr = "root_id";
    else {
      // The JSON-encoded value of that key (decoded below); null when absent.
      args.push(JSON.stringify(q.groupBy.metadata));
      keyExpr = `metadata_idx ->> $${args.length}`;
    }
    const where: string[] = [];
    if (q.tenantId !== null) {
      args.push(q.tenantId);
      where.push(`tenant_id = $${args.length}`);
    }
    if (q.from) {
      args.push(q.from);
      where.push(`created_at >= $${args.length}`);
    }
    if (q.to) {
      args.push(q.to);
      where.push(`created_at < $${args.length}`);
    }
    const rows = await this.#q(
      `SELECT ${keyExpr} AS key, COUNT(*) AS sandboxes, SUM(lifetime_seconds) AS lifetime, SUM(cpu_seconds) AS cpu,
              SUM(memory_gib_seconds) AS gib, MAX(memory_peak_mib) AS peak,
              ${TRAFFIC_COLS.map((c) => `SUM(${c}) AS ${c}`).join(", ")}
       FROM usage_records ${where.length ? `WHERE ${where.join(" AND ")}` : ""}
       GROUP BY 1`,
      args,
    );
    const groups = rows.map((r) => {
      const raw = r["key"] === null ? null : String(r["key"]);
      return {
        key: raw !== null && byMetadata ? (JSON.parse(raw) as string) : raw,
        sandboxes: Number(r["sandboxes"]),
        lifetimeSeconds: round3(Number(r["lifetime"])),
        cpuSeconds: round3(Number(r["cpu"])),
        memoryGibSeconds: round3(Number(r["gib"])),
        peakMemoryMib: round3(Number(r["peak"])),
        traffic: trafficFrom(r),
      };
    });
    return groups.sort((a, b) => compareKeys(a.key, b.key));
  }

  // Overhead

  async putOverhead(records: OverheadUsageRecord[]): Promise<number> {
    if (!records.length) return 0;
    return this.#tx(async (c) => {
      let added = 0;
      for (const o of records) {
        const cols = overheadCols(o);
        const names = Object.keys(cols);
        const r = await c.query(
          `INSERT INTO overhead_records (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})
           ON CONFLICT (id) DO NOTHING`,
          Object.values(cols),
        );
        added += r.rowCount ?? 0;
      }
      return added;
    });
  }

  async listOverhead(q: { from?: string; to?: string; limit: number }): Promise<OverheadUsageRecord[]> {
    if (hasNul(q.from, q.to)) return [];
    const where: string[] = [];
    const args: Value[] = [];
    if (q.from) {
      args.push(q.from);
      where.push(`at >= $${args.length}`);
    }
    if (q.to) {
      args.push(q.to);
      where.push(`at < $${args.length}`);
    }
    args.push(Math.max(1, Math.floor(q.limit)));
    return (
      await this.#q(
        `SELECT * FROM overhead_records ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY at DESC, id LIMIT $${args.length}`,
        args,
      )
    ).map(overheadFrom);
  }

  // Settings

  async getSetting(key: string): Promise<unknown | undefined> {
    if (hasNul(key)) return undefined;
    const [r] = await this.#q("SELECT value FROM settings WHERE key = $1", [key]);
    return r ? JSON.parse(String(r["value"])) : undefined;
  }

  async putSetting(key: string, value: unknown): Promise<void> {
    await this.#q(
      "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      [key, JSON.stringify(value)],
    );
  }

  // Webhooks

  async createWebhook(w: WebhookRecord): Promise<void> {
    const cols = webhookCols(w);
    const names = Object.keys(cols);
    await this.#q(
      `INSERT INTO webhooks (${names.join(", ")}) VALUES (${names.map((_, i) => `$${i + 1}`).join(", ")})`,
      Object.values(cols),
    );
  }

  async getWebhook(id: string): Promise<WebhookRecord | undefined> {
    if (hasNul(id)) return undefined;
    const [r] = await this.#q("SELECT * FROM webhooks WHERE id = $1", [id]);
    return r ? webhookFrom(r) : undefined;
  }

  async listWebhooks(tenantId: string | null): Promise<WebhookRecord[]> {
    if (hasNul(tenantId)) return [];
    const rows =
      tenantId === null
        ? await this.#q("SELECT * FROM webhooks ORDER BY created_at, id")
        : await this.#q("SELECT * FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, id", [tenantId]);
    return rows.map(webhookFrom);
  }

  async disableWebhook(id: string, at: string): Promise<boolean> {
    if (hasNul(id)) return false;
    return this.#tx(async (c) => {
      const r = await c.query("UPDATE webhooks SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL", [
        at,
        id,
      ]);
      if (r.rowCount !== 1) return false;
      await c.query(
        "UPDATE webhook_deliveries SET gave_up_at = $1, last_error = $2 WHERE webhook_id = $3 AND delivered_at IS NULL AND gave_up_at IS NULL",
        [at, JSON.stringify("the webhook was deleted"), id],
      );
      return true;
    });
  }

  async claimDeliveries(
    holder: string,
    now: string,
    leaseMs: number,
    limit: number,
  ): Promise<DeliveryRecord[]> {
    const until = new Date(Date.parse(now) + leaseMs).toISOString();
    // INVARIANT: SKIP LOCKED + the claim columns: two replicas never hold one delivery at once.
    const rows = await this.#q(
      `UPDATE webhook_deliveries SET claim = $1, claimed_until = $2
       WHERE id IN (
         SELECT id FROM webhook_deliveries
         WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= $3
           AND (claimed_until IS NULL OR claimed_until <= $3)
         ORDER BY next_attempt_at, created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED
       ) RETURNING *`,
      [holder, until, now, Math.max(1, Math.floor(limit))],
    );
    return rows
      .map(deliveryFrom)
      .sort(
        (a, b) => a.nextAttemptAt.localeCompare(b.nextAttemptAt) || a.createdAt.localeCompare(b.createdAt),
      );
  }

  async finishDelivery(id: string, holder: string, outcome: DeliveryOutcome): Promise<boolean> {
    const sets: Record<string, Value> = outcome.ok
      ? { delivered_at: outcome.at, last_error: null }
      : "gaveUpAt" in outcome
        ? { gave_up_at: outcome.gaveUpAt, last_error: JSON.stringify(outcome.error) }
        : { next_attempt_at: outcome.nextAttemptAt, last_error: JSON.stringify(outcome.error) };
    const names = Object.keys(sets);
    const r = await this.pool.query(
      `UPDATE webhook_deliveries SET ${names.map((n, i) => `${n} = $${i + 1}`).join(", ")},
         attempts = attempts + 1, claim = NULL, claimed_until = NULL
       WHERE id = $${names.length + 1} AND claim = $${names.length + 2} AND delivered_at IS NULL AND gave_up_at IS NULL`,
      [...Object.values(sets), id, holder],
    );
    return r.rowCount === 1;
  }

  async listDeliveries(webhookId: string, limit: number): Promise<DeliveryRecord[]> {
    if (hasNul(webhookId)) return [];
    return (
      await this.#q(
        "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC, id LIMIT $2",
        [webhookId, Math.max(1, Math.floor(limit))],
      )
    ).map(deliveryFrom);
  }
}

function pgKeyFrom(r: Row): ApiKeyRecord {
  return keyFrom({ ...r, name: JSON.parse(String(r["name_json"])) });
}

/** sandboxCols plus the metadata index whenever metadata is written. */
function pgSandboxCols(s: Partial<SandboxRecord>): Record<string, Value> {
  const cols = sandboxCols(s);
  if (s.metadata !== undefined) cols["metadata_idx"] = metadataIndex(s.metadata);
  return cols;
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
