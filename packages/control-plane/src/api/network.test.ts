// Egress policy, private services and traffic in the ledger, in-process over
// the fake node. Every /v1 response is checked against /openapi.json.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

describe("network API", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("create with a policy: normalized, tenant from the key, networks merged; GET/PUT; 409 unless running", async () => {
    const t = await env.tenant();
    const c = await t.api.post("/v1/sandboxes", {
      network: {
        policy: { allowDomains: ["API.good.test"], allow: [{ cidr: "11.1.2.3/8", ports: [5432] }] },
        networks: ["team"],
      },
    });
    assert.equal(c.status, 201, c.text);
    const node = env.node.policies.get((await env.store.getSandbox(c.json.id))!.nodeSandboxId!)!;
    assert.equal(node.tenant, t.id, "the tenant is the caller's");
    assert.deepEqual(node.policy.allowDomains, ["api.good.test"]);
    assert.deepEqual(node.policy.networks, ["team"]);

    const g = await t.api.get(`/v1/sandboxes/${c.json.id}/network`);
    assert.equal(g.status, 200, g.text);
    assert.deepEqual(g.json.policy.allow, [{ cidr: "11.0.0.0/8", ports: [5432], protocol: "any" }]);
    assert.equal(g.json.policy.internet, false);

    const p = await t.api.put(`/v1/sandboxes/${c.json.id}/network`, { json: { policy: { internet: true } } });
    assert.equal(p.status, 200, p.text);
    assert.equal(p.json.policy.internet, true);
    assert.equal(node.policy.internet, true, "the node got the new policy");
    assert.equal((await t.api.get(`/v1/sandboxes/${c.json.id}/network`)).json.policy.internet, true);
    const events = (await t.api.get(`/v1/sandboxes/${c.json.id}/events`)).json.events;
    assert.ok(events.some((e: { type: string }) => e.type === "network_policy"));

    // Another tenant: 404. Not running: 409.
    const other = await env.tenant();
    assert.equal((await other.api.get(`/v1/sandboxes/${c.json.id}/network`)).status, 404);
    assert.equal(
      (await other.api.put(`/v1/sandboxes/${c.json.id}/network`, { json: { policy: {} } })).status,
      404,
    );
    assert.equal((await t.api.post(`/v1/sandboxes/${c.json.id}/pause`)).status, 200);
    const paused = await t.api.put(`/v1/sandboxes/${c.json.id}/network`, { json: { policy: {} } });
    assert.equal(paused.status, 409, paused.text);
    assert.equal(paused.json.error.code, "CONFLICT");

    // No policy: the default (deny all).
    const plain = await t.api.post("/v1/sandboxes", {});
    const d = await t.api.get(`/v1/sandboxes/${plain.json.id}/network`);
    assert.deepEqual(d.json.policy, {
      internet: false,
      allow: [],
      allowDomains: [],
      services: [],
      networks: [],
    });
  });

  test("private ranges: a tenant key's rule is refused naming the range; an admin key's policy may allow them", async () => {
    const t = await env.tenant();
    const refused = await t.api.post("/v1/sandboxes", {
      network: { policy: { allow: [{ cidr: "10.20.0.0/16", ports: [5432] }] } },
    });
    assert.equal(refused.status, 400, refused.text);
    assert.equal(refused.json.error.code, "VALIDATION_FAILED");
    assert.match(
      refused.json.error.message,
      /^network\.policy: allow\.0\.cidr 10\.20\.0\.0\/16 overlaps 10\.0\.0\.0\/8/,
    );
    assert.match(refused.json.error.message, /an admin can grant/);
    const claimed = await t.api.post("/v1/sandboxes", {
      network: { policy: { grantedBy: "admin", allow: [{ cidr: "10.20.0.0/16" }] } },
    });
    assert.equal(claimed.status, 403, claimed.text);
    assert.equal(claimed.json.error.code, "FORBIDDEN");

    const admin = await env.tenant({}, ["admin", "sandboxes"]);
    const c = await admin.api.post("/v1/sandboxes", {
      network: { policy: { allow: [{ cidr: "10.20.0.0/16", ports: [5432] }] } },
    });
    assert.equal(c.status, 201, c.text);
    const node = env.node.policies.get((await env.store.getSandbox(c.json.id))!.nodeSandboxId!)!;
    assert.equal(node.policy.grantedBy, "admin", "the node learns who made the policy");
    const g = await admin.api.get(`/v1/sandboxes/${c.json.id}/network`);
    assert.equal(g.json.policy.grantedBy, "admin");
    // Walls stay closed for admins too.
    const wall = await admin.api.put(`/v1/sandboxes/${c.json.id}/network`, {
      json: { policy: { allow: [{ cidr: "169.254.169.254" }] } },
    });
    assert.equal(wall.status, 400, wall.text);
    assert.match(wall.json.error.message, /hard wall/);
    // A tenant's own PUT makes a tenant policy again.
    const tenantPut = await admin.api.put(`/v1/sandboxes/${c.json.id}/network`, {
      json: { policy: { grantedBy: "tenant", allowDomains: ["api.good.test"] } },
    });
    assert.equal(tenantPut.status, 200, tenantPut.text);
    assert.equal(tenantPut.json.policy.grantedBy, undefined);
    assert.equal(node.policy.grantedBy, undefined);
  });

  test("invalid policies answer 400 VALIDATION_FAILED naming the field; nothing is created", async () => {
    const t = await env.tenant();
    const cases: [unknown, RegExp][] = [
      [{ policy: { allowDomains: ["not a domain"] } }, /network\.policy\.allowDomains\.0/],
      [{ policy: { allow: [{ cidr: "300.1.1.1" }] } }, /network\.policy: allow: "300\.1\.1\.1"/],
      [{ policy: { allow: [{ cidr: "10.0.0.0/8", ports: [0] }] } }, /network\.policy\.allow\.0\.ports\.0/],
      [{ policy: { internet: "yes" } }, /network\.policy\.internet/],
      [{ policy: { surprise: 1 } }, /network\.policy: unknown field\(s\) surprise/],
      [{ networks: ["Bad Name"] }, /network\.networks\.0/],
      [{ tenant: "someone-else" }, /network: unknown field\(s\) tenant/],
    ];
    for (const [network, re] of cases) {
      const r = await t.api.post("/v1/sandboxes", { network });
      assert.equal(r.status, 400, `${JSON.stringify(network)}: ${r.text}`);
      assert.equal(r.json.error.code, "VALIDATION_FAILED");
      assert.match(r.json.error.message, re);
    }
    const c = await t.api.post("/v1/sandboxes", {});
    const put = await t.api.put(`/v1/sandboxes/${c.json.id}/network`, {
      json: { policy: { allow: [{ cidr: "x" }] } },
    });
    assert.equal(put.status, 400, put.text);
    assert.match(put.json.error.message, /^policy: allow: "x"/);
    assert.equal((await env.store.listSandboxes({ tenantId: t.id, limit: 100 })).sandboxes.length, 1);
  });

  test("services: admin declares, lists with credentials; tenants see their own redacted; binding checks the tenant", async () => {
    const admin = await env.tenant({}, ["admin", "sandboxes"]);
    const a = await env.tenant();
    const b = await env.tenant();
    const svc = {
      name: "api.internal",
      address: "10.20.0.6",
      port: 8080,
      protocol: "http",
      tenants: [a.id],
      inject: { header: "Authorization", value: "Bearer s3cret" },
    };
    const forbidden = await a.api.post("/v1/services", svc);
    assert.equal(forbidden.status, 403);
    assert.equal(forbidden.json.error.code, "FORBIDDEN");
    const made = await admin.api.post("/v1/services", svc);
    assert.equal(made.status, 201, made.text);
    assert.equal(made.json.inject.value, "Bearer s3cret");
    const bad = await admin.api.post("/v1/services", { ...svc, name: "Not A Name" });
    assert.equal(bad.status, 400);
    assert.match(bad.json.error.message, /name/);
    const tcp = { name: "pg.internal", address: "10.20.0.5", port: 5432, protocol: "tcp" };
    assert.equal((await admin.api.post("/v1/services", tcp)).status, 201);

    assert.deepEqual(
      (await admin.api.get("/v1/services")).json.services.map((s: { name: string }) => s.name),
      ["api.internal", "pg.internal"],
    );
    const seenA = (await a.api.get("/v1/services")).json.services;
    assert.deepEqual(
      seenA.map((s: { name: string }) => s.name),
      ["api.internal", "pg.internal"],
    );
    assert.equal(seenA[0].inject.value, "***", "credentials are redacted for tenants");
    assert.doesNotMatch(JSON.stringify(seenA), /s3cret/);
    assert.deepEqual(
      (await b.api.get("/v1/services")).json.services.map((s: { name: string }) => s.name),
      ["pg.internal"],
    );

    // a may bind api.internal; b gets the same answer as for a service that does not exist.
    const ok = await a.api.post("/v1/sandboxes", { network: { policy: { services: ["api.internal"] } } });
    assert.equal(ok.status, 201, ok.text);
    for (const name of ["api.internal", "nope.internal"]) {
      const r = await b.api.post("/v1/sandboxes", { network: { policy: { services: [name] } } });
      assert.equal(r.status, 400, r.text);
      assert.equal(r.json.error.code, "VALIDATION_FAILED");
      assert.equal(
        r.json.error.message,
        `network.policy.services: no private service named "${name}" is available to this tenant; list them with GET /v1/services`,
      );
    }
    const plain = await b.api.post("/v1/sandboxes", {});
    const put = await b.api.put(`/v1/sandboxes/${plain.json.id}/network`, {
      json: { policy: { services: ["api.internal"] } },
    });
    assert.equal(put.status, 400);
    assert.match(put.json.error.message, /^policy\.services: no private service named "api\.internal"/);

    assert.equal((await a.api.delete("/v1/services/pg.internal")).status, 403);
    assert.equal((await admin.api.delete("/v1/services/pg.internal")).status, 204);
    const gone = await admin.api.delete("/v1/services/pg.internal");
    assert.equal(gone.status, 404);
    assert.equal(gone.json.error.code, "NOT_FOUND");
    assert.equal((await admin.api.delete("/v1/services/api.internal")).status, 204);
  });

  test("traffic per class in interim and final usage records, summed in groups", async () => {
    const t = await env.tenant();
    const c = await t.api.post("/v1/sandboxes", { network: { policy: { internet: true } } });
    await new Promise((r) => setTimeout(r, 30));
    await env.sandboxes.sampleAll();
    const interim = (await t.api.get(`/v1/usage/records?sandboxId=${c.json.id}`)).json.records[0];
    assert.equal(interim.final, false);
    assert.ok(interim.traffic.internet.tx > 0 && interim.traffic.internet.rx > interim.traffic.internet.tx);
    assert.deepEqual(interim.traffic.private, { tx: 0, rx: 0 });
    await t.api.delete(`/v1/sandboxes/${c.json.id}`);
    const final = (await t.api.get(`/v1/usage/records?sandboxId=${c.json.id}`)).json.records[0];
    assert.equal(final.final, true);
    assert.ok(final.traffic.internet.rx >= interim.traffic.internet.rx);
    const groups = (await t.api.get("/v1/usage")).json.groups;
    assert.equal(groups.length, 1);
    assert.equal(groups[0].traffic.internet.rx, final.traffic.internet.rx);
    assert.equal(groups[0].traffic.ingress.tx, 0);
  });
});
