// API fuzzing against a real control plane (a child process) with real
// microVMs: the same generator as src/api/fuzz.test.ts (every route of
// /openapi.json and of the E2B table), fewer requests, over HTTP. Commands
// and files reach a real guest agent. Promise: no 5xx but the documented
// 503, answers as documented, and the server process is still there and
// healthy afterwards; nothing is left on the host.
// Node admission bounds what the fuzzer can boot: the child may commit 4
// vCPUs per host CPU and a quarter of the host's memory.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import { E2B_ROUTES } from "../src/e2b/routes.ts";
import { SqliteStore } from "../src/store/sqlite-store.ts";
import { ApiClient } from "../src/testing/api-client.ts";
import {
  checkOutcome,
  fuzzContext,
  operationsFromE2b,
  operationsFromOpenApi,
  requestArbitrary,
  SchemaArbitraries,
  sendFuzzRequest,
} from "../src/testing/openapi-fuzz.ts";
import { OpenApiValidator } from "../src/testing/openapi-validator.ts";
import { ADMIN_KEY, DB_FILE, orphans, pausedDirExists, ServerProcess, skipUnlessRoot } from "./helpers.ts";

const SEED = Number(process.env["FIREBREAK_FUZZ_SEED"] ?? 20_260_412);
const RUNS = Number(process.env["FIREBREAK_FUZZ_RUNS"] ?? 300);

describe("API fuzzing (real server, real VMs)", { skip: skipUnlessRoot }, () => {
  const proc = new ServerProcess({
    FIREBREAK_VCPU_OVERCOMMIT: "4",
    FIREBREAK_MEMORY_OVERCOMMIT: "0.25",
  });
  let admin: ApiClient;
  const ids: string[] = [];
  const keys: Record<string, string> = {};

  before(async () => {
    await proc.start();
    admin = await new ApiClient(proc.url, fetch, ADMIN_KEY).init();
    const limits = {
      requestsPerMinute: 1_000_000,
      maxSandboxes: 4,
      maxVcpus: 4,
      maxMemoryMib: 2048,
      maxPausedMib: 2048,
    };
    for (const who of ["a", "b"]) {
      const t = await admin.post("/v1/tenants", { name: `fuzz-${who}-${Date.now()}`, limits });
      assert.equal(t.status, 201, t.text);
      const k = await admin.post("/v1/keys", {
        name: "fuzz",
        tenantId: t.json.id,
        scopes: ["sandboxes", "templates"],
      });
      keys[who] = k.json.key;
    }
    const revoked = await admin.withKey(keys["a"]).post("/v1/keys", { name: "revoked" });
    await admin.withKey(keys["a"]).delete(`/v1/keys/${revoked.json.id}`);
    keys["revoked"] = revoked.json.key;
    const a = admin.withKey(keys["a"]);
    for (let i = 0; i < 2; i++) {
      const made = await a.post("/v1/sandboxes", { timeoutMs: 600_000 });
      assert.equal(made.status, 201, made.text);
      ids.push(made.json.id);
    }
    assert.equal((await a.post(`/v1/sandboxes/${ids[1]}/pause`)).status, 200);
    const b = await admin.withKey(keys["b"]).post("/v1/sandboxes", { timeoutMs: 600_000 });
    assert.equal(b.status, 201, b.text);
    ids.push(b.json.id);
  });

  after(async () => {
    // Every sandbox of every tenant the fuzzer could act for, paused ones included.
    for (const key of [keys["a"], keys["b"], ADMIN_KEY]) {
      if (!key) continue;
      const c = admin.withKey(key);
      const live = await c.get("/v1/sandboxes?state=requested,starting,running,paused,stopping&limit=1000");
      for (const s of (live.json?.sandboxes ?? []) as { id: string }[])
        await c.delete(`/v1/sandboxes/${s.id}`);
    }
    await proc.stop();
    const store = new SqliteStore(DB_FILE);
    try {
      for (const s of await store.listLiveSandboxes()) {
        assert.fail(`sandbox ${s.id} is still ${s.state} after the run`);
      }
      for (const id of ids) {
        const n = (await store.getSandbox(id))?.nodeSandboxId;
        if (n) assert.ok(!pausedDirExists(n), `paused files of ${id} are left`);
      }
    } finally {
      store.close();
    }
    assert.deepEqual(await orphans(), []);
  });

  test(`${RUNS} seeded requests over HTTP: no 5xx but documented 503s; the server survives`, async (t) => {
    const doc = await (await fetch(`${proc.url}/openapi.json`)).json();
    const validator = new OpenApiValidator(doc);
    const ops = [...operationsFromOpenApi(doc), ...operationsFromE2b(E2B_ROUTES)];
    const ctx = fuzzContext({
      ids,
      keys: { caller: keys["a"]!, admin: ADMIN_KEY, other: keys["b"]!, revoked: keys["revoked"]! },
      templateNames: ["base", "nope"],
    });
    const over = (path: string, init: RequestInit) => fetch(`${proc.url}${path}`, init);
    let unsent = 0;
    const statuses = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(requestArbitrary(ops, new SchemaArbitraries(doc), ctx), async (r) => {
        // Templates and private services live in the shared test state dir, used by
        // every suite: not the fuzzer's to build, replace or delete here (the
        // in-process fuzzer covers those routes).
        if (r.method !== "GET" && /^\/v1\/(templates|services)\b/.test(r.url)) return;
        // A command that waits for input can stream until its timeout: bounded here.
        const o = await sendFuzzRequest(over, r, 60_000);
        if (!o) {
          unsent++;
          return;
        }
        statuses.set(o.status, (statuses.get(o.status) ?? 0) + 1);
        const made = o.json as { id?: string; sandboxID?: string } | undefined;
        if (o.status === 201 && (made?.id || made?.sandboxID)) ids.push((made.id ?? made.sandboxID)!);
        const problem = checkOutcome(o, r, validator);
        assert.equal(problem, undefined, `${r.method} ${r.url}\n-> ${problem}`);
        assert.equal(proc.child?.exitCode, null, "the server process is still running");
      }),
      { seed: SEED, numRuns: RUNS, endOnFailure: true },
    );
    t.diagnostic(`statuses: ${JSON.stringify([...statuses])}; not sendable or unanswered in 60 s: ${unsent}`);
    assert.equal(proc.child?.exitCode, null);
    assert.equal((await fetch(`${proc.url}/v1/health`)).status, 200);
    // It still does real work.
    const a = admin.withKey(keys["a"]);
    const sb = (await a.get(`/v1/sandboxes/${ids[0]}`)).json;
    if (sb.state === "running") {
      const run = await a.post(`/v1/sandboxes/${ids[0]}/commands`, { cmd: "echo alive" });
      assert.equal(run.status, 200, run.text);
    }
  });
});
