// Store latency, SQLite vs PostgreSQL, side by side in one process:
//   node bench/store.ts [--creates 300] [--lists 200]
// A create is what SandboxService.create writes before the node is asked:
// insertSandboxWithinQuota (with a node budget) + addEvent + putInterimUsage.
// A list is one page of 50 of a tenant's sandboxes (1000+ in the table).
// PostgreSQL is a private cluster on this machine (Unix socket), once with
// its production defaults (fsync, synchronous commit) and once without them;
// SQLite is WAL with synchronous=NORMAL, as the server runs it.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { DEFAULT_LIMITS } from "../packages/control-plane/src/config.ts";
import { PgStore } from "../packages/control-plane/src/store/pg-store.ts";
import { SqliteStore } from "../packages/control-plane/src/store/sqlite-store.ts";
import { sandboxRec, usageRec } from "../packages/control-plane/src/store/store.contract.ts";
import type { Store } from "../packages/control-plane/src/store/store.ts";
import { startPostgres } from "../packages/control-plane/src/testing/postgres.ts";

const { values } = parseArgs({
  options: { creates: { type: "string", default: "300" }, lists: { type: "string", default: "200" } },
});
const CREATES = Number(values.creates);
const LISTS = Number(values.lists);
const LIMITS = { ...DEFAULT_LIMITS, maxSandboxes: 1e9, maxVcpus: 1e9, maxMemoryMib: 1e12 };
const NODE = { nodeId: "n1", vcpus: 1e9, memoryMib: 1e12, overheadMib: 256 };

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return { p50: q(0.5), p95: q(0.95), mean: s.reduce((a, b) => a + b, 0) / s.length };
}

async function measure(store: Store) {
  await store.createTenant({ id: "t1", name: "t1", limits: LIMITS, createdAt: new Date().toISOString() });
  // Background rows: 1000 sandboxes of the tenant, so lists and counts are not on an empty table.
  for (let i = 0; i < 1000; i++)
    await store.insertSandboxWithinQuota(sandboxRec(`bg${i}`, { state: "killed" }), LIMITS);
  const create: number[] = [];
  for (let i = 0; i < CREATES; i++) {
    const id = `s${i}`;
    const t0 = performance.now();
    const q = await store.insertSandboxWithinQuota(
      sandboxRec(id, { metadata: { i: String(i) } }),
      LIMITS,
      0,
      NODE,
    );
    if (!q.ok) throw new Error(q.message);
    await store.addEvent(id, {
      at: new Date().toISOString(),
      type: "requested",
      detail: { template: "base" },
    });
    await store.putInterimUsage(usageRec(id));
    create.push(performance.now() - t0);
  }
  const list: number[] = [];
  for (let i = 0; i < LISTS; i++) {
    const t0 = performance.now();
    const page = await store.listSandboxes({ tenantId: "t1", limit: 50 });
    if (page.sandboxes.length !== 50) throw new Error("short page");
    list.push(performance.now() - t0);
  }
  return { create: stats(create), list: stats(list) };
}

const rows: [string, Awaited<ReturnType<typeof measure>>][] = [];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-store-bench-"));
try {
  const sqlite = new SqliteStore(path.join(dir, "cp.db"));
  rows.push(["sqlite (WAL, synchronous=NORMAL)", await measure(sqlite)]);
  sqlite.close();
  for (const durable of [true, false]) {
    const server = await startPostgres({ durable });
    try {
      const store = await PgStore.open(await server.createDatabase());
      rows.push([
        `postgresql (${durable ? "fsync, synchronous_commit on" : "fsync off"})`,
        await measure(store),
      ]);
      await store.close();
    } finally {
      await server.stop();
    }
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
const f = (n: number) => n.toFixed(2).padStart(7);
console.log(`store latency, ${CREATES} creates and ${LISTS} lists each (ms)`);
console.log(`${"store".padEnd(42)} create p50     p95    mean |  list p50     p95    mean`);
for (const [name, r] of rows) {
  console.log(
    `${name.padEnd(42)} ${f(r.create.p50)} ${f(r.create.p95)} ${f(r.create.mean)} | ${f(r.list.p50)} ${f(r.list.p95)} ${f(r.list.mean)}`,
  );
}
