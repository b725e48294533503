// GET /metrics: Prometheus text a Prometheus parser reads, with units and
// _total in the names, that moves when sandboxes start, fail and use
// resources; and the per-sandbox series behind GET /v1/sandboxes/{id}/metrics
// and E2B's GET /sandboxes/{id}/metrics.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { FirebreakError } from "@firebreak/node-agent";
import parse from "parse-prometheus-text-format";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;
type Families = ReturnType<typeof parse>;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function family(fams: Families, name: string) {
  const f = fams.find((x) => x.name === name);
  assert.ok(f, `no metric ${name}`);
  return f;
}

/** The value of a counter or gauge with these labels (0 when absent). */
function value(fams: Families, name: string, labels: Record<string, string>): number {
  const f = fams.find((x) => x.name === name);
  const m = f?.metrics.find((s) => Object.entries(labels).every(([k, v]) => s.labels?.[k] === v));
  return m ? Number(m.value) : 0;
}

/**
 * A histogram's count with these labels (0 when absent), from its `_count`
 * series. (parse-prometheus-text-format folds a histogram's labelled series
 * into one, so the counts are read from the text it validated.)
 */
function count(text: string, name: string, labels: Record<string, string>): number {
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)\{(.*)\} (\S+)$/.exec(line);
    if (!m || m[1] !== `${name}_count`) continue;
    const got: Record<string, string> = {};
    for (const l of m[2]!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) got[l[1]!] = l[2]!;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return 0;
}

describe("GET /metrics", () => {
  let env: Env;
  let admin: Awaited<ReturnType<Env["tenant"]>>;
  before(async () => {
    env = await inProcess();
    admin = await env.tenant({}, ["admin"]);
  });
  after(() => env.close());

  async function scrapeText(): Promise<{ text: string; fams: Families }> {
    const r = await env.app.request("/metrics", { headers: { authorization: `Bearer ${admin.key}` } });
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const text = await r.text();
    // The parser throws on a line that is not Prometheus text format.
    return { text, fams: parse(text) };
  }
  const scrape = async () => (await scrapeText()).fams;

  test("needs an admin key", async () => {
    const t = await env.tenant();
    assert.equal((await env.app.request("/metrics")).status, 401);
    const r = await env.app.request("/metrics", { headers: { authorization: `Bearer ${t.key}` } });
    assert.equal(r.status, 403);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, "FORBIDDEN");
  });

  test("parses as Prometheus text; names carry units and counters end in _total", async () => {
    const fams = await scrape();
    for (const f of fams) {
      assert.match(f.name, /^firebreak_[a-z_]+$/);
      if (f.type === "COUNTER") assert.match(f.name, /_total$/, f.name);
      if (f.type === "HISTOGRAM") assert.match(f.name, /_seconds$/, f.name);
    }
    // Node capacity, from the node registry.
    assert.equal(value(fams, "firebreak_node_vcpus", { node: env.node.id }), 16);
    assert.equal(value(fams, "firebreak_node_memory_bytes", { node: env.node.id }), 65_536 * 2 ** 20);
    assert.equal(value(fams, "firebreak_node_up", { node: env.node.id }), 1);
  });

  test("start histograms, creates, sandboxes by state, pool hit ratio, failures and API latency move", async () => {
    const t = await env.tenant();
    const { text: beforeText, fams: before } = await scrapeText();
    env.node.warm.set("base", { "1x256": 1 });
    await env.nodes.poll();
    const warm = await t.api.post("/v1/sandboxes", { template: "base" });
    assert.equal(warm.json.startPath, "warm");
    const snap = await t.api.post("/v1/sandboxes", { template: "base" });
    assert.equal(snap.json.startPath, "snapshot");
    env.node.failNextCreate = new FirebreakError("NODE_UNAVAILABLE", "fake failure");
    const failed = await t.api.post("/v1/sandboxes", { template: "base" });
    assert.equal(failed.status, 503);
    const { text: afterText, fams: after } = await scrapeText();
    const moved = (name: string, labels: Record<string, string>) =>
      value(after, name, labels) - value(before, name, labels);
    const movedCount = (name: string, labels: Record<string, string>) =>
      count(afterText, name, labels) - count(beforeText, name, labels);

    for (const path of ["warm", "snapshot"]) {
      assert.equal(
        movedCount("firebreak_sandbox_start_duration_seconds", { path, template: "base" }),
        1,
        path,
      );
      assert.equal(moved("firebreak_sandbox_creates_total", { path, outcome: "started" }), 1, path);
    }
    assert.equal(moved("firebreak_sandbox_creates_total", { path: "none", outcome: "failed" }), 1);
    assert.equal(
      moved("firebreak_sandbox_create_failures_total", { code: "NODE_UNAVAILABLE", template: "base" }),
      1,
    );
    assert.equal(moved("firebreak_api_errors_total", { code: "NODE_UNAVAILABLE" }), 1);
    assert.equal(value(after, "firebreak_sandboxes", { state: "running" }), 2);
    // One hit, one miss on the fake node's pool.
    assert.equal(value(after, "firebreak_warm_pool_hit_ratio", { template: "base" }), 0.5);
    assert.equal(
      value(after, "firebreak_warm_pool_claims_total", {
        template: "base",
        result: "hit",
        node: env.node.id,
      }),
      1,
    );
    // API latency by route pattern (never the raw path) and status.
    assert.equal(
      movedCount("firebreak_http_request_duration_seconds", {
        method: "POST",
        route: "/v1/sandboxes",
        status: "201",
      }),
      2,
    );
    family(after, "firebreak_http_request_duration_seconds");
    assert.ok(!afterText.includes(warm.json.id), "a sandbox id in a label");

    // Usage counters move with the sampler.
    const cpuBefore = value(after, "firebreak_usage_cpu_seconds_total", { template: "base" });
    await sleep(50);
    await env.sandboxes.sampleAll();
    const later = await scrape();
    assert.ok(value(later, "firebreak_usage_cpu_seconds_total", { template: "base" }) > cpuBefore);
    assert.ok(
      value(later, "firebreak_usage_traffic_bytes_total", { class: "internet", direction: "tx" }) > 0,
    );
    env.node.warm.delete("base");
    await t.api.delete(`/v1/sandboxes/${warm.json.id}`);
    await t.api.delete(`/v1/sandboxes/${snap.json.id}`);
  });
});

describe("per-sandbox metrics", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("the sampler's points behind /v1/sandboxes/{id}/metrics and E2B's /sandboxes/{id}/metrics, tenant-scoped", async () => {
    const t = await env.tenant();
    const other = await env.tenant();
    const sb = (await t.api.post("/v1/sandboxes", { template: "base" })).json;
    // The create takes the first sample (the baseline); each later one adds a point.
    await sleep(100);
    await env.sandboxes.sampleAll();
    await sleep(100);
    await env.sandboxes.sampleAll();
    const r = await t.api.get(`/v1/sandboxes/${sb.id}/metrics`);
    assert.equal(r.status, 200);
    assert.equal(r.json.sandboxId, sb.id);
    assert.ok(r.json.points.length >= 2, JSON.stringify(r.json));
    const p = r.json.points.at(-1);
    // The fake node burns 10% of a CPU and holds 100 MiB.
    assert.ok(p.cpuUsedPct > 5 && p.cpuUsedPct < 15, `cpu ${p.cpuUsedPct}`);
    assert.equal(p.memoryUsedBytes, 100 * 2 ** 20);
    assert.equal(p.memoryTotalBytes, sb.memoryMib * 2 ** 20);
    assert.ok(p.networkTxBytes > 0);
    assert.equal(p.timestamp, new Date(p.at).toISOString());
    // A range narrows it.
    const later = await t.api.get(`/v1/sandboxes/${sb.id}/metrics?start=${p.at}`);
    assert.equal(later.json.points.length, 1);

    const e2b = await env.app.request(`/sandboxes/${sb.id}/metrics`, {
      headers: { "x-api-key": t.key.replace(/^fb_/, "e2b_") },
    });
    assert.equal(e2b.status, 200);
    const points = (await e2b.json()) as Record<string, unknown>[];
    assert.equal(points.length, r.json.points.length);
    assert.deepEqual(Object.keys(points[0]!).sort(), [
      "cpuCount",
      "cpuUsedPct",
      "diskTotal",
      "diskUsed",
      "memCache",
      "memTotal",
      "memUsed",
      "timestamp",
      "timestampUnix",
    ]);
    const none = await env.app.request(`/sandboxes/${sb.id}/metrics?start=1&end=2`, {
      headers: { "x-api-key": t.key.replace(/^fb_/, "e2b_") },
    });
    assert.deepEqual(await none.json(), []);

    // Another tenant's sandbox does not exist for it.
    assert.equal((await other.api.get(`/v1/sandboxes/${sb.id}/metrics`)).status, 404);
    // An ended sandbox's series is dropped.
    await t.api.delete(`/v1/sandboxes/${sb.id}`);
    assert.deepEqual((await t.api.get(`/v1/sandboxes/${sb.id}/metrics`)).json.points, []);
  });
});
