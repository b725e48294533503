// The API in-process over a fake node: auth, validation, tenant isolation,
// quotas, rate limits, scopes, lifecycle (reaper, crash, recovery) and the
// usage ledger. Every /v1 response is checked against /openapi.json.
import assert from "node:assert/strict";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { FirebreakError } from "@firebreak/node-agent";
import { ENVD_VERSION } from "@firebreak/protocol";
import { getRequestListener } from "@hono/node-server";
import pino from "pino";
import { StaticNodes } from "../node/directory.ts";
import { SandboxService } from "../sandboxes/service.ts";
import { FakeNode } from "../testing/fake-node.ts";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function count(env: Env, tenantId: string): Promise<number> {
  return (await env.store.listSandboxes({ tenantId, limit: 1000 })).sandboxes.length;
}

describe("auth and validation", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("missing, malformed, unknown and revoked keys answer 401 UNAUTHENTICATED", async () => {
    const a = await env.tenant({}, ["admin"]);
    for (const key of [undefined, "nope", `fb_${"0".repeat(64)}`]) {
      const r = await env.api.withKey(key).get("/v1/sandboxes");
      assert.equal(r.status, 401);
      assert.equal(r.json.error.code, "UNAUTHENTICATED");
      assert.ok(r.json.error.requestId);
      assert.equal(r.headers.get("x-request-id"), r.json.error.requestId);
    }
    const made = await a.api.post("/v1/keys", { name: "temp" });
    assert.equal(made.status, 201);
    assert.match(made.json.key, /^fb_[0-9a-f]{64}$/);
    const temp = env.api.withKey(made.json.key);
    assert.equal((await temp.get("/v1/sandboxes")).status, 200);
    // The same secret as e2b_<hex> (for E2B SDKs), also as X-API-Key.
    const alias = made.json.key.replace(/^fb_/, "e2b_");
    assert.equal(
      (await env.api.withKey(undefined).get("/v1/sandboxes", { headers: { "x-api-key": alias } })).status,
      200,
    );
    assert.equal((await a.api.delete(`/v1/keys/${made.json.id}`)).status, 204);
    const revoked = await temp.get("/v1/sandboxes");
    assert.equal(revoked.status, 401);
    assert.match(revoked.json.error.message, /revoked/);
    assert.equal((await a.api.delete(`/v1/keys/${made.json.id}`)).status, 404);
    const listed = await a.api.get("/v1/keys");
    assert.ok(listed.json.keys.every((k: Record<string, unknown>) => !("key" in k) && !("hash" in k)));
  });

  test("malformed JSON, wrong types, unknown fields, non-JSON and oversized bodies change nothing", async () => {
    const t = await env.tenant();
    const cases: [string, Record<string, unknown>, number, string][] = [
      [
        "malformed",
        { body: '{"template": "base",', headers: { "content-type": "application/json" } },
        400,
        "VALIDATION_FAILED",
      ],
      ["wrong type", { json: { vcpus: "2" } }, 400, "VALIDATION_FAILED"],
      ["out of range", { json: { memoryMib: 64 } }, 400, "VALIDATION_FAILED"],
      ["unknown field", { json: { template: "base", colour: "red" } }, 400, "VALIDATION_FAILED"],
      [
        "not JSON",
        { body: "template=base", headers: { "content-type": "text/plain" } },
        400,
        "VALIDATION_FAILED",
      ],
      ["array", { json: [1, 2] }, 400, "VALIDATION_FAILED"],
      [
        "oversized",
        { json: { metadata: { big: "x".repeat(100) }, envVars: { A: "y".repeat(1024 * 1024) } } },
        413,
        "PAYLOAD_TOO_LARGE",
      ],
      ["timeout above the maximum", { json: { timeoutMs: 25 * 3600_000 } }, 400, "VALIDATION_FAILED"],
    ];
    for (const [what, opts, status, code] of cases) {
      const r = await t.api.call("POST", "/v1/sandboxes", opts);
      assert.equal(r.status, status, `${what}: ${r.text}`);
      assert.equal(r.json.error.code, code, what);
    }
    const unknown = await t.api.post("/v1/sandboxes", { template: "base", colour: "red" });
    assert.match(unknown.json.error.message, /colour/);
    assert.equal(await count(env, t.id), 0);
    assert.equal((await env.store.listUsage({ tenantId: t.id, limit: 10 })).length, 0);
    assert.equal(env.node.sandboxes.size, 0);
  });

  test("unknown ids and routes answer 404; an unknown template TEMPLATE_NOT_FOUND", async () => {
    const t = await env.tenant();
    for (const [m, p] of [
      ["GET", "/v1/sandboxes/nope"],
      ["DELETE", "/v1/sandboxes/nope"],
      ["GET", "/v1/sandboxes/nope/events"],
      ["GET", "/v1/nothing-here"],
    ] as const) {
      const r = await t.api.call(m, p);
      assert.equal(r.status, 404, `${m} ${p}`);
      assert.equal(r.json.error.code, "NOT_FOUND");
    }
    const r = await t.api.post("/v1/sandboxes", { template: "nosuch" });
    assert.equal(r.status, 404);
    assert.equal(r.json.error.code, "TEMPLATE_NOT_FOUND");
    assert.equal(await count(env, t.id), 0);
  });

  test("scopes: a sandboxes key cannot create tenants, grant admin, or build templates (403 FORBIDDEN)", async () => {
    const t = await env.tenant();
    for (const [p, body] of [
      ["/v1/tenants", { name: "x" }],
      ["/v1/keys", { name: "x", scopes: ["admin"] }],
      ["/v1/templates", { name: "base" }],
    ] as const) {
      const r = await t.api.post(p, body);
      assert.equal(r.status, 403, p);
      assert.equal(r.json.error.code, "FORBIDDEN");
    }
  });

  test("the OpenAPI document lists every native route with auth (health excepted)", async () => {
    const doc = (await (await env.app.request("/openapi.json")).json()) as {
      paths: Record<string, Record<string, { security?: unknown }>>;
    };
    const paths = Object.keys(doc.paths);
    for (const p of [
      "/v1/sandboxes",
      "/v1/sandboxes/{id}/commands",
      "/v1/usage",
      "/v1/keys",
      "/v1/templates",
    ]) {
      assert.ok(paths.includes(p), p);
    }
    for (const [p, ops] of Object.entries(doc.paths)) {
      for (const [m, op] of Object.entries(ops)) {
        // Health is public; a node joins with a join token (its own bearer scheme).
        if (p !== "/v1/health") assert.ok(op.security, `${m} ${p} declares security`);
      }
    }
  });
});

describe("tenants, quotas and rate limits", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("another tenant's sandbox id answers 404 on every sandbox endpoint, and nothing changes", async () => {
    const a = await env.tenant();
    const b = await env.tenant();
    const sb = (await a.api.post("/v1/sandboxes", { metadata: { owner: "a" } })).json;
    const before = await env.store.getSandbox(sb.id);
    const id = sb.id;
    const calls: [string, string, Record<string, unknown>?][] = [
      ["GET", `/v1/sandboxes/${id}`],
      ["DELETE", `/v1/sandboxes/${id}`],
      ["POST", `/v1/sandboxes/${id}/timeout`, { json: { timeoutMs: 5000 } }],
      ["POST", `/v1/sandboxes/${id}/pause`],
      ["POST", `/v1/sandboxes/${id}/resume`],
      ["POST", `/v1/sandboxes/${id}/fork`, { json: { count: 1 } }],
      ["GET", `/v1/sandboxes/${id}/events`],
      ["POST", `/v1/sandboxes/${id}/commands`, { json: { cmd: "true" } }],
      ["GET", `/v1/sandboxes/${id}/commands`],
      ["POST", `/v1/sandboxes/${id}/commands/1/signal`, { json: { signal: "SIGKILL" } }],
      ["POST", `/v1/sandboxes/${id}/commands/1/stdin`, { json: { data: "", eof: true } }],
      ["GET", `/v1/sandboxes/${id}/files?path=/etc/hostname`],
      ["PUT", `/v1/sandboxes/${id}/files?path=/tmp/x`, { body: "x" }],
      ["DELETE", `/v1/sandboxes/${id}/files?path=/tmp/x`],
      ["GET", `/v1/sandboxes/${id}/files/list?path=/`],
      ["GET", `/v1/sandboxes/${id}/files/stat?path=/`],
      ["POST", `/v1/sandboxes/${id}/files/move`, { json: { from: "/a", to: "/b" } }],
      ["POST", `/v1/sandboxes/${id}/files/mkdir`, { json: { path: "/c" } }],
      ["GET", `/v1/usage/records?sandboxId=${id}`],
    ];
    for (const [m, p, opts] of calls) {
      const r = await b.api.call(m, p, opts);
      if (p.startsWith("/v1/usage")) {
        assert.deepEqual(r.json.records, [], "usage records of another tenant are not visible");
        continue;
      }
      assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
      assert.equal(r.json.error.code, "NOT_FOUND", `${m} ${p}`);
    }
    assert.deepEqual((await b.api.get("/v1/sandboxes")).json.sandboxes, []);
    assert.deepEqual(await env.store.getSandbox(sb.id), before);
    assert.equal((await a.api.get(`/v1/sandboxes/${id}`)).json.state, "running");
  });

  test("limits on concurrent sandboxes, vCPUs and memory answer 429 QUOTA_EXCEEDED naming the limit", async () => {
    const t = await env.tenant({ maxSandboxes: 2, maxVcpus: 3, maxMemoryMib: 1024 });
    assert.equal((await t.api.post("/v1/sandboxes", { vcpus: 2, memoryMib: 512 })).status, 201);
    const vcpu = await t.api.post("/v1/sandboxes", { vcpus: 2 });
    assert.equal(vcpu.status, 429);
    assert.equal(vcpu.json.error.code, "QUOTA_EXCEEDED");
    assert.match(vcpu.json.error.message, /maxVcpus/);
    const mem = await t.api.post("/v1/sandboxes", { memoryMib: 768 });
    assert.equal(mem.status, 429);
    assert.match(mem.json.error.message, /maxMemoryMib/);
    assert.equal((await t.api.post("/v1/sandboxes", {})).status, 201);
    const n = await t.api.post("/v1/sandboxes", {});
    assert.equal(n.status, 429);
    assert.match(n.json.error.message, /maxSandboxes/);
    assert.equal(await count(env, t.id), 2);
  });

  test("concurrent creates cannot overrun maxSandboxes", async () => {
    const t = await env.tenant({ maxSandboxes: 2 });
    env.node.createDelayMs = 20;
    const rs = await Promise.all(Array.from({ length: 6 }, () => t.api.post("/v1/sandboxes", {})));
    env.node.createDelayMs = 0;
    assert.deepEqual(rs.map((r) => r.status).sort(), [201, 201, 429, 429, 429, 429]);
  });

  test("request rate limiting answers 429 RATE_LIMITED with Retry-After", async () => {
    const t = await env.tenant({ requestsPerMinute: 5 });
    for (let i = 0; i < 5; i++) assert.equal((await t.api.get("/v1/sandboxes")).status, 200);
    const r = await t.api.get("/v1/sandboxes");
    assert.equal(r.status, 429);
    assert.equal(r.json.error.code, "RATE_LIMITED");
    assert.ok(Number(r.headers.get("retry-after")) >= 1);
    // Other tenants are not affected.
    const other = await env.tenant();
    assert.equal((await other.api.get("/v1/sandboxes")).status, 200);
  });

  test("admins create tenants with limits and keys for them", async () => {
    const admin = await env.tenant({}, ["admin"]);
    const made = await admin.api.post("/v1/tenants", { name: "acme", limits: { maxSandboxes: 1 } });
    assert.equal(made.status, 201);
    assert.equal(made.json.limits.maxSandboxes, 1);
    assert.equal((await admin.api.post("/v1/tenants", { name: "acme" })).status, 409);
    const key = await admin.api.post("/v1/keys", { name: "acme-1", tenantId: made.json.id });
    assert.equal(key.status, 201);
    const acme = env.api.withKey(key.json.key);
    assert.equal((await acme.post("/v1/sandboxes", {})).status, 201);
    assert.match((await acme.post("/v1/sandboxes", {})).json.error.message, /maxSandboxes is 1/);
    const tenants = await admin.api.get("/v1/tenants");
    assert.ok(tenants.json.tenants.some((x: { name: string }) => x.name === "acme"));
  });
});

describe("lifecycle and usage", () => {
  let env: Env;
  before(async () => {
    env = await inProcess({ reaperIntervalMs: 50, usageIntervalMs: 100 });
    env.sandboxes.start();
  });
  after(() => env.close());

  test("pause, resume, kill; wrong-state actions answer 409 CONFLICT; kill is idempotent", async () => {
    const t = await env.tenant();
    const noBody = await t.api.call("POST", "/v1/sandboxes");
    assert.equal(noBody.status, 201, "a create without a body takes every default");
    assert.deepEqual(
      [noBody.json.template, noBody.json.vcpus, noBody.json.memoryMib, noBody.json.timeoutMs],
      ["base", 1, 256, 300_000],
    );
    await t.api.delete(`/v1/sandboxes/${noBody.json.id}`);
    const sb = (await t.api.post("/v1/sandboxes", {})).json;
    assert.equal(sb.state, "running");
    assert.ok(sb.envdAccessToken);
    assert.equal((await t.api.post(`/v1/sandboxes/${sb.id}/pause`)).json.state, "paused");
    const again = await t.api.post(`/v1/sandboxes/${sb.id}/pause`);
    assert.equal(again.status, 409);
    assert.equal(again.json.error.code, "CONFLICT");
    assert.equal((await t.api.get(`/v1/sandboxes?state=paused`)).json.sandboxes.length, 1);
    const resumed = await t.api.post(`/v1/sandboxes/${sb.id}/resume`, { timeoutMs: 60_000 });
    assert.equal(resumed.json.state, "running");
    // A bodiless POST that still says Content-Type: application/json (as curl scripts do) takes the defaults.
    const curlish = { headers: { "content-type": "application/json" } };
    const bare = await t.api.call("POST", `/v1/sandboxes/${sb.id}/pause`, curlish);
    assert.equal(bare.status, 200, JSON.stringify(bare.json));
    const nodeId = (await env.store.getSandbox(sb.id))!.nodeSandboxId!;
    assert.equal(env.node.sandboxes.get(nodeId)?.pausedMemory, true, "a plain pause keeps memory");
    assert.equal((await t.api.call("POST", `/v1/sandboxes/${sb.id}/resume`, curlish)).status, 200);
    // The same over a real HTTP server, as curl sends it: no Content-Length, no body.
    const server = http.createServer(getRequestListener(env.app.fetch));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      // Byte for byte what `curl -X POST -H 'content-type: application/json'` sends.
      const status = await new Promise<number>((resolve, reject) => {
        const sock = net.connect((server.address() as AddressInfo).port, "127.0.0.1");
        let got = "";
        sock.on("data", (b) => {
          got += b.toString();
          const m = /^HTTP\/1\.1 (\d{3})/.exec(got);
          if (m) {
            resolve(Number(m[1]));
            sock.destroy();
          }
        });
        sock.on("error", reject);
        sock.write(
          `POST /v1/sandboxes/${sb.id}/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${t.key}\r\nContent-Type: application/json\r\n\r\n`,
        );
      });
      assert.equal(status, 200);
    } finally {
      server.close();
    }
    assert.equal((await t.api.call("POST", `/v1/sandboxes/${sb.id}/resume`, curlish)).status, 200);
    // A filesystem-only pause; a body that is not the schema's is refused.
    assert.equal((await t.api.post(`/v1/sandboxes/${sb.id}/pause`, { memory: "no" })).status, 400);
    assert.equal((await t.api.post(`/v1/sandboxes/${sb.id}/pause`, { memory: false })).status, 200);
    assert.equal(env.node.sandboxes.get(nodeId)?.pausedMemory, false, "memory: false reaches the node");
    assert.equal((await t.api.post(`/v1/sandboxes/${sb.id}/resume`, {})).json.state, "running");
    assert.equal((await t.api.delete(`/v1/sandboxes/${sb.id}`)).status, 204);
    assert.equal((await t.api.delete(`/v1/sandboxes/${sb.id}`)).status, 204);
    const got = (await t.api.get(`/v1/sandboxes/${sb.id}`)).json;
    assert.equal(got.state, "killed");
    assert.equal(got.endReason, "killed");
    assert.equal(got.envdAccessToken, undefined);
    assert.equal((await t.api.post(`/v1/sandboxes/${sb.id}/resume`)).status, 409);
    const types = (await t.api.get(`/v1/sandboxes/${sb.id}/events`)).json.events.map(
      (e: { type: string }) => e.type,
    );
    for (const ty of ["requested", "scheduled", "started", "ready", "kill", "ended"])
      assert.ok(types.includes(ty), ty);
  });

  test("the reaper kills an expired sandbox and bills it once", async () => {
    const t = await env.tenant();
    const sb = (await t.api.post("/v1/sandboxes", { timeoutMs: 1000 })).json;
    await sleep(1500);
    const got = (await t.api.get(`/v1/sandboxes/${sb.id}`)).json;
    assert.equal(got.state, "killed");
    assert.equal(got.endReason, "timeout");
    assert.equal(got.endedBy, "reaper");
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].final, true);
    assert.equal(recs[0].endReason, "timeout");
    assert.ok(recs[0].cpuSeconds > 0);
    assert.ok(Date.parse(recs[0].endedAt) >= Date.parse(got.timeoutAt));
  });

  test("a VM that dies is noticed by the sampler: crashed, billed once", async () => {
    const t = await env.tenant();
    const sb = (await t.api.post("/v1/sandboxes", {})).json;
    await sleep(250);
    const interim = (await t.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records[0];
    assert.equal(interim.final, false);
    const nodeId = (await env.store.getSandbox(sb.id))!.nodeSandboxId!;
    env.node.sandboxes.get(nodeId)!.state = "gone";
    await sleep(300);
    const got = (await t.api.get(`/v1/sandboxes/${sb.id}`)).json;
    assert.equal(got.state, "crashed");
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].final, true);
    assert.equal(recs[0].endReason, "crashed");
  });

  test("a failed start ends the sandbox as failed with a final record and maps the node's code", async () => {
    const t = await env.tenant();
    env.node.failNextCreate = new FirebreakError("SANDBOX_BOOT_FAILED", "guest did not boot");
    const r = await t.api.post("/v1/sandboxes", {});
    assert.equal(r.status, 502);
    assert.equal(r.json.error.code, "SANDBOX_BOOT_FAILED");
    const [s] = (await t.api.get("/v1/sandboxes")).json.sandboxes;
    assert.equal(s.state, "failed");
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${s.id}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].final, true);
  });

  test("the per-sandbox token records the parent; usage rolls up to the root and groups by metadata", async () => {
    const t = await env.tenant();
    const root = (await t.api.post("/v1/sandboxes", { metadata: { team: "red" } })).json;
    const rootToken = env.node.lastEnv["FIREBREAK_SANDBOX_TOKEN"]!;
    assert.match(rootToken, /^fbs_[0-9a-f]{64}$/);
    assert.equal(env.node.lastEnv["FIREBREAK_SANDBOX_ID"], root.id);
    const child = (
      await t.api.post(
        "/v1/sandboxes",
        { metadata: { team: "blue" } },
        { headers: { "x-firebreak-sandbox-token": rootToken } },
      )
    ).json;
    assert.equal(child.parentId, root.id);
    assert.equal(child.rootId, root.id);
    const childToken = env.node.lastEnv["FIREBREAK_SANDBOX_TOKEN"]!;
    const grandchild = (
      await t.api.post("/v1/sandboxes", {}, { headers: { "x-firebreak-sandbox-token": childToken } })
    ).json;
    assert.equal(grandchild.parentId, child.id);
    assert.equal(grandchild.rootId, root.id);
    const bad = await t.api.post(
      "/v1/sandboxes",
      {},
      { headers: { "x-firebreak-sandbox-token": "fbs_nope" } },
    );
    assert.equal(bad.status, 400);
    // Another tenant cannot attribute to this tree.
    const other = await env.tenant();
    assert.equal(
      (await other.api.post("/v1/sandboxes", {}, { headers: { "x-firebreak-sandbox-token": rootToken } }))
        .status,
      400,
    );

    for (const s of [root, child, grandchild]) await t.api.delete(`/v1/sandboxes/${s.id}`);
    const byRoot = (await t.api.get("/v1/usage?groupBy=root")).json.groups;
    const g = byRoot.find((x: { key: string }) => x.key === root.id);
    assert.equal(g.sandboxes, 3);
    assert.ok(g.cpuSeconds > 0);
    const byTeam = (await t.api.get("/v1/usage?groupBy=metadata.team")).json.groups;
    assert.deepEqual(
      byTeam.map((x: { key: string | null; sandboxes: number }) => [x.key, x.sandboxes]),
      [
        [null, 1],
        ["blue", 1],
        ["red", 1],
      ],
    );
    const byTemplate = (await t.api.get("/v1/usage?groupBy=template")).json.groups;
    assert.deepEqual(
      byTemplate.map((x: { key: string }) => x.key),
      ["base"],
    );
    assert.equal((await t.api.get("/v1/usage?groupBy=colour")).status, 400);
  });

  test("list filters by state and metadata and pages with a cursor", async () => {
    const t = await env.tenant();
    for (let i = 0; i < 5; i++)
      await t.api.post("/v1/sandboxes", { metadata: { i: String(i), kind: i % 2 ? "odd" : "even" } });
    const p1 = (await t.api.get("/v1/sandboxes?limit=2")).json;
    assert.equal(p1.sandboxes.length, 2);
    assert.ok(p1.nextCursor);
    const p2 = (await t.api.get(`/v1/sandboxes?limit=2&cursor=${p1.nextCursor}`)).json;
    const p3 = (await t.api.get(`/v1/sandboxes?limit=2&cursor=${p2.nextCursor}`)).json;
    assert.equal(p3.nextCursor, null);
    const ids = [...p1.sandboxes, ...p2.sandboxes, ...p3.sandboxes].map(
      (s: { metadata: { i: string } }) => s.metadata.i,
    );
    assert.deepEqual(ids, ["4", "3", "2", "1", "0"]);
    const odd = (await t.api.get("/v1/sandboxes?metadata=kind:odd&state=running")).json.sandboxes;
    assert.deepEqual(
      odd.map((s: { metadata: { i: string } }) => s.metadata.i),
      ["3", "1"],
    );
    assert.equal((await t.api.get("/v1/sandboxes?state=sleeping")).status, 400);
  });

  test("after a restart, live sandboxes whose VM is gone are ended and billed once; paused ones stay", async () => {
    const t = await env.tenant();
    const running = (await t.api.post("/v1/sandboxes", {})).json;
    const paused = (await t.api.post("/v1/sandboxes", {})).json;
    await t.api.post(`/v1/sandboxes/${paused.id}/pause`);
    await sleep(250);
    // A new service over the same store and a node that kept only the paused VM.
    const node2 = new FakeNode();
    const pausedNodeId = (await env.store.getSandbox(paused.id))!.nodeSandboxId!;
    node2.sandboxes.set(pausedNodeId, { state: "paused", token: "x", born: Date.now() });
    const dir2 = new StaticNodes([node2]);
    await dir2.poll();
    const svc = new SandboxService(env.store, dir2, env.config, pino({ level: "silent" }));
    const r = await svc.recover();
    assert.deepEqual(r.ended.includes(running.id), true);
    assert.deepEqual(r.adopted, [paused.id]);
    const again = await svc.recover();
    assert.ok(!again.ended.includes(running.id));
    const rec = await env.store.getSandbox(running.id);
    assert.equal(rec?.state, "crashed");
    assert.equal(rec?.endReason, "control_plane_restart");
    const usage = await env.store.listUsage({ tenantId: t.id, limit: 10 });
    assert.equal(usage.filter((u) => u.sandboxId === running.id && u.final).length, 1);
    assert.equal((await env.store.getSandbox(paused.id))?.state, "paused");
  });
});

describe("E2B-compatible routes", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("create, get, list, timeout, pause, connect, kill with X-API-KEY e2b_<hex>; errors are {code, message}", async () => {
    const t = await env.tenant();
    const h = { "x-api-key": t.key.replace(/^fb_/, "e2b_"), "content-type": "application/json" };
    const req = (m: string, p: string, body?: unknown) =>
      env.app.request(p, { method: m, headers: h, ...(body ? { body: JSON.stringify(body) } : {}) });
    const c = await req("POST", "/v2/sandboxes", {
      templateID: "base",
      timeout: 60,
      metadata: { a: "1" },
      secure: true,
    });
    assert.equal(c.status, 201);
    const made = (await c.json()) as { sandboxID: string; envdVersion: string; envdAccessToken: string };
    assert.equal(made.envdVersion, ENVD_VERSION);
    assert.ok(made.envdAccessToken);
    const got = (await (await req("GET", `/sandboxes/${made.sandboxID}`)).json()) as { state: string };
    assert.equal(got.state, "running");
    const list = (await (await req("GET", "/v2/sandboxes?metadata=a%3D1")).json()) as unknown[];
    assert.equal(list.length, 1);
    assert.equal((await req("POST", `/sandboxes/${made.sandboxID}/timeout`, { timeout: 30 })).status, 204);
    assert.equal((await req("POST", `/sandboxes/${made.sandboxID}/pause`)).status, 204);
    const again = await req("POST", `/sandboxes/${made.sandboxID}/pause`);
    assert.equal(again.status, 409);
    assert.equal(((await again.json()) as { code: number }).code, 409);
    assert.equal((await req("POST", `/v2/sandboxes/${made.sandboxID}/connect`, { timeout: 60 })).status, 201);
    assert.equal((await req("POST", `/v2/sandboxes/${made.sandboxID}/connect`, { timeout: 60 })).status, 200);
    assert.equal((await req("DELETE", `/sandboxes/${made.sandboxID}`)).status, 204);
    const gone = await req("DELETE", `/sandboxes/${made.sandboxID}`);
    assert.equal(gone.status, 404);
    assert.deepEqual(Object.keys((await gone.json()) as object).sort(), ["code", "message"]);
    const noKey = await env.app.request("/v2/sandboxes");
    assert.equal(noKey.status, 401);
  });
});
