// The Store contract: one suite, run against every implementation
// (sqlite-store.test.ts, pg-store.test.ts), so they cannot drift. Every method
// of the Store interface is exercised here; the concurrency tests open a
// second store on the same database (another replica) and race the two.
import assert from "node:assert/strict";
import { describe, type TestContext, test } from "node:test";
import { DEFAULT_LIMITS } from "../config.ts";
import { jobStoreContract } from "./job-store.contract.ts";
import type { ApiKeyRecord, NodeRecord, SandboxRecord, Store, TenantLimits, UsageRecord } from "./store.ts";

export interface StoreFactory {
  /**
   * A store on a new, empty database, and a way to open another store on
   * the same database (what a second replica would hold). Both are closed
   * when the test ends.
   */
  fresh(t: TestContext): Promise<{ store: Store; another(): Promise<Store> }>;
}

const iso = (ms = Date.now()) => new Date(ms).toISOString();
const T0 = "2026-01-01T00:00:00.000Z";

const NO_TRAFFIC = {
  internet: { tx: 0, rx: 0 },
  private: { tx: 0, rx: 0 },
  sandbox: { tx: 0, rx: 0 },
  ingress: { tx: 0, rx: 0 },
};

export function keyRec(id: string, over: Partial<ApiKeyRecord> = {}): ApiKeyRecord {
  return {
    id,
    tenantId: "t1",
    name: id,
    hash: `h-${id}`,
    scopes: ["sandboxes"],
    createdAt: T0,
    revokedAt: null,
    createdByKey: null,
    ...over,
  };
}

export function sandboxRec(id: string, over: Partial<SandboxRecord> = {}): SandboxRecord {
  return {
    id,
    tenantId: "t1",
    nodeId: "n1",
    nodeSandboxId: null,
    template: "base",
    state: "requested",
    vcpus: 1,
    memoryMib: 128,
    metadata: {},
    createdAt: T0,
    readyAt: null,
    endedAt: null,
    endReason: null,
    endedBy: null,
    timeoutMs: 300_000,
    timeoutAt: null,
    startPath: null,
    timings: null,
    parentId: null,
    rootId: id,
    tokenHash: `tok-${id}`,
    envdTokenHash: null,
    createdByKey: "k1",
    networkPolicy: null,
    pausedAt: null,
    placement: null,
    ...over,
  };
}

export function usageRec(sandboxId: string, over: Partial<UsageRecord> = {}): UsageRecord {
  return {
    sandboxId,
    tenantId: "t1",
    template: "base",
    vcpus: 1,
    memoryMib: 128,
    createdAt: T0,
    readyAt: null,
    endedAt: null,
    lifetimeSeconds: 1,
    startPath: null,
    cpuSeconds: 0,
    memoryPeakMib: 0,
    memoryGibSeconds: 0,
    endReason: null,
    metadata: {},
    parentId: null,
    rootId: sandboxId,
    final: false,
    traffic: NO_TRAFFIC,
    chargedFrom: null,
    overheadCpuSeconds: 0,
    meterState: null,
    ...over,
  };
}

function nodeRec(id: string, over: Partial<NodeRecord> = {}): NodeRecord {
  return {
    id,
    address: `10.0.0.1:${id.length + 7000}`,
    secret: `secret-${id}`,
    state: "active",
    leaseUntil: null,
    report: null,
    joinedAt: T0,
    lastSeenAt: null,
    ...over,
  };
}

async function withTenant(store: Store, id = "t1", limits: Partial<TenantLimits> = {}): Promise<void> {
  await store.createTenant({
    id,
    name: `name-${id}`,
    limits: { ...DEFAULT_LIMITS, ...limits },
    createdAt: T0,
  });
}

const BIG: TenantLimits = {
  ...DEFAULT_LIMITS,
  maxSandboxes: 1_000_000,
  maxVcpus: 1_000_000,
  maxMemoryMib: 1_000_000_000,
};

export function storeContract(name: string, factory: StoreFactory): void {
  describe(`Store contract: ${name}`, () => {
    jobStoreContract((t) => factory.fresh(t));
    test("tenants: create, get, list in creation order; names are unique", async (t) => {
      const { store } = await factory.fresh(t);
      assert.deepEqual(await store.listTenants(), []);
      await store.createTenant({
        id: "b",
        name: "B",
        limits: DEFAULT_LIMITS,
        createdAt: "2026-01-02T00:00:00.000Z",
      });
      await store.createTenant({
        id: "a",
        name: "A",
        limits: { ...DEFAULT_LIMITS, maxSandboxes: 3 },
        createdAt: "2026-01-03T00:00:00.000Z",
      });
      await store.createTenant({
        id: "c",
        name: "C",
        limits: DEFAULT_LIMITS,
        createdAt: "2026-01-02T00:00:00.000Z",
      });
      assert.deepEqual(
        (await store.listTenants()).map((x) => x.id),
        ["b", "c", "a"],
      );
      assert.deepEqual(await store.getTenant("a"), {
        id: "a",
        name: "A",
        limits: { ...DEFAULT_LIMITS, maxSandboxes: 3 },
        createdAt: "2026-01-03T00:00:00.000Z",
      });
      assert.equal(await store.getTenant("nope"), undefined);
      await assert.rejects(
        store.createTenant({ id: "d", name: "A", limits: DEFAULT_LIMITS, createdAt: T0 }),
        "a second tenant with the same name is refused",
      );
      await assert.rejects(store.createTenant({ id: "a", name: "Z", limits: DEFAULT_LIMITS, createdAt: T0 }));
    });

    test("keys: create, find by hash, get, list per tenant and all; any characters in a name", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await withTenant(store, "t2");
      const odd = 'quote" back\\ NUL\u0000 emoji \u{1f600}';
      await store.createKey(
        keyRec("k2", { createdAt: "2026-01-02T00:00:00.000Z", name: odd, scopes: ["admin"] }),
      );
      await store.createKey(keyRec("k1", { createdAt: "2026-01-02T00:00:00.000Z" }));
      await store.createKey(keyRec("k3", { tenantId: "t2", createdByKey: "k1", revokedAt: T0 }));
      assert.deepEqual(
        await store.getKey("k2"),
        keyRec("k2", { createdAt: "2026-01-02T00:00:00.000Z", name: odd, scopes: ["admin"] }),
      );
      assert.deepEqual(
        await store.findKeyByHash("h-k3"),
        keyRec("k3", { tenantId: "t2", createdByKey: "k1", revokedAt: T0 }),
      );
      assert.equal(await store.findKeyByHash("h-none"), undefined);
      assert.equal(await store.getKey("none"), undefined);
      assert.deepEqual(
        (await store.listKeys("t1")).map((k) => k.id),
        ["k1", "k2"],
      );
      assert.deepEqual(
        (await store.listKeys(null)).map((k) => k.id),
        ["k3", "k1", "k2"],
      );
      assert.deepEqual(await store.listKeys("t3"), []);
      await assert.rejects(store.createKey(keyRec("k4", { hash: "h-k1" })), "hashes are unique");
    });

    test("keys: the limit and the minter are checked in the insert's transaction; revocation cascades", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await store.createKey(keyRec("root"));
      assert.deepEqual(await store.createKeyWithinLimit(keyRec("a", { createdByKey: "root" }), 3), {
        ok: true,
      });
      assert.deepEqual(await store.createKeyWithinLimit(keyRec("b", { createdByKey: "a" }), 3), { ok: true });
      const full = await store.createKeyWithinLimit(keyRec("c", { createdByKey: "a" }), 3);
      assert.equal(full.ok, false);
      assert.equal(!full.ok && full.reason, "maxKeys");
      assert.match(!full.ok ? full.message : "", /maxKeys is 3/);
      assert.deepEqual((await store.revokeKeyTree("a", iso())).sort(), ["a", "b"]);
      // A key minted by a revoked key is refused, even when the request got past authentication before.
      const late = await store.createKeyWithinLimit(keyRec("d", { createdByKey: "b" }), 10);
      assert.equal(!late.ok && late.reason, "minter_revoked");
      assert.equal(await store.getKey("d"), undefined);
      const ghost = await store.createKeyWithinLimit(keyRec("e", { createdByKey: "no-such-key" }), 10);
      assert.equal(!ghost.ok && ghost.reason, "minter_revoked", "an unknown minter counts as revoked");
      assert.deepEqual(await store.revokeKeyTree("a", iso()), [], "already revoked");
      assert.deepEqual(await store.revokeKeyTree("none", iso()), [], "unknown");
      assert.equal((await store.getKey("root"))?.revokedAt, null);
      assert.deepEqual(await store.createKeyWithinLimit(keyRec("f", { createdByKey: null }), 2), {
        ok: true,
      });
    });

    test("keys: a cascade reaches through revoked keys and every generation", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await store.createKey(keyRec("r"));
      await store.createKey(keyRec("c1", { createdByKey: "r" }));
      await store.createKey(keyRec("c2", { createdByKey: "c1", revokedAt: T0 }));
      await store.createKey(keyRec("c3", { createdByKey: "c2" }));
      await store.createKey(keyRec("other"));
      const at = "2026-02-01T00:00:00.000Z";
      assert.deepEqual((await store.revokeKeyTree("r", at)).sort(), ["c1", "c3", "r"]);
      assert.equal((await store.getKey("c3"))?.revokedAt, at);
      assert.equal((await store.getKey("c2"))?.revokedAt, T0, "an earlier revocation is kept");
      assert.equal((await store.getKey("other"))?.revokedAt, null);
    });

    test("templates: claim once, the first owner stays; list by name; remove", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await withTenant(store, "t2");
      const mine = { name: "py", tenantId: "t1", createdAt: T0, createdByKey: "k1" };
      assert.deepEqual(await store.claimTemplate(mine), { owner: mine, created: true });
      assert.deepEqual(
        await store.claimTemplate({ name: "py", tenantId: "t2", createdAt: iso(), createdByKey: "k9" }),
        { owner: mine, created: false },
      );
      const op = { name: "base", tenantId: null, createdAt: T0, createdByKey: null };
      await store.claimTemplate(op);
      assert.deepEqual(await store.getTemplateOwner("base"), op);
      assert.deepEqual(await store.listTemplateOwners(), [op, mine]);
      await store.removeTemplateOwner("py");
      await store.removeTemplateOwner("never");
      assert.equal(await store.getTemplateOwner("py"), undefined);
      assert.equal((await store.claimTemplate({ ...mine, tenantId: "t2" })).created, true);
    });

    test("sandboxes: every field reads back as written; updates apply only from the given states", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      const full = sandboxRec("s1", {
        metadata: { a: "1", 'we"ird\u0000': "v\u0000" },
        timings: { totalMs: 12.5, phases: { restore: 10, boot: 2.5 } },
        networkPolicy: {
          allowDomains: ["example.com"],
          allowCidrs: [],
          denyCidrs: [],
          services: [],
        } as unknown as SandboxRecord["networkPolicy"],
        placement: { node: "n1", cost: 3.5, path: ["warm"] },
        timeoutMs: 30 * 24 * 3600_000,
        envdTokenHash: "envd-1",
      });
      assert.deepEqual(await store.insertSandboxWithinQuota(full, BIG), { ok: true });
      assert.deepEqual(await store.getSandbox("s1"), full);
      assert.deepEqual(await store.findSandboxByTokenHash("tok-s1"), full);
      assert.deepEqual(await store.findSandboxByEnvdTokenHash("envd-1"), full);
      assert.equal(await store.getSandbox("s2"), undefined);
      await assert.rejects(store.insertSandboxWithinQuota(sandboxRec("s1"), BIG), "ids are unique");

      assert.equal(await store.updateSandbox("s1", { state: "running" }, ["starting"]), false);
      assert.equal((await store.getSandbox("s1"))?.state, "requested");
      assert.equal(await store.updateSandbox("s1", { state: "starting" }, ["requested"]), true);
      assert.equal(
        await store.updateSandbox("s1", {
          state: "running",
          nodeSandboxId: "vm1",
          readyAt: T0,
          startPath: "warm",
          placement: null,
          metadata: { b: "2" },
        }),
        true,
        "default: any live state",
      );
      const now = await store.getSandbox("s1");
      assert.equal(now?.state, "running");
      assert.equal(now?.placement, null);
      assert.deepEqual(now?.metadata, { b: "2" });
      assert.equal(await store.updateSandbox("s1", {}), true, "an empty patch changes nothing");
      assert.equal(await store.updateSandbox("nope", { state: "running" }), false);

      const u = usageRec("s1", { cpuSeconds: 2, final: true, endReason: "killed", endedAt: T0 });
      assert.equal(
        await store.endSandbox(
          "s1",
          { state: "killed", endedAt: T0, endReason: "killed", endedBy: "key:k1" },
          u,
        ),
        true,
      );
      const ended = await store.getSandbox("s1");
      assert.equal(ended?.state, "killed");
      assert.equal(ended?.endedBy, "key:k1");
      assert.equal(ended?.endReason, "killed");
      assert.equal(await store.updateSandbox("s1", { state: "running" }), false, "final rows stay final");
      assert.equal(
        await store.findSandboxByEnvdTokenHash("envd-1"),
        undefined,
        "only live sandboxes by envd token",
      );
      assert.deepEqual(
        await store.findSandboxByTokenHash("tok-s1"),
        ended,
        "by sandbox token: ended ones too",
      );
    });

    test("sandboxes: tenant limits (paused ones count as sandboxes, not as vCPUs or memory) and extra", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      const l: TenantLimits = { ...DEFAULT_LIMITS, maxSandboxes: 3, maxVcpus: 4, maxMemoryMib: 1024 };
      assert.deepEqual(
        await store.insertSandboxWithinQuota(sandboxRec("a", { vcpus: 2, memoryMib: 512 }), l),
        { ok: true },
      );
      const tooMany = await store.insertSandboxWithinQuota(sandboxRec("b", { vcpus: 3 }), l);
      assert.equal(!tooMany.ok && tooMany.limit, "maxVcpus");
      const tooBig = await store.insertSandboxWithinQuota(sandboxRec("b", { memoryMib: 600 }), l);
      assert.equal(!tooBig.ok && tooBig.limit, "maxMemoryMib");
      assert.match(
        !tooBig.ok ? tooBig.message : "",
        /maxMemoryMib is 1024, 512 MiB in use, 600 MiB requested/,
      );
      const extra = await store.insertSandboxWithinQuota(sandboxRec("b"), l, 2);
      assert.equal(!extra.ok && extra.limit, "maxSandboxes", "1 + 2 extra on top of 1 is over 3");
      assert.deepEqual(await store.insertSandboxWithinQuota(sandboxRec("b"), l, 1), { ok: true });
      assert.equal(
        await store.getSandbox("b").then((s) => s?.id),
        "b",
        "extra only checks; one row is written",
      );
      // Pausing a gives its vCPUs and memory back, but it still counts as a sandbox.
      await store.updateSandbox("a", { state: "paused", pausedAt: T0 });
      assert.deepEqual(await store.pausedUsage("t1"), { sandboxes: 1, memoryMib: 512 });
      assert.deepEqual(await store.pausedUsage("t2"), { sandboxes: 0, memoryMib: 0 });
      assert.deepEqual(await store.checkQuota("t1", { vcpus: 3, memoryMib: 128 }, 1, l), { ok: true });
      const count = await store.checkQuota("t1", { vcpus: 1, memoryMib: 128 }, 2, l);
      assert.equal(!count.ok && count.limit, "maxSandboxes");
      assert.deepEqual(await store.insertSandboxWithinQuota(sandboxRec("c", { vcpus: 3 }), l), { ok: true });
      const full = await store.insertSandboxWithinQuota(sandboxRec("d"), l);
      assert.equal(!full.ok && full.limit, "maxSandboxes");
      // Ended sandboxes count for nothing.
      await store.endSandbox(
        "c",
        { state: "failed", endedAt: T0, endReason: "x", endedBy: "node" },
        usageRec("c"),
      );
      assert.deepEqual(await store.insertSandboxWithinQuota(sandboxRec("d"), l), { ok: true });
    });

    test("sandboxes: a node budget counts every tenant's holding sandboxes on that node, plus overhead each", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await withTenant(store, "t2");
      const node = { nodeId: "n1", vcpus: 4, memoryMib: 2000, overheadMib: 256 };
      assert.deepEqual(
        await store.insertSandboxWithinQuota(sandboxRec("a", { vcpus: 2, memoryMib: 512 }), BIG, 0, node),
        { ok: true },
      );
      const cpu = await store.insertSandboxWithinQuota(
        sandboxRec("b", { tenantId: "t2", vcpus: 3 }),
        BIG,
        0,
        node,
      );
      assert.equal(!cpu.ok && cpu.limit, "nodeVcpus");
      // 512 + 256 committed; 1000 + 256 more would be 2024 > 2000.
      const mem = await store.insertSandboxWithinQuota(
        sandboxRec("b", { tenantId: "t2", memoryMib: 1000 }),
        BIG,
        0,
        node,
      );
      assert.equal(!mem.ok && mem.limit, "nodeMemoryMib");
      assert.match(!mem.ok ? mem.message : "", /768 MiB committed of 2000 MiB/);
      assert.deepEqual(
        await store.insertSandboxWithinQuota(
          sandboxRec("b", { tenantId: "t2", memoryMib: 900 }),
          BIG,
          0,
          node,
        ),
        { ok: true },
      );
      // Another node's budget is its own.
      assert.deepEqual(
        await store.insertSandboxWithinQuota(
          sandboxRec("c", { tenantId: "t2", nodeId: "n2", vcpus: 4 }),
          BIG,
          0,
          { ...node, nodeId: "n2" },
        ),
        { ok: true },
      );
      // Tenant limits are checked first.
      const both = await store.insertSandboxWithinQuota(
        sandboxRec("d", { vcpus: 8 }),
        { ...BIG, maxVcpus: 4 },
        0,
        node,
      );
      assert.equal(!both.ok && both.limit, "maxVcpus");
      const over = await store.checkQuota("t1", { vcpus: 1, memoryMib: 128 }, 1, BIG, node);
      assert.equal(!over.ok && over.limit, "nodeMemoryMib", "1924 MiB committed, 384 more");
      // A paused sandbox holds nothing on its node.
      await store.updateSandbox("b", { state: "paused" });
      assert.deepEqual(await store.checkQuota("t1", { vcpus: 1, memoryMib: 128 }, 1, BIG, node), {
        ok: true,
      });
    });

    test("sandboxes: list by tenant, state and metadata, newest first, in cursor pages; live lists", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await withTenant(store, "t2");
      for (let i = 1; i <= 7; i++) {
        await store.insertSandboxWithinQuota(
          sandboxRec(`s${i}`, {
            nodeId: i % 2 ? "n1" : "n2",
            metadata: { parity: i % 2 ? "odd" : "even", i: String(i) },
          }),
          BIG,
        );
      }
      await store.insertSandboxWithinQuota(
        sandboxRec("x1", { tenantId: "t2", metadata: { parity: "odd" } }),
        BIG,
      );
      await store.updateSandbox("s2", { state: "running" });
      await store.updateSandbox("s3", { state: "paused" });
      await store.endSandbox(
        "s4",
        { state: "killed", endedAt: T0, endReason: "k", endedBy: "b" },
        usageRec("s4"),
      );

      const ids = (p: { sandboxes: SandboxRecord[] }) => p.sandboxes.map((s) => s.id);
      const first = await store.listSandboxes({ tenantId: "t1", limit: 3 });
      assert.deepEqual(ids(first), ["s7", "s6", "s5"]);
      assert.ok(first.nextCursor);
      const second = await store.listSandboxes({ tenantId: "t1", limit: 3, cursor: first.nextCursor });
      assert.deepEqual(ids(second), ["s4", "s3", "s2"]);
      const third = await store.listSandboxes({ tenantId: "t1", limit: 3, cursor: second.nextCursor! });
      assert.deepEqual(ids(third), ["s1"]);
      assert.equal(third.nextCursor, null);
      assert.deepEqual(
        ids(await store.listSandboxes({ tenantId: "t1", limit: 0.5 })),
        ["s7"],
        "at least one",
      );
      assert.deepEqual(
        ids(await store.listSandboxes({ tenantId: "t1", states: ["running", "paused"], limit: 10 })),
        ["s3", "s2"],
      );
      assert.deepEqual(
        ids(await store.listSandboxes({ tenantId: "t1", metadata: { parity: "odd" }, limit: 10 })),
        ["s7", "s5", "s3", "s1"],
      );
      assert.deepEqual(
        ids(await store.listSandboxes({ tenantId: "t1", metadata: { parity: "odd", i: "5" }, limit: 10 })),
        ["s5"],
      );
      assert.deepEqual(
        ids(await store.listSandboxes({ tenantId: "t1", metadata: { parity: "5" }, limit: 10 })),
        [],
      );
      assert.deepEqual(ids(await store.listSandboxes({ tenantId: "t3", limit: 10 })), []);
      assert.deepEqual(
        ids(await store.listSandboxes({ tenantId: "t1", limit: 10, cursor: "zzzzzzzzzzzzzzzz" })),
        ["s7", "s6", "s5", "s4", "s3", "s2", "s1"],
        "a cursor past the end starts at the newest",
      );
      assert.deepEqual(
        (await store.listLiveSandboxes()).map((s) => s.id),
        ["s1", "s2", "s3", "s5", "s6", "s7", "x1"],
      );
      assert.deepEqual(
        (await store.listLiveSandboxesOnNode("n1")).map((s) => s.id),
        ["s1", "s3", "s5", "s7", "x1"],
      );
      assert.deepEqual(
        (await store.listLiveSandboxesOnNode("n9")).map((s) => s.id),
        [],
      );
    });

    test("metadata filters and groups match keys with any characters (quotes, dots, NUL)", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      const weird = ['a"b', "a.b", "a\u0000b", "$", "[0]"];
      for (const [i, k] of weird.entries()) {
        await store.insertSandboxWithinQuota(
          sandboxRec(`s${i + 1}`, { metadata: { [k]: "v" } }),
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
        await store.putInterimUsage(usageRec(`s${i + 1}`, { metadata: { [k]: "v" } }));
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

    test("ending: exactly once, with one final usage record that later interim writes never change", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await store.insertSandboxWithinQuota(sandboxRec("s1", { state: "running" }), BIG);
      await store.putInterimUsage(usageRec("s1", { cpuSeconds: 1, final: true }));
      assert.equal(
        (await store.getUsage("s1"))?.final,
        false,
        "putInterimUsage always writes an interim record",
      );
      const final = usageRec("s1", {
        cpuSeconds: 5.25,
        memoryPeakMib: 99.5,
        memoryGibSeconds: 0.125,
        lifetimeSeconds: 10.5,
        endedAt: "2026-01-01T00:00:10.500Z",
        endReason: "timeout",
        traffic: { ...NO_TRAFFIC, internet: { tx: 2 ** 40, rx: 3 }, ingress: { tx: 1, rx: 2 } },
      });
      const end = { state: "killed" as const, endedAt: T0, endReason: "timeout", endedBy: "reaper" };
      assert.equal(await store.endSandbox("s1", end, final), true);
      assert.equal(
        await store.endSandbox(
          "s1",
          { ...end, state: "crashed", endedBy: "node" },
          usageRec("s1", { cpuSeconds: 9 }),
        ),
        false,
      );
      await store.putInterimUsage(usageRec("s1", { cpuSeconds: 7 }));
      assert.deepEqual(await store.getUsage("s1"), { ...final, final: true });
      assert.equal((await store.getSandbox("s1"))?.state, "killed");
      assert.equal(await store.endSandbox("none", end, usageRec("none")), false);
      assert.equal(await store.getUsage("none"), undefined, "no usage for a sandbox that did not end");
    });

    test("events: appended in order, details as written", async (t) => {
      const { store } = await factory.fresh(t);
      assert.deepEqual(await store.listEvents("s1"), []);
      const detail = { n: 1.5, nested: { list: [1, "two", null] }, text: "NUL\u0000 and \u{1f600}" };
      assert.equal(await store.latestEventSeq(), 0);
      await store.addEvent("s1", { at: T0, type: "requested", detail });
      await store.addEvent("s2", { at: T0, type: "other", detail: {} });
      const before = await store.latestEventSeq();
      await store.addEvent("s1", { at: T0, type: "ready", detail: {} });
      assert.ok((await store.latestEventSeq()) > before, "the latest seq grows with every event");
      assert.deepEqual(await store.listEvents("s1"), [
        { at: T0, type: "requested", detail },
        { at: T0, type: "ready", detail: {} },
      ]);
    });

    test("webhooks: create, get, list per tenant and all; disable once, giving up what is pending", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await withTenant(store, "t2");
      const hook = (id: string, tenantId: string, events: string[]) => ({
        id,
        tenantId,
        url: `https://example.com/${id}`,
        secret: `whsec_${id}`,
        events,
        description: `"${id}" \u{1f600}`,
        createdAt: T0,
        createdByKey: "k1",
        disabledAt: null,
      });
      await store.createWebhook(hook("w1", "t1", ["*"]));
      await store.createWebhook(hook("w2", "t2", ["sandbox.ended"]));
      assert.deepEqual(await store.getWebhook("w1"), hook("w1", "t1", ["*"]));
      assert.equal(await store.getWebhook("none"), undefined);
      assert.deepEqual(
        (await store.listWebhooks("t1")).map((w) => w.id),
        ["w1"],
      );
      assert.deepEqual(
        (await store.listWebhooks(null)).map((w) => w.id),
        ["w1", "w2"],
      );
      await store.insertSandboxWithinQuota(sandboxRec("s1", { state: "running" }), BIG);
      await store.addEvent("s1", { at: T0, type: "ready", detail: {} });
      assert.equal((await store.listDeliveries("w1", 10)).length, 1);
      assert.equal(await store.disableWebhook("w1", "2026-01-01T00:00:01.000Z"), true);
      assert.equal(await store.disableWebhook("w1", "2026-01-01T00:00:02.000Z"), false);
      assert.equal((await store.getWebhook("w1"))?.disabledAt, "2026-01-01T00:00:01.000Z");
      const [d] = await store.listDeliveries("w1", 10);
      assert.equal(d?.gaveUpAt, "2026-01-01T00:00:01.000Z");
      assert.equal(d?.lastError, "the webhook was deleted");
      await store.addEvent("s1", { at: T0, type: "kill", detail: {} });
      assert.equal(
        (await store.listDeliveries("w1", 10)).length,
        1,
        "a disabled webhook gets no new deliveries",
      );
    });

    test("webhook outbox: events and final usage enqueue one delivery per webhook that wants them, in their transaction", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      await withTenant(store, "t2");
      const mk = (id: string, tenantId: string, events: string[]) =>
        store.createWebhook({
          id,
          tenantId,
          url: "https://example.com/",
          secret: "whsec_x",
          events,
          description: "",
          createdAt: T0,
          createdByKey: null,
          disabledAt: null,
        });
      await mk("all", "t1", ["*"]);
      await mk("sandbox", "t1", ["sandbox.*"]);
      await mk("ended", "t1", ["sandbox.ended", "usage.final"]);
      await mk("other", "t2", ["*"]);
      await store.insertSandboxWithinQuota(sandboxRec("s1", { state: "running" }), BIG);
      await store.addEvent("s1", { at: T0, type: "ready", detail: {} });
      await store.addEvent("s1", { at: "2026-01-01T00:00:01.000Z", type: "ended", detail: {} });
      const end = {
        state: "killed" as const,
        endedAt: "2026-01-01T00:00:02.000Z",
        endReason: "x",
        endedBy: "k1",
      };
      assert.equal(await store.endSandbox("s1", end, usageRec("s1", { endedAt: end.endedAt })), true);
      const types = async (id: string) => (await store.listDeliveries(id, 100)).map((d) => d.type).sort();
      assert.deepEqual(await types("all"), ["sandbox.ended", "sandbox.ready", "usage.final"]);
      assert.deepEqual(await types("sandbox"), ["sandbox.ended", "sandbox.ready"]);
      assert.deepEqual(await types("ended"), ["sandbox.ended", "usage.final"]);
      assert.deepEqual(await types("other"), [], "another tenant's webhook gets nothing");
      const ds = await store.listDeliveries("all", 100);
      const seqs = (await store.listTenantEvents({ tenantId: "t1", afterSeq: 0, limit: 10 })).map(
        (e) => e.seq,
      );
      for (const d of ds) {
        assert.equal(d.tenantId, "t1");
        assert.equal(d.sandboxId, "s1");
        assert.equal(d.attempts, 0);
        assert.equal(d.deliveredAt, null);
        if (d.type === "usage.final") {
          assert.equal(d.eventKey, "usage_s1");
          assert.equal(d.eventSeq, null);
        } else {
          assert.ok(d.eventSeq !== null && seqs.includes(d.eventSeq));
          assert.equal(d.eventKey, `evt_${d.eventSeq}`);
        }
      }
      // Newest first.
      assert.equal(ds[0]?.type, "usage.final");
      assert.equal((await store.listDeliveries("all", 1)).length, 1);
    });

    test("webhook deliveries: claims are exclusive until they lapse; only the holder records; retries wait their time", async (t) => {
      const { store, another } = await factory.fresh(t);
      const other = await another();
      await withTenant(store, "t1");
      await store.createWebhook({
        id: "w1",
        tenantId: "t1",
        url: "https://example.com/",
        secret: "whsec_x",
        events: ["*"],
        description: "",
        createdAt: T0,
        createdByKey: null,
        disabledAt: null,
      });
      await store.insertSandboxWithinQuota(sandboxRec("s1", { state: "running" }), BIG);
      for (let i = 0; i < 30; i++) await store.addEvent("s1", { at: T0, type: "state", detail: { i } });
      const now = "2026-01-01T00:01:00.000Z";
      // Two replicas race for them: every delivery goes to exactly one.
      const [a, b] = await Promise.all([
        store.claimDeliveries("A", now, 10_000, 20),
        other.claimDeliveries("B", now, 10_000, 20),
      ]);
      const ids = [...a, ...b].map((d) => d.id);
      assert.equal(ids.length, 30);
      assert.equal(new Set(ids).size, 30);
      assert.deepEqual(await store.claimDeliveries("C", now, 10_000, 100), [], "all are held");
      const [first, second] = a.length ? [a[0]!, a.length > 1 ? a[1]! : b[0]!] : [b[0]!, b[1]!];
      const holderOf = (id: string) => (a.some((d) => d.id === id) ? "A" : "B");
      // Only the holder records an outcome.
      assert.equal(await store.finishDelivery(first.id, "C", { ok: true, at: now }), false);
      assert.equal(await store.finishDelivery(first.id, holderOf(first.id), { ok: true, at: now }), true);
      assert.equal(
        await store.finishDelivery(first.id, holderOf(first.id), { ok: true, at: now }),
        false,
        "delivered is final",
      );
      // A failure schedules the next attempt; not due before it.
      const retryAt = "2026-01-01T00:05:00.000Z";
      assert.equal(
        await store.finishDelivery(second.id, holderOf(second.id), {
          ok: false,
          error: "HTTP 503",
          nextAttemptAt: retryAt,
        }),
        true,
      );
      // After the claims lapse, the rest are claimable again; the retried one only at its time.
      const lapsed = "2026-01-01T00:01:11.000Z";
      const again = await store.claimDeliveries("C", lapsed, 10_000, 100);
      assert.equal(again.length, 28);
      assert.ok(!again.some((d) => d.id === first.id || d.id === second.id));
      const due = await store.claimDeliveries("D", retryAt, 1_000, 100);
      const retried = due.find((d) => d.id === second.id);
      assert.ok(retried, "the retried delivery is due at its time");
      assert.equal(retried.attempts, 1);
      assert.equal(retried.lastError, "HTTP 503");
      assert.equal(
        await store.finishDelivery(second.id, "D", { ok: false, error: "gone", gaveUpAt: retryAt }),
        true,
      );
      const [rec] = (await store.listDeliveries("w1", 100)).filter((d) => d.id === second.id);
      assert.equal(rec?.gaveUpAt, retryAt);
      assert.equal(rec?.attempts, 2);
      assert.equal((await store.listDeliveries("w1", 100)).find((d) => d.id === first.id)?.deliveredAt, now);
    });

    test("usage: list by tenant and sandbox, newest first; groups by tenant, template, root and metadata within a time range", async (t) => {
      const { store } = await factory.fresh(t);
      const at = (s: number) => new Date(Date.parse(T0) + s * 1000).toISOString();
      await store.putInterimUsage(
        usageRec("a", {
          tenantId: "t1",
          template: "py",
          createdAt: at(1),
          cpuSeconds: 1.0004,
          lifetimeSeconds: 10,
          memoryGibSeconds: 0.5,
          memoryPeakMib: 100,
          metadata: { team: "x" },
          traffic: { ...NO_TRAFFIC, internet: { tx: 10, rx: 20 } },
        }),
      );
      await store.putInterimUsage(
        usageRec("b", {
          tenantId: "t1",
          template: "base",
          createdAt: at(2),
          cpuSeconds: 2,
          lifetimeSeconds: 20,
          memoryGibSeconds: 1,
          memoryPeakMib: 300,
          rootId: "a",
          parentId: "a",
          metadata: { team: "y" },
          traffic: { ...NO_TRAFFIC, internet: { tx: 1, rx: 2 }, private: { tx: 5, rx: 6 } },
        }),
      );
      await store.putInterimUsage(
        usageRec("c", {
          tenantId: "t2",
          template: "py",
          createdAt: at(3),
          cpuSeconds: 4,
          lifetimeSeconds: 40,
          memoryGibSeconds: 2,
          memoryPeakMib: 200,
          metadata: { team: "x" },
        }),
      );
      assert.deepEqual(
        (await store.listUsage({ tenantId: null, limit: 10 })).map((u) => u.sandboxId),
        ["c", "b", "a"],
      );
      assert.deepEqual(
        (await store.listUsage({ tenantId: "t1", limit: 1 })).map((u) => u.sandboxId),
        ["b"],
      );
      assert.deepEqual(
        (await store.listUsage({ tenantId: "t1", sandboxId: "c", limit: 10 })).map((u) => u.sandboxId),
        [],
        "another tenant's record is not listed",
      );
      assert.deepEqual(
        (await store.listUsage({ tenantId: null, sandboxId: "c", limit: 10 })).map((u) => u.sandboxId),
        ["c"],
      );
      const byTenant = await store.usageGroups({ tenantId: null, groupBy: "tenant" });
      assert.deepEqual(byTenant, [
        {
          key: "t1",
          sandboxes: 2,
          lifetimeSeconds: 30,
          cpuSeconds: 3,
          memoryGibSeconds: 1.5,
          peakMemoryMib: 300,
          traffic: { ...NO_TRAFFIC, internet: { tx: 11, rx: 22 }, private: { tx: 5, rx: 6 } },
        },
        {
          key: "t2",
          sandboxes: 1,
          lifetimeSeconds: 40,
          cpuSeconds: 4,
          memoryGibSeconds: 2,
          peakMemoryMib: 200,
          traffic: NO_TRAFFIC,
        },
      ]);
      assert.deepEqual(
        (await store.usageGroups({ tenantId: null, groupBy: "template" })).map((g) => [g.key, g.sandboxes]),
        [
          ["base", 1],
          ["py", 2],
        ],
      );
      assert.deepEqual(
        (await store.usageGroups({ tenantId: "t1", groupBy: "root" })).map((g) => [
          g.key,
          g.sandboxes,
          g.cpuSeconds,
        ]),
        [["a", 2, 3]],
      );
      assert.deepEqual(
        (
          await store.usageGroups({ tenantId: null, groupBy: { metadata: "team" }, from: at(2), to: at(3) })
        ).map((g) => [g.key, g.sandboxes]),
        [["y", 1]],
        "from is inclusive, to exclusive",
      );
      assert.deepEqual(
        (await store.usageGroups({ tenantId: null, groupBy: { metadata: "team" } })).map((g) => [
          g.key,
          g.sandboxes,
        ]),
        [
          ["x", 2],
          ["y", 1],
        ],
      );
      assert.deepEqual(await store.usageGroups({ tenantId: "t9", groupBy: "tenant" }), []);
    });

    test("usage groups order keys bytewise, absent first, like SQLite's ORDER BY", async (t) => {
      const { store } = await factory.fresh(t);
      const keys = ["b", "B", "a", "\u00e9", "\u{1f600}", "\uffff", "a b", ""];
      for (const [i, k] of keys.entries()) {
        await store.putInterimUsage(usageRec(`s${i}`, { metadata: { k } }));
      }
      await store.putInterimUsage(usageRec("none"));
      const got = (await store.usageGroups({ tenantId: null, groupBy: { metadata: "k" } })).map((g) => g.key);
      const bytewise = [...keys].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
      assert.deepEqual(got, [null, ...bytewise]);
    });

    test("leases: acquire when free, renew when held, refuse others until expiry, release", async (t) => {
      const { store } = await factory.fresh(t);
      assert.equal(await store.getLease("reaper"), undefined);
      const a = await store.tryLease("reaper", "A", 60_000);
      assert.equal(a.held, true);
      assert.equal(a.holder, "A");
      assert.ok(Date.parse(a.expiresAt) > Date.now() + 30_000);
      const b = await store.tryLease("reaper", "B", 60_000);
      assert.deepEqual(b, { held: false, holder: "A", expiresAt: a.expiresAt });
      assert.deepEqual(await store.getLease("reaper"), { holder: "A", expiresAt: a.expiresAt });
      assert.equal((await store.tryLease("sampler", "B", 60_000)).held, true, "leases are independent");
      const renewed = await store.tryLease("reaper", "A", 120_000);
      assert.equal(renewed.held, true);
      assert.ok(Date.parse(renewed.expiresAt) > Date.parse(a.expiresAt), "a renewal moves the expiry");
      await store.releaseLease("reaper", "B");
      assert.equal((await store.getLease("reaper"))?.holder, "A", "only the holder releases");
      await store.releaseLease("reaper", "A");
      assert.equal(await store.getLease("reaper"), undefined);
      assert.equal((await store.tryLease("reaper", "B", 60_000)).held, true);
      await assert.rejects(store.tryLease("x", "A", 0), /ttlMs/);
      await assert.rejects(store.tryLease("x", "A", 1.5), /ttlMs/);
    });

    test("leases: an expired lease goes to the next caller", async (t) => {
      const { store } = await factory.fresh(t);
      const a = await store.tryLease("reaper", "A", 50);
      assert.equal(a.held, true);
      // Wait past the expiry (by the store's clock, which may be another machine's).
      while (Date.now() <= Date.parse(a.expiresAt) + 20) await new Promise((r) => setTimeout(r, 20));
      for (;;) {
        const b = await store.tryLease("reaper", "B", 60_000);
        if (b.held) break;
        assert.equal(b.holder, "A");
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal((await store.getLease("reaper"))?.holder, "B");
      assert.equal(
        (await store.tryLease("reaper", "A", 60_000)).held,
        false,
        "the old holder does not get it back",
      );
    });

    test("nodes: upsert replaces, update from states, list by id, remove", async (t) => {
      const { store } = await factory.fresh(t);
      assert.deepEqual(await store.listNodes(), []);
      const n2 = nodeRec("n2", { report: { vcpus: 2, warm: { base: 3 }, note: "NUL\u0000" } });
      await store.upsertNode(n2);
      await store.upsertNode(nodeRec("n1"));
      assert.deepEqual(await store.getNode("n2"), n2);
      assert.deepEqual(
        (await store.listNodes()).map((n) => n.id),
        ["n1", "n2"],
      );
      const moved = nodeRec("n2", { address: "10.0.0.9:7000", secret: "s2", leaseUntil: T0, lastSeenAt: T0 });
      await store.upsertNode(moved);
      assert.deepEqual(await store.getNode("n2"), moved, "every field replaced");
      assert.equal(await store.updateNode("n2", { state: "draining" }, ["lost"]), false);
      assert.equal((await store.getNode("n2"))?.state, "active");
      assert.equal(await store.updateNode("n2", { state: "draining", report: [1, 2] }, ["active"]), true);
      assert.deepEqual(await store.getNode("n2"), { ...moved, state: "draining", report: [1, 2] });
      assert.equal(
        await store.updateNode("n2", { lastSeenAt: "2026-02-01T00:00:00.000Z" }),
        true,
        "any state",
      );
      assert.equal(
        await store.updateNode("n2", {}, ["draining"]),
        true,
        "an empty patch: whether it matches",
      );
      assert.equal(await store.updateNode("n2", {}, ["active"]), false);
      assert.equal(
        await store.updateNode("n2", { report: null }, []),
        false,
        "no state matches an empty list",
      );
      assert.equal(await store.updateNode("n9", { state: "lost" }), false);
      assert.equal(await store.removeNode("n2"), true);
      assert.equal(await store.removeNode("n2"), false);
      assert.equal(await store.getNode("n2"), undefined);
    });

    test("join tokens: valid once, before expiry only", async (t) => {
      const { store } = await factory.fresh(t);
      await store.createJoinToken({
        hash: "j1",
        createdAt: T0,
        expiresAt: "2026-01-01T01:00:00.000Z",
        createdByKey: "k1",
      });
      await store.createJoinToken({
        hash: "j2",
        createdAt: T0,
        expiresAt: "2026-01-01T01:00:00.000Z",
        createdByKey: null,
      });
      assert.equal(
        await store.useJoinToken("j1", "2026-01-01T01:00:00.000Z"),
        false,
        "expired at its expiry",
      );
      assert.equal(await store.useJoinToken("j1", "2026-01-01T00:30:00.000Z"), true);
      assert.equal(await store.useJoinToken("j1", "2026-01-01T00:31:00.000Z"), false, "single use");
      assert.equal(await store.useJoinToken("nope", T0), false);
      assert.equal(await store.useJoinToken("j2", T0), true);
      await assert.rejects(
        store.createJoinToken({ hash: "j1", createdAt: T0, expiresAt: T0, createdByKey: null }),
        "hashes are unique",
      );
    });

    test("lookups by a string no row can have (NUL) find nothing instead of failing", async (t) => {
      const { store } = await factory.fresh(t);
      await withTenant(store, "t1");
      const bad = "s1\u0000";
      assert.equal(await store.getTenant(bad), undefined);
      assert.equal(await store.getKey(bad), undefined);
      assert.equal(await store.findKeyByHash(bad), undefined);
      assert.deepEqual(await store.listKeys(bad), []);
      assert.deepEqual(await store.revokeKeyTree(bad, T0), []);
      assert.equal(await store.getTemplateOwner(bad), undefined);
      assert.equal(await store.getSandbox(bad), undefined);
      assert.equal(await store.findSandboxByTokenHash(bad), undefined);
      assert.equal(await store.findSandboxByEnvdTokenHash(bad), undefined);
      assert.deepEqual(await store.listSandboxes({ tenantId: bad, limit: 5 }), {
        sandboxes: [],
        nextCursor: null,
      });
      assert.deepEqual(await store.listLiveSandboxesOnNode(bad), []);
      assert.equal(await store.updateSandbox(bad, { state: "running" }), false);
      assert.equal(
        await store.endSandbox(
          bad,
          { state: "killed", endedAt: T0, endReason: "x", endedBy: "x" },
          usageRec(bad),
        ),
        false,
      );
      assert.deepEqual(await store.listEvents(bad), []);
      assert.equal(await store.getUsage(bad), undefined);
      assert.deepEqual(await store.listUsage({ tenantId: bad, limit: 5 }), []);
      assert.deepEqual(await store.pausedUsage(bad), { sandboxes: 0, memoryMib: 0 });
      assert.equal(await store.getNode(bad), undefined);
      assert.equal(await store.updateNode(bad, { state: "lost" }), false);
      assert.equal(await store.removeNode(bad), false);
      assert.equal(await store.useJoinToken(bad, T0), false);
      assert.equal(await store.getLease(bad), undefined);
    });

    describe("two stores on one database (replicas), racing", () => {
      test("quota: concurrent inserts for one tenant from both never pass the limit", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        await withTenant(store, "t1");
        const l: TenantLimits = { ...DEFAULT_LIMITS, maxSandboxes: 5 };
        for (let round = 0; round < 3; round++) {
          const results = await Promise.all(
            Array.from({ length: 16 }, (_, i) =>
              (i % 2 ? other : store).insertSandboxWithinQuota(sandboxRec(`r${round}-${i}`), l),
            ),
          );
          const ok = results.filter((r) => r.ok).length;
          assert.equal(ok, 5, `round ${round}: exactly the limit passes`);
          assert.ok(results.every((r) => r.ok || r.limit === "maxSandboxes"));
          assert.equal((await store.listLiveSandboxes()).length, 5);
          for (const s of await store.listLiveSandboxes()) {
            await store.endSandbox(
              s.id,
              { state: "killed", endedAt: T0, endReason: "x", endedBy: "x" },
              usageRec(s.id),
            );
          }
        }
      });

      test("node budget: concurrent inserts of different tenants on one node never pass it", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        for (let i = 0; i < 4; i++) await withTenant(store, `t${i}`);
        const node = { nodeId: "n1", vcpus: 3, memoryMib: 1_000_000, overheadMib: 0 };
        const results = await Promise.all(
          Array.from({ length: 16 }, (_, i) =>
            (i % 2 ? other : store).insertSandboxWithinQuota(
              sandboxRec(`s${i}`, { tenantId: `t${i % 4}` }),
              BIG,
              0,
              node,
            ),
          ),
        );
        assert.equal(results.filter((r) => r.ok).length, 3);
        assert.ok(results.every((r) => r.ok || r.limit === "nodeVcpus"));
      });

      test("keys: concurrent mints never pass maxKeys", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        await withTenant(store, "t1");
        await store.createKey(keyRec("root"));
        const results = await Promise.all(
          Array.from({ length: 16 }, (_, i) =>
            (i % 2 ? other : store).createKeyWithinLimit(keyRec(`k${i}`, { createdByKey: "root" }), 4),
          ),
        );
        assert.equal(results.filter((r) => r.ok).length, 3, "root holds one of the 4");
        assert.equal((await store.listKeys("t1")).length, 4);
      });

      test("keys: no key minted while its minter's tree is being revoked survives it", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        await withTenant(store, "t1");
        for (let round = 0; round < 4; round++) {
          await store.createKey(keyRec(`r${round}`));
          await store.createKey(keyRec(`r${round}-c`, { createdByKey: `r${round}` }));
          const mints = Array.from({ length: 12 }, (_, i) =>
            (i % 2 ? store : other).createKeyWithinLimit(
              keyRec(`r${round}-m${i}`, { createdByKey: i % 3 ? `r${round}-c` : `r${round}` }),
              1000,
            ),
          );
          const revoke = other.revokeKeyTree(`r${round}`, T0);
          await Promise.all([...mints, revoke]);
          const keys = await store.listKeys("t1");
          const live = keys.filter((k) => k.id.startsWith(`r${round}`) && k.revokedAt === null);
          assert.deepEqual(live, [], `round ${round}: every key of the tree is revoked`);
        }
      });

      test("claimTemplate: one of many concurrent claims wins, every caller sees the winner", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        await withTenant(store, "t1");
        await withTenant(store, "t2");
        const results = await Promise.all(
          Array.from({ length: 12 }, (_, i) =>
            (i % 2 ? other : store).claimTemplate({
              name: "shared",
              tenantId: i % 2 ? "t2" : "t1",
              createdAt: T0,
              createdByKey: `k${i}`,
            }),
          ),
        );
        assert.equal(results.filter((r) => r.created).length, 1);
        const winner = results.find((r) => r.created)!.owner;
        for (const r of results) assert.deepEqual(r.owner, winner);
        assert.deepEqual(await other.getTemplateOwner("shared"), winner);
      });

      test("endSandbox: concurrent ends from both, one wins and its final record is the one kept", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        await withTenant(store, "t1");
        for (let round = 0; round < 5; round++) {
          const id = `s${round}`;
          await store.insertSandboxWithinQuota(sandboxRec(id, { state: "running" }), BIG);
          const results = await Promise.all(
            Array.from({ length: 8 }, (_, i) =>
              (i % 2 ? other : store).endSandbox(
                id,
                { state: "killed", endedAt: T0, endReason: `r${i}`, endedBy: `e${i}` },
                usageRec(id, { cpuSeconds: i, final: true, endReason: `r${i}` }),
              ),
            ),
          );
          assert.equal(results.filter(Boolean).length, 1, `round ${round}`);
          const winner = results.indexOf(true);
          assert.equal((await other.getSandbox(id))?.endedBy, `e${winner}`);
          const u = await store.getUsage(id);
          assert.equal(u?.cpuSeconds, winner);
          assert.equal(u?.final, true);
        }
      });

      test("join tokens and leases: of concurrent callers exactly one wins", async (t) => {
        const { store, another } = await factory.fresh(t);
        const other = await another();
        await store.createJoinToken({
          hash: "j",
          createdAt: T0,
          expiresAt: "2999-01-01T00:00:00.000Z",
          createdByKey: null,
        });
        const uses = await Promise.all(
          Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).useJoinToken("j", iso())),
        );
        assert.equal(uses.filter(Boolean).length, 1);
        const leases = await Promise.all(
          Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).tryLease("reaper", `h${i}`, 60_000)),
        );
        const held = leases.filter((l) => l.held);
        assert.equal(held.length, 1);
        assert.equal((await other.getLease("reaper"))?.holder, held[0]!.holder);
      });
    });
  });
}
