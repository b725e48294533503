// Money through the API (in-process, fake node): the price sheet (admin),
// a root request's cost tree whose costs and shares agree with the ledger
// rows, and cost reports as JSON and CSV, tenant-scoped.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inProcess } from "../testing/in-process.ts";
import { csvField } from "./costs.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Row {
  sandboxId: string;
  cpuSeconds: number;
  memoryGibSeconds: number;
  traffic: { internet: { tx: number; rx: number } };
}

describe("costs", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("the price sheet is the operator's: validated, stored, read back", async () => {
    const admin = await env.tenant({}, ["admin"]);
    const t = await env.tenant();
    assert.deepEqual((await admin.api.get("/v1/prices")).json, {
      currency: "USD",
      defaults: {},
      templates: {},
      tenants: {},
    });
    assert.equal((await t.api.put("/v1/prices", { json: { currency: "EUR" } })).status, 403);
    const bad = await admin.api.put("/v1/prices", { json: { defaults: { cpuSecond: -1 } } });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.code, "VALIDATION_FAILED");
    const unknown = await admin.api.put("/v1/prices", { json: { defaults: { gpuSecond: 1 } } });
    assert.equal(unknown.status, 400);
  });

  test("a root and two children: the tree's costs and shares agree with the ledger rows", async () => {
    const admin = await env.tenant({}, ["admin"]);
    const t = await env.tenant();
    const other = await env.tenant();
    const put = await admin.api.put("/v1/prices", {
      json: {
        currency: "EUR",
        defaults: { cpuSecond: 0.01, memoryGibSecond: 0.001, trafficGb: { internet: { tx: 0.1 } } },
        tenants: { [t.id]: { cpuSecond: 0.02 } },
      },
    });
    assert.equal(put.status, 200, put.text);

    const root = (await t.api.post("/v1/sandboxes", {})).json;
    const token = env.node.lastEnv["FIREBREAK_SANDBOX_TOKEN"]!;
    const child = (header: Record<string, string>) =>
      env.app.request("/v1/sandboxes", {
        method: "POST",
        headers: { authorization: `Bearer ${t.key}`, "content-type": "application/json", ...header },
        body: "{}",
      });
    const c1 = (await (await child({ "x-firebreak-sandbox-token": token })).json()) as { id: string };
    const c2 = (await (await child({ "x-firebreak-sandbox-token": token })).json()) as { id: string };
    await sleep(150);
    await env.sandboxes.sampleAll();
    for (const id of [c1.id, c2.id, root.id]) await t.api.delete(`/v1/sandboxes/${id}`);

    const r = await t.api.get(`/v1/sandboxes/${c2.id}/cost`);
    assert.equal(r.status, 200, r.text);
    const tree = r.json;
    assert.equal(tree.rootId, root.id);
    assert.equal(tree.currency, "EUR");
    assert.equal(tree.sandboxes, 3);
    assert.equal(tree.tree.sandboxId, root.id);
    assert.deepEqual(
      tree.tree.children.map((n: { sandboxId: string }) => n.sandboxId).sort(),
      [c1.id, c2.id].sort(),
    );

    // The ledger: one final row per sandbox, priced by hand with the tenant's rates.
    const rows: Row[] = (await t.api.get("/v1/usage/records?limit=100")).json.records.filter((u: Row) =>
      [root.id, c1.id, c2.id].includes(u.sandboxId),
    );
    assert.equal(rows.length, 3);
    const price = (u: Row) =>
      u.cpuSeconds * 0.02 + u.memoryGibSeconds * 0.001 + (u.traffic.internet.tx / 1e9) * 0.1;
    const total = rows.reduce((n, u) => n + price(u), 0);
    assert.ok(total > 0);
    assert.ok(Math.abs(tree.total.total - total) < 1e-5, `${tree.total.total} vs ${total}`);
    const nodes = [tree.tree, ...tree.tree.children];
    let shares = 0;
    for (const n of nodes) {
      const u = rows.find((x) => x.sandboxId === n.sandboxId)!;
      assert.ok(Math.abs(n.cost.total - price(u)) < 1e-5, n.sandboxId);
      assert.ok(Math.abs(n.share - price(u) / total) < 1e-5);
      shares += n.share;
      assert.equal(typeof n.latency.runMs, "number");
      assert.equal(n.final, true);
    }
    assert.ok(Math.abs(shares - 1) < 1e-5);
    assert.ok(Math.abs(tree.tree.subtreeCost.total - tree.total.total) < 1e-5);

    // The report by root agrees; CSV has the same figures.
    const rep = (await t.api.get("/v1/costs?groupBy=root")).json;
    const g = rep.groups.find((x: { key: string }) => x.key === root.id);
    assert.equal(g.sandboxes, 3);
    assert.ok(Math.abs(g.cost.total - tree.total.total) < 1e-5);
    const csv = await env.app.request("/v1/costs?groupBy=root&format=csv", {
      headers: { authorization: `Bearer ${t.key}` },
    });
    assert.match(csv.headers.get("content-type") ?? "", /^text\/csv/);
    const lines = (await csv.text()).trim().split("\r\n");
    assert.match(lines[0]!, /^key,sandboxes,cpu_seconds,/);
    const line = lines.find((l) => l.startsWith(`${root.id},`))!;
    assert.equal(line.split(",")[1], "3");
    assert.equal(line.split(",").at(-1), "EUR");

    // Another tenant sees neither the tree nor the rows.
    assert.equal((await other.api.get(`/v1/sandboxes/${root.id}/cost`)).status, 404);
    const theirs = (await other.api.get("/v1/costs?groupBy=root")).json;
    assert.ok(!theirs.groups.some((x: { key: string }) => x.key === root.id));
  });

  test("CSV fields are quoted, and never start a spreadsheet formula", () => {
    assert.equal(csvField("plain"), "plain");
    assert.equal(csvField('a,"b"'), '"a,""b"""');
    assert.equal(csvField("=SUM(A1)"), `"'=SUM(A1)"`);
    assert.equal(csvField(-1), "-1");
  });
});
