// The PostgreSQL store: the Store contract (store.contract.ts) against a
// private throwaway cluster (testing/postgres.ts), and PostgreSQL's own
// migrations. Every test gets a database of its own.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import pg from "pg";
import { recoverAdminKey } from "../auth/admin-recovery.ts";
import { hashApiKey } from "../auth/keys.ts";
import { startPostgres, type TestPostgres } from "../testing/postgres.ts";
import { PG_MIGRATIONS, PgStore, redactUrl } from "./pg-store.ts";
import { storeContract } from "./store.contract.ts";

let server: TestPostgres;
before(async () => {
  server = await startPostgres();
});
after(() => server?.stop());

storeContract("PostgreSQL", {
  async fresh(t) {
    const url = await server.createDatabase();
    const stores: PgStore[] = [];
    const open = async () => {
      const s = await PgStore.open(url);
      stores.push(s);
      return s;
    };
    t.after(() => Promise.all(stores.map((s) => s.close())));
    return { store: await open(), another: open };
  },
});

async function version(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query("SELECT version FROM firebreak_schema")).rows[0].version as number;
  } finally {
    await c.end();
  }
}

test("migrations: replicas opening a new database at once migrate it once; reopening changes nothing", async () => {
  const url = await server.createDatabase();
  const stores = await Promise.all(Array.from({ length: 4 }, () => PgStore.open(url)));
  assert.equal(await version(url), PG_MIGRATIONS.length);
  await stores[0]!.createTenant({ id: "t", name: "t", limits: {} as never, createdAt: "x" });
  await Promise.all(stores.map((s) => s.close()));
  const again = await PgStore.open(url);
  assert.equal((await again.getTenant("t"))?.id, "t");
  await again.close();
  await again.close(); // closing twice is harmless
});

test("migrations: a database from a newer Firebreak is refused, with the URL's password hidden", async () => {
  const url = await server.createDatabase();
  (await PgStore.open(url)).close();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query("UPDATE firebreak_schema SET version = $1", [PG_MIGRATIONS.length + 1]);
  await c.end();
  await assert.rejects(PgStore.open(url), /schema version \d+, newer than this Firebreak/);
  assert.equal(redactUrl("postgres://fb:hunter2@db.example:5432/fb"), "postgres://fb:***@db.example:5432/fb");
  await assert.rejects(
    PgStore.open("postgres://fb:hunter2@127.0.0.1:1/fb?connect_timeout=2"),
    (e: Error) => e.message.includes("fb:***@127.0.0.1:1") && !e.message.includes("hunter2"),
  );
});

test("migration 3 on a database of version 2 (jobs tables there): usage gets the metering columns; overhead and webhooks start empty", async () => {
  const url = await server.createDatabase();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    for (const m of PG_MIGRATIONS.slice(0, 2)) await c.query(m);
    await c.query("CREATE TABLE firebreak_schema (version INTEGER NOT NULL)");
    await c.query("INSERT INTO firebreak_schema (version) VALUES (2)");
    await c.query(
      "INSERT INTO tenants (id, name, limits, created_at) VALUES ('t1', 't1', '{}', '2026-01-01T00:00:00.000Z')",
    );
    await c.query(
      `INSERT INTO usage_records (sandbox_id, tenant_id, template, vcpus, memory_mib, created_at, lifetime_seconds, cpu_seconds, memory_peak_mib, memory_gib_seconds, metadata, metadata_idx, root_id, final)
       VALUES ('s1', 't1', 'base', 1, 256, '2026-01-01T00:00:00.000Z', 10, 2.5, 100, 2.5, '{}', '{}', 's1', true)`,
    );
  } finally {
    await c.end();
  }
  const store = await PgStore.open(url);
  try {
    assert.equal(await version(url), PG_MIGRATIONS.length);
    const u = await store.getUsage("s1");
    assert.equal(u?.cpuSeconds, 2.5);
    assert.equal(u?.overheadCpuSeconds, 0);
    assert.deepEqual(await store.listOverhead({ limit: 10 }), []);
    assert.deepEqual(await store.listWebhooks("t1"), []);
    assert.deepEqual((await store.jobs.listJobs({ tenantId: "t1", limit: 10 })).jobs, []);
  } finally {
    await store.close();
  }
});

test("a value PostgreSQL text cannot hold is refused with a clear error, not stored mangled", async () => {
  const url = await server.createDatabase();
  const store = await PgStore.open(url);
  try {
    await assert.rejects(
      store.createTenant({ id: "t\u0000", name: "t", limits: {} as never, createdAt: "x" }),
      /cannot hold NUL/,
    );
  } finally {
    await store.close();
  }
});

test("recoverAdminKey (firebreak admin-key) mints into the PostgreSQL database a URL names", async () => {
  const url = await server.createDatabase();
  const made = await recoverAdminKey({ database: url, name: "recovered" });
  assert.equal(made.tenantId, "default");
  const store = await PgStore.open(url);
  try {
    const rec = await store.findKeyByHash(hashApiKey(made.key)!);
    assert.equal(rec?.id, made.id);
    assert.deepEqual(rec?.scopes, ["admin"]);
    assert.equal((await store.getTenant("default"))?.id, "default");
  } finally {
    await store.close();
  }
});
