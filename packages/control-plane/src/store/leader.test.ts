// LeaseKeeper: one holder per lease among keepers sharing a store; hand-over
// on stop and on expiry; a holder that cannot renew, or whose renewal comes
// back late, stops believing it holds the lease by its own deadline.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { LeaseKeeper, newHolderId } from "./leader.ts";
import { SqliteStore } from "./sqlite-store.ts";
import type { Store } from "./store.ts";

function tmpStore(t: { after(fn: () => void): void }): SqliteStore {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-leader-"));
  const store = new SqliteStore(path.join(dir, "cp.db"));
  t.after(() => {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return store;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const NAMES = ["reaper", "sampler"];

test("of two keepers one holds each lease; stop() hands it over at the other's next try", async (t) => {
  const store = tmpStore(t);
  const changes: string[] = [];
  const a = new LeaseKeeper({
    store,
    names: NAMES,
    ttlMs: 60_000,
    holder: "A",
    onChange: (n, held) => changes.push(`A ${n} ${held}`),
  });
  const b = new LeaseKeeper({
    store,
    names: NAMES,
    ttlMs: 60_000,
    holder: "B",
    onChange: (n, held) => changes.push(`B ${n} ${held}`),
  });
  t.after(() => Promise.all([a.stop(), b.stop()]));
  await a.start();
  await b.start();
  assert.ok(a.isHolder("reaper") && a.isHolder("sampler"));
  assert.ok(!b.isHolder("reaper") && !b.isHolder("sampler"));
  assert.ok(!a.isHolder("other"), "a name it does not keep");
  assert.equal((await store.getLease("reaper"))?.holder, "A");
  await a.stop();
  assert.ok(!a.isHolder("reaper"));
  assert.equal(await store.getLease("reaper"), undefined, "released, not left to expire");
  await b.tick();
  assert.ok(b.isHolder("reaper") && b.isHolder("sampler"));
  assert.deepEqual(changes.sort(), [
    "A reaper false",
    "A reaper true",
    "A sampler false",
    "A sampler true",
    "B reaper true",
    "B sampler true",
  ]);
});

test("a holder that cannot reach the store stops holding by its own deadline; the other takes over after expiry", async (t) => {
  const store = tmpStore(t);
  let down = false;
  const errors: string[] = [];
  const flaky: Store = Object.create(store, {
    tryLease: {
      value: (...args: Parameters<Store["tryLease"]>) =>
        down ? Promise.reject(new Error("connection refused")) : store.tryLease(...args),
    },
  });
  const a = new LeaseKeeper({
    store: flaky,
    names: ["reaper"],
    ttlMs: 150,
    holder: "A",
    onError: (n, e) => errors.push(`${n}: ${(e as Error).message}`),
  });
  const b = new LeaseKeeper({ store, names: ["reaper"], ttlMs: 150, holder: "B" });
  t.after(() => Promise.all([a.stop(), b.stop()]));
  await a.tick();
  assert.ok(a.isHolder("reaper"));
  down = true;
  await a.tick();
  assert.deepEqual(errors, ["reaper: connection refused"]);
  const expiry = Date.parse((await store.getLease("reaper"))!.expiresAt);
  while (Date.now() <= expiry) await sleep(10);
  assert.equal(a.isHolder("reaper"), false, "A let go by the store's expiry");
  await b.tick();
  assert.ok(b.isHolder("reaper"));
  assert.ok(!a.isHolder("reaper"));
});

test("a renewal that comes back after the ttl is not believed", async (t) => {
  const store = tmpStore(t);
  const slow: Store = Object.create(store, {
    tryLease: {
      value: async (...args: Parameters<Store["tryLease"]>) => {
        const r = await store.tryLease(...args);
        await sleep(120); // the answer is late: the lease may already be someone else's
        return r;
      },
    },
  });
  const a = new LeaseKeeper({ store: slow, names: ["reaper"], ttlMs: 100, holder: "A" });
  t.after(() => a.stop());
  await a.tick();
  assert.equal((await store.getLease("reaper"))?.holder, "A", "the store did grant it");
  assert.equal(a.isHolder("reaper"), false);
});

test("start() keeps trying on its own: a lease freed later is taken", async (t) => {
  const store = tmpStore(t);
  await store.tryLease("reaper", "someone-else", 60_000);
  const a = new LeaseKeeper({ store, names: ["reaper"], ttlMs: 30, holder: "A" });
  t.after(() => a.stop());
  await a.start();
  assert.equal(a.isHolder("reaper"), false);
  await store.releaseLease("reaper", "someone-else");
  while (!a.isHolder("reaper")) await sleep(5);
  assert.equal((await store.getLease("reaper"))?.holder, "A");
});

test("bad ttl is refused; holder ids differ per keeper", () => {
  const store = {} as Store;
  assert.throws(() => new LeaseKeeper({ store, names: ["x"], ttlMs: 2 }), /whole number/);
  assert.throws(() => new LeaseKeeper({ store, names: ["x"], ttlMs: 10.5 }), /whole number/);
  assert.notEqual(newHolderId(), newHolderId());
  assert.match(newHolderId(), new RegExp(`/${process.pid}/`));
});
