// Observability against real microVMs (startServer in this process, the
// local node): a create's trace holds the node's phase spans under the
// control plane's `start` phase; the sandbox is charged from its hand-over
// and the restore before it lands in the platform's overhead account;
// /metrics parses with the node's metrics labelled by node.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import parse from "parse-prometheus-text-format";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import { ADMIN_KEY, assertNoLeftovers, nodeIds, server, skipUnlessRoot, tenant, waitFor } from "./helpers.ts";

interface Span {
  spanId: string;
  parentSpanId: string | null;
  name: string;
  scope: string;
  durationMs: number;
  attributes: Record<string, unknown>;
}

describe("observability (real VMs)", { skip: skipUnlessRoot, timeout: 600_000 }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  const made: string[] = [];

  before(async () => {
    ({ srv, admin } = await server({ config: { usageIntervalMs: 500 } }));
  });

  after(async () => {
    const ours = await nodeIds(srv, made);
    for (const id of made) await admin.delete(`/v1/sandboxes/${id}`).catch(() => {});
    await srv.close();
    await assertNoLeftovers(ours);
  });

  test("a create: node spans join its trace, charged from hand-over, the restore is overhead, /metrics has the node", async () => {
    const t = await tenant(admin);
    const traceId = randomBytes(16).toString("hex");
    const t0 = performance.now();
    const res = await fetch(`${srv.url}/v1/sandboxes`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${t.key}`,
        "content-type": "application/json",
        traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01`,
      },
      body: "{}",
    });
    const createMs = performance.now() - t0;
    const sb = (await res.json()) as { id: string; startPath: string };
    assert.equal(res.status, 201, JSON.stringify(sb));
    made.push(sb.id);

    // The trace: the control plane's phases tile the create; the node's spans are under `start`.
    const tr = await t.api.get(`/v1/traces/${traceId}`);
    assert.equal(tr.status, 200, tr.text);
    const spans = tr.json.spans as Span[];
    const server_ = spans.find((s) => s.name === "POST /v1/sandboxes")!;
    const phases = spans.filter((s) => s.parentSpanId === server_.spanId && s.attributes["firebreak.phase"]);
    assert.deepEqual(
      phases.map((s) => s.name),
      ["admission", "placement", "start", "record"],
    );
    const start = phases.find((s) => s.name === "start")!;
    const nodeSpans = spans.filter((s) => s.scope === "firebreak-node");
    assert.ok(nodeSpans.length > 0, `no node spans: ${spans.map((s) => `${s.scope}/${s.name}`).join(", ")}`);
    const ids = new Map(spans.map((s) => [s.spanId, s]));
    const under = (s: Span, anc: Span): boolean =>
      s.parentSpanId === anc.spanId ||
      (!!s.parentSpanId && !!ids.get(s.parentSpanId) && under(ids.get(s.parentSpanId)!, anc));
    // Every node span is in the request's tree; the node's create and its phases are under `start`.
    for (const s of nodeSpans) assert.ok(under(s, server_), `${s.name} is under the request's span`);
    const inStart = nodeSpans.filter((s) => under(s, start)).map((s) => s.name);
    process.stderr.write(`node spans under start: ${inStart.join(", ")}\n`);
    assert.ok(
      inStart.some((n) => /create/i.test(n)),
      `the node's create is under start: ${inStart.join(", ")}`,
    );
    assert.ok(inStart.length >= 3, "the node's start phases are spans");
    const phaseSum = phases.reduce((n, s) => n + s.durationMs, 0);
    process.stderr.write(
      `create ${createMs.toFixed(1)} ms (client), server span ${server_.durationMs.toFixed(1)} ms, phases ${phaseSum.toFixed(1)} ms: ${phases.map((s) => `${s.name}=${s.durationMs.toFixed(1)}`).join(" ")}\n`,
    );

    // Killed at once: charged from the hand-over; its restore is overhead.
    assert.equal((await t.api.delete(`/v1/sandboxes/${sb.id}`)).status, 204);
    const rec = (await t.api.get(`/v1/usage/records?sandboxId=${sb.id}`)).json.records[0];
    assert.equal(rec.final, true);
    assert.ok(rec.chargedFrom, "charged from the hand-over");
    assert.ok(rec.overheadCpuSeconds > 0, `overhead ${rec.overheadCpuSeconds}`);
    process.stderr.write(
      `charged ${rec.cpuSeconds} CPU-s from ${rec.chargedFrom}; overhead before hand-over ${rec.overheadCpuSeconds} CPU-s (${sb.startPath})\n`,
    );
    await waitFor(
      "the sandbox's overhead record is collected",
      async () =>
        (
          (await admin.get("/v1/usage/overhead/records?limit=1000")).json.records as { sandboxId: string }[]
        ).some((r) => r.sandboxId === sb.id),
      30_000,
    );

    // /metrics parses; the start histogram and the node's own metrics are there.
    const m = await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    assert.equal(m.status, 200);
    const text = await m.text();
    const fams = parse(text);
    assert.ok(fams.some((f) => f.name === "firebreak_sandbox_start_duration_seconds"));
    assert.match(text, /firebreak_node_start_phase_duration_seconds_count\{[^}]*node="/);
  });
});
