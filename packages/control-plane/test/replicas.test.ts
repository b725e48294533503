// Several control-plane replicas on one PostgreSQL: two `startServer`
// processes (test/fixtures/replica.ts) sharing a private throwaway cluster and
// one node (SharedFakeNode: sandboxes in a directory both reach, like a node
// daemon that outlives any replica). Proves: both start together on a new
// database (one bootstraps at a time, no lock file); whatever one replica
// creates the other serves; a tenant's quota holds across both under
// concurrent creates; SIGKILL of the replica holding the reaper lease hands
// the lease to the other within the lease time, and only then is an expired
// sandbox reaped.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { PgStore } from "../src/store/pg-store.ts";
import { ApiClient } from "../src/testing/api-client.ts";
import { startPostgres, type TestPostgres } from "../src/testing/postgres.ts";

const FIXTURE = fileURLToPath(new URL("./fixtures/replica.ts", import.meta.url));
const LEASE_TTL_MS = 2_000;
const ADMIN_KEY = `fb_${randomBytes(32).toString("hex")}`;

interface Replica {
  name: string;
  child: ChildProcess;
  pid: number;
  url: string;
  admin: ApiClient;
  log: () => string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("control-plane replicas on one PostgreSQL", () => {
  let pgServer: TestPostgres;
  let dbUrl: string;
  let store: PgStore;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-replicas-"));
  const stateDir = path.join(dir, "state");
  const nodeDir = path.join(dir, "node");
  const replicas: Replica[] = [];

  function startReplica(name: string): Promise<Replica> {
    const child = spawn(process.execPath, [FIXTURE], {
      env: {
        ...process.env,
        FIREBREAK_DATABASE_URL: dbUrl,
        FIREBREAK_ADMIN_KEY: ADMIN_KEY,
        FIREBREAK_LEASE_TTL_MS: String(LEASE_TTL_MS),
        FB_TEST_STATE_DIR: stateDir,
        FB_TEST_NODE_DIR: nodeDir,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (b: Buffer) => {
      err = (err + b.toString()).slice(-20_000);
    });
    return new Promise((resolve, reject) => {
      let out = "";
      child.stdout!.on("data", async (b: Buffer) => {
        out += b.toString();
        if (!out.includes("\n")) return;
        try {
          const { url, pid } = JSON.parse(out.split("\n")[0]!) as { url: string; pid: number };
          const admin = await new ApiClient(url, fetch, ADMIN_KEY).init();
          const r: Replica = { name, child, pid, url, admin, log: () => err };
          replicas.push(r);
          resolve(r);
        } catch (e) {
          reject(e);
        }
      });
      child.once("exit", (code, sig) =>
        reject(new Error(`replica ${name} exited (${code ?? sig}):\n${err}`)),
      );
    });
  }

  before(async () => {
    pgServer = await startPostgres();
    dbUrl = await pgServer.createDatabase();
  });

  after(async () => {
    await Promise.all(
      replicas.map(async (r) => {
        if (r.child.exitCode !== null || r.child.signalCode !== null) return;
        const exited = new Promise((res) => r.child.once("exit", res));
        r.child.kill("SIGTERM");
        const timer = setTimeout(() => r.child.kill("SIGKILL"), 20_000);
        await exited;
        clearTimeout(timer);
      }),
    );
    await store?.close();
    await pgServer?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test("two replicas start together on a new database and share one state dir (no lock file)", async () => {
    const [a, b] = await Promise.all([startReplica("A"), startReplica("B")]);
    assert.ok(a && b);
    store = await PgStore.open(dbUrl);
    assert.equal(fs.existsSync(path.join(stateDir, "control-plane.db.lock")), false);
    assert.equal(fs.existsSync(path.join(stateDir, "control-plane.db")), false);
    // Bootstrapped once: one default tenant, the admin key registered once.
    assert.deepEqual(
      (await store.listTenants()).map((t) => t.id),
      ["default"],
    );
    assert.equal((await store.listKeys(null)).length, 1);
    // Each lease has one holder, one of the two.
    for (const name of ["reaper", "sampler"]) {
      const l = await store.getLease(name);
      assert.ok(l, name);
      assert.ok([a.pid, b.pid].includes(Number(l.holder.split("/")[1])), `${name}: ${l.holder}`);
    }
  });

  test("what one replica creates, the other serves: tenants, keys, sandboxes, events, kills", async () => {
    const [a, b] = replicas;
    const t = await a!.admin.post("/v1/tenants", { name: "shared" });
    assert.equal(t.status, 201, t.text);
    const k = await b!.admin.post("/v1/keys", { name: "k", tenantId: t.json.id, scopes: ["sandboxes"] });
    assert.equal(k.status, 201, k.text);
    const onA = a!.admin.withKey(k.json.key);
    const onB = b!.admin.withKey(k.json.key);
    const made = await onA.post("/v1/sandboxes", { template: "base", metadata: { via: "A" } });
    assert.equal(made.status, 201, made.text);
    const seen = await onB.get(`/v1/sandboxes/${made.json.id}`);
    assert.equal(seen.status, 200, seen.text);
    assert.equal(seen.json.state, "running");
    assert.deepEqual(seen.json.metadata, { via: "A" });
    assert.deepEqual(
      (await onB.get("/v1/sandboxes?metadata=via:A")).json.sandboxes.map((s: { id: string }) => s.id),
      [made.json.id],
    );
    assert.equal((await onB.delete(`/v1/sandboxes/${made.json.id}`)).status, 204);
    const gone = await onA.get(`/v1/sandboxes/${made.json.id}`);
    assert.equal(gone.json.state, "killed");
    const events = (await onA.get(`/v1/sandboxes/${made.json.id}/events`)).json.events as { type: string }[];
    assert.deepEqual(
      events.filter((e) => ["requested", "ready", "ended"].includes(e.type)).map((e) => e.type),
      ["requested", "ready", "ended"],
    );
  });

  test("a tenant's quota holds across both replicas under concurrent creates", async () => {
    const [a, b] = replicas;
    const t = await a!.admin.post("/v1/tenants", { name: "quota", limits: { maxSandboxes: 3 } });
    const k = await a!.admin.post("/v1/keys", { name: "k", tenantId: t.json.id, scopes: ["sandboxes"] });
    const clients = [a!.admin.withKey(k.json.key), b!.admin.withKey(k.json.key)];
    const results = await Promise.all(
      Array.from({ length: 12 }, (_, i) => clients[i % 2]!.post("/v1/sandboxes", { template: "base" })),
    );
    const statuses = results.map((r) => r.status).sort();
    assert.deepEqual(statuses, [201, 201, 201, 429, 429, 429, 429, 429, 429, 429, 429, 429], statuses.join());
    for (const r of results.filter((x) => x.status === 429))
      assert.equal(r.json.error.code, "QUOTA_EXCEEDED");
    assert.equal((await clients[1]!.get("/v1/sandboxes?state=running")).json.sandboxes.length, 3);
  });

  test("SIGKILL of the reaper lease's holder: the other replica takes the lease within the lease time and reaps", async () => {
    const lease = await store.getLease("reaper");
    const holder = replicas.find((r) => r.pid === Number(lease!.holder.split("/")[1]))!;
    const survivor = replicas.find((r) => r !== holder)!;
    const t = await survivor.admin.post("/v1/tenants", { name: "reaped" });
    const k = await survivor.admin.post("/v1/keys", {
      name: "k",
      tenantId: t.json.id,
      scopes: ["sandboxes"],
    });
    const api = survivor.admin.withKey(k.json.key);
    // The shortest timeout the API takes: it expires before the dead holder's lease does.
    const made = await api.post("/v1/sandboxes", { template: "base", timeoutMs: 1_000 });
    assert.equal(made.status, 201, made.text);

    const last = await store.getLease("reaper"); // the holder's last renewal, as the store has it
    const exited = new Promise((r) => holder.child.once("exit", r));
    holder.child.kill("SIGKILL");
    const killedAt = Date.now();
    await exited;

    let takenAt = 0;
    for (;;) {
      const now = await store.getLease("reaper");
      if (now && Number(now.holder.split("/")[1]) === survivor.pid) {
        takenAt = Date.now();
        break;
      }
      assert.ok(Date.now() - killedAt < 60_000, `no takeover after 60 s:\n${survivor.log()}`);
      await sleep(25);
    }
    const deadExpiry = Date.parse(last!.expiresAt);
    // Taken at the survivor's first try after the dead holder's lease ran out
    // (tries come every ttl/3); 1 s of slack for a loaded machine.
    assert.ok(
      takenAt <= deadExpiry + LEASE_TTL_MS / 3 + 1_000,
      `taken ${takenAt - deadExpiry} ms after the dead holder's lease expired`,
    );
    assert.ok(
      takenAt - killedAt <= LEASE_TTL_MS + LEASE_TTL_MS / 3 + 1_000,
      `taken ${takenAt - killedAt} ms after the kill`,
    );

    let rec: { state: string; endedAt: string; endedBy: string; endReason: string };
    for (;;) {
      rec = (await api.get(`/v1/sandboxes/${made.json.id}`)).json;
      if (rec.state === "killed") break;
      assert.ok(Date.now() - killedAt < 60_000, `not reaped after 60 s:\n${survivor.log()}`);
      await sleep(50);
    }
    assert.equal(rec.endReason, "timeout");
    // Only the lease's holder reaps: the sandbox was already expired, but the
    // survivor ended it only once it held the lease.
    assert.ok(
      Date.parse(rec.endedAt) >= deadExpiry,
      `reaped at ${rec.endedAt}, before the dead holder's lease ran out at ${last!.expiresAt}`,
    );
    const ended = await store.getSandbox(made.json.id);
    assert.equal(ended?.endedBy, "reaper");
    const usage = await store.getUsage(made.json.id);
    assert.equal(usage?.final, true);
    process.stdout.write(
      `# reaper lease takeover: ${takenAt - killedAt} ms after SIGKILL, ${takenAt - deadExpiry} ms after the dead lease expired (ttl ${LEASE_TTL_MS} ms)\n`,
    );
  });
});
