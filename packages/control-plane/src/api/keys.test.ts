// API keys: what a key may mint and revoke, per-tenant key limits, and
// revocation that cascades to everything a key minted.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

describe("keys", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("a key mints only scopes it has, and a tenant holds at most maxKeys unrevoked keys (429)", async () => {
    const t = await env.tenant({ maxKeys: 3 }, ["sandboxes", "templates"]);
    assert.equal((await t.api.post("/v1/keys", { name: "x", scopes: ["admin"] })).status, 403);
    const one = await t.api.post("/v1/keys", { name: "one", scopes: ["templates"] });
    assert.equal(one.status, 201);
    assert.equal(one.json.createdByKey, t.keyId);
    const sbKey = env.api.withKey(one.json.key);
    assert.equal((await sbKey.post("/v1/keys", { name: "wider", scopes: ["sandboxes"] })).status, 403);
    assert.equal((await t.api.post("/v1/keys", { name: "two" })).status, 201);
    const over = await t.api.post("/v1/keys", { name: "three" });
    assert.equal(over.status, 429);
    assert.equal(over.json.error.code, "QUOTA_EXCEEDED");
    assert.match(over.json.error.message, /maxKeys is 3/);
    // An admin minting for the tenant is held to the same limit.
    const admin = await env.tenant({}, ["admin"]);
    assert.equal((await admin.api.post("/v1/keys", { name: "four", tenantId: t.id })).status, 429);
    assert.equal((await t.api.delete(`/v1/keys/${one.json.id}`)).status, 204);
    assert.equal(
      (await t.api.post("/v1/keys", { name: "three" })).status,
      201,
      "a revoked key frees its place",
    );
  });

  test("a non-admin key cannot revoke an admin key of its own tenant (403); the admin key keeps working", async () => {
    const admin = await env.tenant({}, ["admin"]);
    const weak = await admin.api.post("/v1/keys", { name: "weak", scopes: ["sandboxes", "templates"] });
    const weakApi = env.api.withKey(weak.json.key);
    const r = await weakApi.delete(`/v1/keys/${admin.keyId}`);
    assert.equal(r.status, 403);
    assert.equal(r.json.error.code, "FORBIDDEN");
    assert.match(r.json.error.message, /"admin"/);
    // Nor a key with a scope it lacks.
    const tpl = await admin.api.post("/v1/keys", { name: "tpl", scopes: ["templates"] });
    const sb = await admin.api.post("/v1/keys", { name: "sb", scopes: ["sandboxes"] });
    assert.equal((await env.api.withKey(sb.json.key).delete(`/v1/keys/${tpl.json.id}`)).status, 403);
    assert.equal((await admin.api.get("/v1/tenants")).status, 200);
    // Its peers with the same scopes it may revoke.
    const peer = await admin.api.post("/v1/keys", { name: "peer", scopes: ["sandboxes"] });
    assert.equal((await env.api.withKey(sb.json.key).delete(`/v1/keys/${peer.json.id}`)).status, 204);
    // Another tenant's key id: 404, like an unknown one.
    const other = await env.tenant();
    assert.equal((await weakApi.delete(`/v1/keys/${other.keyId}`)).status, 404);
  });

  test("revoking a key revokes every key it minted, transitively, and nothing else", async () => {
    const admin = await env.tenant({}, ["admin"]);
    const t = (await admin.api.post("/v1/tenants", { name: "lineage" })).json;
    const k1 = (
      await admin.api.post("/v1/keys", { name: "k1", tenantId: t.id, scopes: ["sandboxes", "templates"] })
    ).json;
    const k2 = (await env.api.withKey(k1.key).post("/v1/keys", { name: "k2", scopes: ["sandboxes"] })).json;
    const k3 = (await env.api.withKey(k2.key).post("/v1/keys", { name: "k3" })).json;
    const k4 = (await admin.api.post("/v1/keys", { name: "k4", tenantId: t.id })).json;
    assert.deepEqual([k2.createdByKey, k3.createdByKey, k4.createdByKey], [k1.id, k2.id, admin.keyId]);
    for (const k of [k1, k2, k3, k4])
      assert.equal((await env.api.withKey(k.key).get("/v1/sandboxes")).status, 200);

    assert.equal((await admin.api.delete(`/v1/keys/${k1.id}`)).status, 204);
    for (const k of [k1, k2, k3]) {
      const r = await env.api.withKey(k.key).get("/v1/sandboxes");
      assert.equal(r.status, 401, k.name);
      assert.match(r.json.error.message, /revoked/);
    }
    assert.equal((await env.api.withKey(k4.key).get("/v1/sandboxes")).status, 200, "a sibling stays");
    const listed = (await admin.api.get("/v1/keys")).json.keys as { id: string; revokedAt: string | null }[];
    for (const k of [k1, k2, k3]) assert.ok(listed.find((x) => x.id === k.id)?.revokedAt, k.name);
    // Revoking again: 404 (no active key).
    assert.equal((await admin.api.delete(`/v1/keys/${k2.id}`)).status, 404);
  });
});
