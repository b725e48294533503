// Node admission (committed vCPUs and memory against the host, over every
// tenant), the paused-disk quota and the paused retention, over the fake node.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { inProcess } from "../testing/in-process.ts";

async function waitFor(what: string, fn: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A node that may commit 8 vCPUs and 2048 MiB: four default sandboxes (256 MiB + 256 MiB overhead each). */
async function smallNode() {
  const env = await inProcess({ vcpuOvercommit: 8, memoryOvercommit: 1, sandboxOverheadMib: 256 });
  env.node.hostCapacity = { vcpus: 1, memoryMib: 2048 };
  await env.nodes.poll();
  return env;
}

describe("node admission", () => {
  test("creates beyond capacity x overcommit answer 503 CAPACITY_EXHAUSTED with Retry-After, whatever the tenant", async (t) => {
    const env = await smallNode();
    t.after(() => env.close());
    const a = await env.tenant();
    const b = await env.tenant();
    for (const who of [a, a, b, b]) assert.equal((await who.api.post("/v1/sandboxes", {})).status, 201);
    for (const who of [a, b]) {
      const r = await who.api.post("/v1/sandboxes", {});
      assert.equal(r.status, 503);
      assert.equal(r.json.error.code, "CAPACITY_EXHAUSTED");
      assert.equal(r.headers.get("retry-after"), "10");
      assert.match(r.json.error.message, /node fake is full: 2048 MiB committed of 2048 MiB/);
    }
    // The E2B API answers the same 503, in E2B's shape.
    const e2b = await env.app.request("/v2/sandboxes", {
      method: "POST",
      headers: { "x-api-key": a.key.replace(/^fb_/, "e2b_"), "content-type": "application/json" },
      body: JSON.stringify({ templateID: "base" }),
    });
    assert.equal(e2b.status, 503);
    assert.equal(((await e2b.json()) as { code: number }).code, 503);
    // Nothing was recorded for the refused creates; a kill makes room.
    assert.equal((await env.store.listSandboxes({ tenantId: a.id, limit: 100 })).sandboxes.length, 2);
    assert.equal(env.node.sandboxes.size, 4);
    const [first] = (await a.api.get("/v1/sandboxes")).json.sandboxes;
    assert.equal((await a.api.delete(`/v1/sandboxes/${first.id}`)).status, 204);
    assert.equal((await b.api.post("/v1/sandboxes", {})).status, 201);
  });

  test("vCPUs are committed too; a tenant limit answers 429 before the node's 503", async (t) => {
    const env = await smallNode();
    t.after(() => env.close());
    const a = await env.tenant();
    assert.equal((await a.api.post("/v1/sandboxes", { vcpus: 5, memoryMib: 128 })).status, 201);
    const cpu = await a.api.post("/v1/sandboxes", { vcpus: 4, memoryMib: 128 });
    assert.equal(cpu.status, 503);
    assert.match(cpu.json.error.message, /5 vCPUs committed of 8/);
    const limited = await env.tenant({ maxVcpus: 1 });
    const q = await limited.api.post("/v1/sandboxes", { vcpus: 2, memoryMib: 128 });
    assert.equal(q.status, 429);
    assert.equal(q.json.error.code, "QUOTA_EXCEEDED");
  });

  test("concurrent creates cannot overcommit the node", async (t) => {
    const env = await smallNode();
    t.after(() => env.close());
    env.node.createDelayMs = 20;
    const tenants = [await env.tenant(), await env.tenant(), await env.tenant()];
    const rs = await Promise.all(
      Array.from({ length: 9 }, (_, i) => tenants[i % 3]!.api.post("/v1/sandboxes", {})),
    );
    assert.deepEqual(rs.map((r) => r.status).sort(), [201, 201, 201, 201, 503, 503, 503, 503, 503]);
  });

  test("resume and fork are admitted like creates; a refused resume leaves the sandbox paused", async (t) => {
    const env = await smallNode();
    t.after(() => env.close());
    const a = await env.tenant();
    const paused = (await a.api.post("/v1/sandboxes", {})).json;
    assert.equal((await a.api.post(`/v1/sandboxes/${paused.id}/pause`)).status, 200);
    const running = [];
    for (let i = 0; i < 4; i++) running.push((await a.api.post("/v1/sandboxes", {})).json);
    const resume = await a.api.post(`/v1/sandboxes/${paused.id}/resume`);
    assert.equal(resume.status, 503);
    assert.equal((await a.api.get(`/v1/sandboxes/${paused.id}`)).json.state, "paused");
    const fork = await a.api.post(`/v1/sandboxes/${running[0].id}/fork`, { count: 1 });
    assert.equal(fork.status, 503);
    assert.equal((await env.store.listSandboxes({ tenantId: a.id, limit: 100 })).sandboxes.length, 5);
    await a.api.delete(`/v1/sandboxes/${running[1].id}`);
    assert.equal((await a.api.post(`/v1/sandboxes/${paused.id}/resume`)).status, 200);
  });
});

describe("paused sandboxes", () => {
  test("paused sandboxes count against maxPausedMib (429); the refused one keeps running", async (t) => {
    const env = await inProcess();
    t.after(() => env.close());
    const a = await env.tenant({ maxPausedMib: 700 });
    const big = (await a.api.post("/v1/sandboxes", { memoryMib: 512 })).json;
    const small = (await a.api.post("/v1/sandboxes", { memoryMib: 256 })).json;
    assert.equal((await a.api.post(`/v1/sandboxes/${big.id}/pause`)).status, 200);
    const r = await a.api.post(`/v1/sandboxes/${small.id}/pause`);
    assert.equal(r.status, 429);
    assert.equal(r.json.error.code, "QUOTA_EXCEEDED");
    assert.match(r.json.error.message, /maxPausedMib is 700, 512 MiB paused/);
    assert.equal((await a.api.get(`/v1/sandboxes/${small.id}`)).json.state, "running");
    // Concurrent pauses cannot overrun it either.
    const c1 = (await a.api.post("/v1/sandboxes", { memoryMib: 128 })).json;
    const c2 = (await a.api.post("/v1/sandboxes", { memoryMib: 128 })).json;
    const both = await Promise.all([c1, c2].map((s) => a.api.post(`/v1/sandboxes/${s.id}/pause`)));
    assert.deepEqual(both.map((x) => x.status).sort(), [200, 429]);
    await a.api.delete(`/v1/sandboxes/${big.id}`);
    assert.equal((await a.api.post(`/v1/sandboxes/${small.id}/pause`)).status, 200);
  });

  test("the reaper kills a sandbox paused longer than the retention: final usage record, reason paused_retention", async (t) => {
    const env = await inProcess({ reaperIntervalMs: 20, pausedRetentionMs: 300 });
    env.sandboxes.start();
    t.after(() => env.close());
    const a = await env.tenant();
    const sb = (await a.api.post("/v1/sandboxes", { timeoutMs: 3_600_000 })).json;
    const running = (await a.api.post("/v1/sandboxes", { timeoutMs: 3_600_000 })).json;
    const paused = (await a.api.post(`/v1/sandboxes/${sb.id}/pause`)).json;
    assert.equal(paused.state, "paused");
    assert.ok((await env.store.getSandbox(sb.id))?.pausedAt);
    await waitFor(
      "the paused sandbox to be reaped",
      async () => (await env.store.getSandbox(sb.id))?.state === "killed",
    );
    const got = (await a.api.get(`/v1/sandboxes/${sb.id}`)).json;
    assert.equal(got.endReason, "paused_retention");
    assert.equal(got.endedBy, "reaper");
    const recs = (await a.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].final, true);
    assert.equal(recs[0].endReason, "paused_retention");
    assert.ok(![...env.node.sandboxes.values()].some((s) => s.state === "paused"), "the node dropped it");
    // A running sandbox is not touched by the paused retention.
    assert.equal((await a.api.get(`/v1/sandboxes/${running.id}`)).json.state, "running");
  });

  test("a resume clears the pause time: the retention counts from the latest pause", async (t) => {
    const env = await inProcess({ reaperIntervalMs: 20, pausedRetentionMs: 60_000 });
    env.sandboxes.start();
    t.after(() => env.close());
    const a = await env.tenant();
    const sb = (await a.api.post("/v1/sandboxes", {})).json;
    await a.api.post(`/v1/sandboxes/${sb.id}/pause`);
    const first = (await env.store.getSandbox(sb.id))?.pausedAt;
    await a.api.post(`/v1/sandboxes/${sb.id}/resume`);
    assert.equal((await env.store.getSandbox(sb.id))?.pausedAt, null);
    await new Promise((r) => setTimeout(r, 5));
    await a.api.post(`/v1/sandboxes/${sb.id}/pause`);
    const second = (await env.store.getSandbox(sb.id))?.pausedAt;
    assert.ok(first && second && second > first);
  });
});
