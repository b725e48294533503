// The SQLite store: the key lineage migration and the atomic key rules.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { test } from "node:test";
import { DEFAULT_LIMITS } from "../config.ts";
import { MIGRATIONS, SqliteStore } from "./sqlite-store.ts";
import type { ApiKeyRecord } from "./store.ts";

function tmpDb(t: { after(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-store-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, "cp.db");
}

const key = (id: string, over: Partial<ApiKeyRecord> = {}): ApiKeyRecord => ({
  id,
  tenantId: "t1",
  name: id,
  hash: `h-${id}`,
  scopes: ["sandboxes"],
  createdAt: new Date().toISOString(),
  revokedAt: null,
  createdByKey: null,
  ...over,
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

test("keys: the limit and the minter are checked in the insert's transaction; revocation cascades", async (t) => {
  const store = new SqliteStore(tmpDb(t));
  t.after(() => store.close());
  await store.createTenant({
    id: "t1",
    name: "t1",
    limits: DEFAULT_LIMITS,
    createdAt: new Date().toISOString(),
  });
  await store.createKey(key("root"));
  assert.deepEqual(await store.createKeyWithinLimit(key("a", { createdByKey: "root" }), 3), { ok: true });
  assert.deepEqual(await store.createKeyWithinLimit(key("b", { createdByKey: "a" }), 3), { ok: true });
  const full = await store.createKeyWithinLimit(key("c", { createdByKey: "a" }), 3);
  assert.equal(full.ok, false);
  assert.equal(!full.ok && full.reason, "maxKeys");
  assert.deepEqual((await store.revokeKeyTree("a", new Date().toISOString())).sort(), ["a", "b"]);
  // A key minted by a revoked key is refused, even when the request got past authentication before.
  const late = await store.createKeyWithinLimit(key("d", { createdByKey: "b" }), 10);
  assert.equal(!late.ok && late.reason, "minter_revoked");
  assert.equal(await store.getKey("d"), undefined);
  assert.deepEqual(await store.revokeKeyTree("a", new Date().toISOString()), [], "already revoked");
  assert.equal((await store.getKey("root"))?.revokedAt, null);
});

test("metadata filters and groups match keys with any characters (quotes, dots, NUL)", async (t) => {
  const store = new SqliteStore(tmpDb(t));
  t.after(() => store.close());
  await store.createTenant({
    id: "t1",
    name: "t1",
    limits: DEFAULT_LIMITS,
    createdAt: new Date().toISOString(),
  });
  const weird = ['a"b', "a.b", "a\u0000b", "$", "[0]"];
  let n = 0;
  for (const k of weird) {
    n++;
    await store.insertSandboxWithinQuota(
      {
        id: `s${n}`,
        tenantId: "t1",
        nodeId: "local",
        nodeSandboxId: null,
        template: "base",
        state: "requested",
        vcpus: 1,
        memoryMib: 128,
        metadata: { [k]: "v" },
        createdAt: new Date().toISOString(),
        readyAt: null,
        endedAt: null,
        endReason: null,
        endedBy: null,
        timeoutMs: 1000,
        timeoutAt: null,
        startPath: null,
        timings: null,
        parentId: null,
        rootId: `s${n}`,
        tokenHash: `t${n}`,
        envdTokenHash: null,
        createdByKey: "k",
        networkPolicy: null,
        pausedAt: null,
      },
      DEFAULT_LIMITS,
    );
  }
  for (const [i, k] of weird.entries()) {
    const page = await store.listSandboxes({ tenantId: "t1", metadata: { [k]: "v" }, limit: 10 });
    assert.deepEqual(
      page.sandboxes.map((s) => s.id),
      [`s${i + 1}`],
      JSON.stringify(k),
    );
  }
  for (const [i, k] of weird.entries()) {
    await store.putInterimUsage({
      sandboxId: `s${i + 1}`,
      tenantId: "t1",
      template: "base",
      vcpus: 1,
      memoryMib: 128,
      createdAt: new Date().toISOString(),
      readyAt: null,
      endedAt: null,
      lifetimeSeconds: 1,
      startPath: null,
      cpuSeconds: 0,
      memoryPeakMib: 0,
      memoryGibSeconds: 0,
      endReason: null,
      metadata: { [k]: "v" },
      parentId: null,
      rootId: `s${i + 1}`,
      final: false,
      traffic: {
        internet: { tx: 0, rx: 0 },
        private: { tx: 0, rx: 0 },
        sandbox: { tx: 0, rx: 0 },
        ingress: { tx: 0, rx: 0 },
      },
    });
  }
  for (const k of weird) {
    const groups = await store.usageGroups({ tenantId: null, groupBy: { metadata: k } });
    assert.deepEqual(
      groups.map((g) => [g.key, g.sandboxes]),
      [
        [null, 4],
        ["v", 1],
      ],
      JSON.stringify(k),
    );
  }
});
