// The SQLite store: the Store contract (store.contract.ts) and SQLite's own
// migrations.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { test } from "node:test";
import { DEFAULT_LIMITS } from "../config.ts";
import { MIGRATIONS, SqliteStore } from "./sqlite-store.ts";
import { storeContract } from "./store.contract.ts";

function tmpDb(t: { after(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-store-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, "cp.db");
}

storeContract("SQLite", {
  async fresh(t) {
    const file = tmpDb(t);
    const stores: SqliteStore[] = [];
    const open = async () => {
      const s = new SqliteStore(file);
      stores.push(s);
      return s;
    };
    t.after(() => {
      for (const s of stores) s.close();
    });
    return { store: await open(), another: open };
  },
});

test("migration 3 on a database of version 2: paused sandboxes get a pause time, old tenants the new limits", async (t) => {
  const file = tmpDb(t);
  const old = new DatabaseSync(file);
  for (const m of MIGRATIONS.slice(0, 2)) old.exec(m);
  old.exec("PRAGMA user_version = 2");
  const oldLimits = { maxSandboxes: 5, maxVcpus: 4, maxMemoryMib: 1024, requestsPerMinute: 60 };
  old
    .prepare(
      "INSERT INTO tenants (id, name, limits, created_at) VALUES ('t1', 't1', ?, '2026-01-01T00:00:00.000Z')",
    )
    .run(JSON.stringify(oldLimits));
  old
    .prepare(
      "INSERT INTO api_keys (id, tenant_id, name, hash, scopes, created_at) VALUES ('k1', 't1', 'k', 'h1', '[\"admin\"]', '2026-01-01T00:00:00.000Z')",
    )
    .run();
  for (const [id, state] of [
    ["p1", "paused"],
    ["r1", "running"],
  ]) {
    old
      .prepare(
        `INSERT INTO sandboxes (id, tenant_id, node_id, template, state, vcpus, memory_mib, metadata, created_at, timeout_ms, root_id, token_hash, created_by_key)
         VALUES (?, 't1', 'local', 'base', ?, 1, 256, '{}', '2026-01-01T00:00:00.000Z', 1000, ?, ?, 'k1')`,
      )
      .run(id!, state!, id!, `tok-${id}`);
  }
  old.close();

  const before = Date.now();
  const store = new SqliteStore(file);
  t.after(() => store.close());
  const paused = await store.getSandbox("p1");
  assert.ok(
    paused?.pausedAt && Date.parse(paused.pausedAt) >= before - 1000,
    "a full retention from the upgrade",
  );
  assert.equal((await store.getSandbox("r1"))?.pausedAt, null);
  const tenant = await store.getTenant("t1");
  assert.deepEqual(tenant?.limits, { ...DEFAULT_LIMITS, ...oldLimits });
  const k = await store.findKeyByHash("h1");
  assert.equal(k?.createdByKey, null);
  assert.equal(k?.revokedAt, null);
  assert.deepEqual(await store.pausedUsage("t1"), { sandboxes: 1, memoryMib: 256 });
});

test("migration 4 on a database of version 3: sandboxes get no placement; nodes, join tokens and leases start empty", async (t) => {
  const file = tmpDb(t);
  const old = new DatabaseSync(file);
  for (const m of MIGRATIONS.slice(0, 3)) old.exec(m);
  old.exec("PRAGMA user_version = 3");
  old.exec(
    "INSERT INTO tenants (id, name, limits, created_at) VALUES ('t1', 't1', '{}', '2026-01-01T00:00:00.000Z')",
  );
  old.exec(
    `INSERT INTO sandboxes (id, tenant_id, node_id, template, state, vcpus, memory_mib, metadata, created_at, timeout_ms, root_id, token_hash, created_by_key)
     VALUES ('s1', 't1', 'local', 'base', 'running', 1, 256, '{}', '2026-01-01T00:00:00.000Z', 1000, 's1', 'tok', 'k1')`,
  );
  old.close();
  const store = new SqliteStore(file);
  t.after(() => store.close());
  assert.equal((await store.getSandbox("s1"))?.placement, null);
  assert.deepEqual(
    (await store.listLiveSandboxesOnNode("local")).map((s) => s.id),
    ["s1"],
  );
  assert.deepEqual(await store.listNodes(), []);
  assert.equal(await store.getLease("reaper"), undefined);
  assert.equal(await store.useJoinToken("x", "2026-01-01T00:00:00.000Z"), false);
});

test("migration 6 on a database of version 5 (jobs tables there): usage gets the metering columns; overhead, webhooks start empty", async (t) => {
  const file = tmpDb(t);
  const old = new DatabaseSync(file);
  for (const m of MIGRATIONS.slice(0, 5)) old.exec(m);
  old.exec("PRAGMA user_version = 5");
  old.exec(
    "INSERT INTO tenants (id, name, limits, created_at) VALUES ('t1', 't1', '{}', '2026-01-01T00:00:00.000Z')",
  );
  old.exec(
    `INSERT INTO usage_records (sandbox_id, tenant_id, template, vcpus, memory_mib, created_at, lifetime_seconds, cpu_seconds, memory_peak_mib, memory_gib_seconds, metadata, root_id, final)
     VALUES ('s1', 't1', 'base', 1, 256, '2026-01-01T00:00:00.000Z', 10, 2.5, 100, 2.5, '{}', 's1', 1)`,
  );
  old.close();
  const store = new SqliteStore(file);
  t.after(() => store.close());
  const probe = new DatabaseSync(file);
  const version = (probe.prepare("PRAGMA user_version").get() as { user_version: number }).user_version;
  probe.close();
  assert.equal(version, MIGRATIONS.length);
  const u = await store.getUsage("s1");
  assert.equal(u?.cpuSeconds, 2.5);
  assert.equal(u?.overheadCpuSeconds, 0);
  assert.deepEqual(await store.listOverhead({ limit: 10 }), []);
  assert.deepEqual(await store.listWebhooks("t1"), []);
  assert.deepEqual((await store.jobs.listJobs({ tenantId: "t1", limit: 10 })).jobs, []);
});

test("a database of version 4 (before jobs and metering) migrates to the newest in one open", async (t) => {
  const file = tmpDb(t);
  const old = new DatabaseSync(file);
  for (const m of MIGRATIONS.slice(0, 4)) old.exec(m);
  old.exec("PRAGMA user_version = 4");
  old.close();
  const store = new SqliteStore(file);
  t.after(() => store.close());
  assert.deepEqual((await store.jobs.listJobs({ tenantId: "t1", limit: 10 })).jobs, []);
  assert.deepEqual(await store.listOverhead({ limit: 10 }), []);
  assert.equal(await store.getSetting("prices"), undefined);
});

test("a database from a newer Firebreak is refused, not downgraded", (t) => {
  const file = tmpDb(t);
  const db = new DatabaseSync(file);
  db.exec(`PRAGMA user_version = ${MIGRATIONS.length + 1}`);
  db.close();
  assert.throws(() => new SqliteStore(file), /schema version \d+, newer than this Firebreak/);
});
