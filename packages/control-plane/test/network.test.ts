// Egress through the API with a real microVM: a policy given at create (a
// domain of the fake world's DNS zone, a bound HTTP service whose credential
// the node's proxy injects), a live PUT of a new policy, and traffic bytes per
// class in the final usage record. The fake world is a namespace this test
// makes (node-agent/src/egress/testing/fake-world.ts); nothing else is reached.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createFakeWorld, type FakeWorld } from "../../node-agent/src/egress/testing/fake-world.ts";
import { uniq } from "../../node-agent/src/network/testing/harness.ts";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import {
  assertNoLeftovers,
  commandOutput,
  nodeIds,
  server,
  skipUnlessRoot,
  sleep,
  tenant,
} from "./helpers.ts";

describe("egress policy through the API (real microVM)", { skip: skipUnlessRoot }, () => {
  const tag = uniq();
  const service = `api-${tag}.internal`;
  const secret = `Bearer api-s3cret-${tag}`;
  let world: FakeWorld;
  let srv: RunningServer;
  let admin: ApiClient;
  const ours: string[] = [];
  const upstreamBefore = process.env["FIREBREAK_DNS_UPSTREAM"];

  before(async () => {
    world = await createFakeWorld(tag);
    // The node's resolver asks the fake world's DNS server (read when the node opens).
    process.env["FIREBREAK_DNS_UPSTREAM"] = `${world.upstream.host}:${world.upstream.port}`;
    ({ srv, admin } = await server({ config: { usageIntervalMs: 500 } }));
  });
  after(async () => {
    if (upstreamBefore === undefined) delete process.env["FIREBREAK_DNS_UPSTREAM"];
    else process.env["FIREBREAK_DNS_UPSTREAM"] = upstreamBefore;
    await admin?.delete(`/v1/services/${service}`);
    const ids = srv ? await nodeIds(srv, ours) : [];
    await srv?.close();
    await world?.close();
    await assertNoLeftovers(ids);
  });

  async function py(api: ApiClient, id: string, script: string) {
    const r = await api.post(`/v1/sandboxes/${id}/commands`, {
      argv: ["python3", "-c", script],
      user: "root",
    });
    assert.equal(r.status, 200, r.text);
    const out = commandOutput(r.json);
    assert.equal(out.exitCode, 0, out.stderr);
    return JSON.parse(out.stdout);
  }
  const probe = (name: string) => `
import json, socket
def conn(n):
    try:
        a = socket.gethostbyname(n)
    except Exception as e:
        return "resolve:" + type(e).__name__
    try:
        s = socket.create_connection((a, 443), timeout=2); s.sendall(b"ping"); d = s.recv(100).decode(); s.close(); return d
    except Exception as e:
        return "connect:" + type(e).__name__
print(json.dumps(conn("${name}")))
`;

  test("create with a policy, live PUT, injected credential, traffic in the final usage record", async () => {
    const made = await admin.post("/v1/services", {
      name: service,
      address: world.internal.api,
      port: world.internal.apiPort,
      protocol: "http",
      inject: { header: "Authorization", value: secret },
    });
    assert.equal(made.status, 201, made.text);
    const t = await tenant(admin);
    const listed = (await t.api.get("/v1/services")).json.services.find(
      (s: { name: string }) => s.name === service,
    );
    assert.equal(listed.inject.value, "***");

    const c = await t.api.post("/v1/sandboxes", {
      network: { policy: { allowDomains: ["api.good.test"], services: [service] } },
    });
    assert.equal(c.status, 201, c.text);
    const id = c.json.id as string;
    ours.push(id);
    assert.deepEqual((await t.api.get(`/v1/sandboxes/${id}/network`)).json.policy.allowDomains, [
      "api.good.test",
    ]);

    assert.match(await py(t.api, id, probe("api.good.test")), /^good from /);
    assert.equal(await py(t.api, id, probe("api.bad.test")), "resolve:gaierror");
    const http = await py(
      t.api,
      id,
      `import json, urllib.request
r = urllib.request.urlopen("http://${service}:${world.internal.apiPort}/hello", timeout=5)
print(json.dumps(json.loads(r.read())))`,
    );
    assert.equal(http.headers["authorization"], secret, "the service received the injected credential");

    // Live update: api.bad.test allowed, api.good.test no longer.
    const put = await t.api.put(`/v1/sandboxes/${id}/network`, {
      json: { policy: { allowDomains: ["api.bad.test"], services: [service] } },
    });
    assert.equal(put.status, 200, put.text);
    let bad = "";
    for (let i = 0; i < 20 && !/^bad from /.test(bad); i++) {
      bad = await py(t.api, id, probe("api.bad.test"));
      if (!/^bad from /.test(bad)) await sleep(250);
    }
    assert.match(bad, /^bad from /, "the new policy took effect");
    assert.equal(await py(t.api, id, probe("api.good.test")), "resolve:gaierror");

    assert.equal((await t.api.delete(`/v1/sandboxes/${id}`)).status, 204);
    const rec = (await t.api.get(`/v1/usage/records?sandboxId=${id}`)).json.records[0];
    assert.equal(rec.final, true);
    assert.ok(rec.traffic.internet.tx > 0 && rec.traffic.internet.rx > 0, JSON.stringify(rec.traffic));
    assert.ok(rec.traffic.private.tx > 0 && rec.traffic.private.rx > 0, JSON.stringify(rec.traffic));
    assert.deepEqual(rec.traffic.sandbox, { tx: 0, rx: 0 });
    const put2 = await t.api.put(`/v1/sandboxes/${id}/network`, { json: { policy: {} } });
    assert.equal(put2.status, 409, put2.text);
  });
});
