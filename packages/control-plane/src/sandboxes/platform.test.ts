// The platform grant through the API (in-process, fake node): a sandbox
// calling with the credential the node's proxy adds acts as itself, on its
// own descendants only, within its own egress and its tenant's quota.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { normalizePolicy, PLATFORM_HEADER } from "@firebreak/node-agent";
import { inProcess } from "../testing/in-process.ts";
import { PlatformTokens, policyWithin } from "./platform.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

describe("platform grant", () => {
  let env: Env;
  let tokens: PlatformTokens;
  before(async () => {
    env = await inProcess();
    tokens = new PlatformTokens(env.ingressTokens);
  });
  after(() => env.close());

  /** The API as the sandbox sees it through its proxy: no key, its credential added. */
  const asSandbox = (id: string) => {
    const api = env.api.withKey(undefined);
    const headers = { [PLATFORM_HEADER]: tokens.tokenFor(id) };
    return {
      get: (p: string) => api.get(p, { headers }),
      post: (p: string, json?: unknown) => api.post(p, json, { headers }),
      put: (p: string, json: unknown) => api.put(p, { json, headers }),
      delete: (p: string) => api.delete(p, { headers }),
    };
  };

  test("a sandbox creates, uses, lists and kills its own children; the tree is in its cost report", async () => {
    const t = await env.tenant();
    const root = await t.api.post("/v1/sandboxes", { network: { policy: { platform: true } } });
    assert.equal(root.status, 201, root.text);
    const me = asSandbox(root.json.id);
    const a = await me.post("/v1/sandboxes", {});
    const b = await me.post("/v1/sandboxes", {});
    assert.equal(a.status, 201, a.text);
    assert.equal(b.status, 201, b.text);
    for (const child of [a.json, b.json]) {
      const rec = (await env.store.getSandbox(child.id))!;
      assert.equal(rec.parentId, root.json.id, "what a sandbox creates is its child");
      assert.equal(rec.tenantId, t.id);
    }
    // A grandchild (a child with the grant creating its own) is in the tree too.
    const withGrant = await me.post("/v1/sandboxes", { network: { policy: { platform: true } } });
    assert.equal(withGrant.status, 201, withGrant.text);
    const grand = await asSandbox(withGrant.json.id).post("/v1/sandboxes", {});
    assert.equal(grand.status, 201, grand.text);
    assert.equal(
      (await me.get(`/v1/sandboxes/${grand.json.id}`)).status,
      200,
      "descendants, not only children",
    );

    const listed = await me.get("/v1/sandboxes?limit=100");
    assert.equal(listed.status, 200, listed.text);
    assert.deepEqual(
      listed.json.sandboxes.map((s: { id: string }) => s.id).sort(),
      [a.json.id, b.json.id, withGrant.json.id, grand.json.id].sort(),
      "the list holds its descendants only (not itself, not its siblings)",
    );
    assert.equal((await me.delete(`/v1/sandboxes/${a.json.id}`)).status, 204);

    const cost = await t.api.get(`/v1/sandboxes/${root.json.id}/cost`);
    assert.equal(cost.status, 200, cost.text);
    assert.equal(cost.json.sandboxes, 5, "root, two children, the child with the grant, its child");
  });

  test("another sandbox, itself, its parent and the rest of the API are out of reach", async () => {
    const t = await env.tenant();
    const root = await t.api.post("/v1/sandboxes", { network: { policy: { platform: true } } });
    const sibling = await t.api.post("/v1/sandboxes", {});
    const me = asSandbox(root.json.id);
    const child = await me.post("/v1/sandboxes", { network: { policy: { platform: true } } });
    assert.equal(child.status, 201, child.text);
    // Another sandbox of the same tenant: NOT_FOUND, as another tenant's would be.
    assert.equal((await me.get(`/v1/sandboxes/${sibling.json.id}`)).status, 404);
    assert.equal((await me.delete(`/v1/sandboxes/${sibling.json.id}`)).status, 404);
    assert.equal((await me.get(`/v1/sandboxes/${root.json.id}`)).status, 404, "not itself");
    assert.equal(
      (await asSandbox(child.json.id).get(`/v1/sandboxes/${root.json.id}`)).status,
      404,
      "not its parent",
    );
    assert.equal((await me.get("/v1/sandboxes/%E0%A4%A")).status, 404, "a malformed id is no sandbox");
    // Nothing outside /v1/sandboxes.
    for (const p of ["/v1/keys", "/v1/usage/records", "/v1/templates", "/v1/events", "/v1/jobs"]) {
      const r = await me.get(p);
      assert.equal(r.status, 403, `${p}: ${r.text}`);
    }
    // A forged or foreign credential is refused.
    const forged = await env.api.withKey(undefined).get("/v1/sandboxes", {
      headers: { [PLATFORM_HEADER]: `fbp_${root.json.id}_${"0".repeat(64)}` },
    });
    assert.equal(forged.status, 401);
    // A sandbox without the grant has no valid credential even when one is minted for it.
    assert.equal((await asSandbox(sibling.json.id).get("/v1/sandboxes")).status, 401);
  });

  test("a child's egress stays within its creator's, at create and on PUT network", async () => {
    const t = await env.tenant();
    const root = await t.api.post("/v1/sandboxes", {
      network: { policy: { platform: true, allowDomains: ["pypi.org"] } },
    });
    const me = asSandbox(root.json.id);
    const wide = await me.post("/v1/sandboxes", { network: { policy: { internet: true } } });
    assert.equal(wide.status, 403, wide.text);
    assert.match(wide.json.error.message, /internet/);
    const narrow = await me.post("/v1/sandboxes", { network: { policy: { allowDomains: ["pypi.org"] } } });
    assert.equal(narrow.status, 201, narrow.text);
    const widen = await me.put(`/v1/sandboxes/${narrow.json.id}/network`, { policy: { internet: true } });
    assert.equal(widen.status, 403, widen.text);
    assert.equal(
      (await me.put(`/v1/sandboxes/${narrow.json.id}/network`, { policy: {} })).status,
      200,
      "narrowing is allowed",
    );
    // The tenant itself (an API key) may still widen it.
    const byKey = await t.api.put(`/v1/sandboxes/${narrow.json.id}/network`, {
      json: { policy: { internet: true } },
    });
    assert.equal(byKey.status, 200, byKey.text);
  });

  test("the credential works only while the sandbox runs; children count against the tenant's quota", async () => {
    const t = await env.tenant({ maxSandboxes: 2 });
    const root = await t.api.post("/v1/sandboxes", { network: { policy: { platform: true } } });
    const me = asSandbox(root.json.id);
    assert.equal((await me.post("/v1/sandboxes", {})).status, 201);
    const over = await me.post("/v1/sandboxes", {});
    assert.equal(over.status, 429, over.text);
    assert.equal((await t.api.delete(`/v1/sandboxes/${root.json.id}`)).status, 204);
    assert.equal((await me.get("/v1/sandboxes")).status, 401, "an ended sandbox's credential is refused");
  });

  test("policyWithin names what a child would add", () => {
    const base = normalizePolicy({ allowDomains: ["a.test"], bandwidthKBps: 100 });
    assert.equal(policyWithin(base, base), undefined);
    assert.match(policyWithin({ ...base, internet: true }, base)!, /internet/);
    assert.match(policyWithin({ ...base, platform: true }, base)!, /platform/);
    assert.match(policyWithin({ ...base, allowDomains: ["b.test"] }, base)!, /b\.test/);
    assert.match(policyWithin({ ...base, bandwidthKBps: undefined }, base)!, /bandwidth/);
    assert.match(policyWithin({ ...base, grantedBy: "admin" as const }, base)!, /admin/);
  });
});
