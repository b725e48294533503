// Observability against real microVMs (startServer in this process, the
// local node): a create's trace holds the node's phase spans under the
// control plane's `start` phase; the sandbox is charged from its hand-over
// and the restore before it lands in the platform's overhead account;
// /metrics parses with the node's metrics labelled by node.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import parse from "parse-prometheus-text-format";
import { qemuProcesses } from "../../node-agent/test/helpers.ts";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import {
  ADMIN_KEY,
  assertNoLeftovers,
  commandOutput,
  nodeIds,
  server,
  skipUnlessRoot,
  tenant,
  waitFor,
} from "./helpers.ts";

/** CPU seconds a process (all its threads) has used: utime + stime from /proc (clock ticks of 10 ms). */
async function processCpuSeconds(pid: number): Promise<number> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

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

  /** Starts the start-latency histogram has seen (every path and template). */
  async function startCount(): Promise<number> {
    const m = await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    const fam = parse(await m.text()).find((f) => f.name === "firebreak_sandbox_start_duration_seconds");
    // A histogram's count is its +Inf bucket.
    return (fam?.metrics ?? []).reduce(
      (n, x) => n + Number((x as { buckets?: Record<string, string> }).buckets?.["+Inf"] ?? 0),
      0,
    );
  }

  after(async () => {
    const ours = await nodeIds(srv, made);
    for (const id of made) await admin.delete(`/v1/sandboxes/${id}`).catch(() => {});
    await srv.close();
    await assertNoLeftovers(ours);
  });

  test("a create: node spans join its trace, charged from hand-over, the restore is overhead, /metrics has the node", async () => {
    const t = await tenant(admin);
    const startsBefore = await startCount();
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
    // The phases tile the create: their sum is its measured time within 10%.
    assert.ok(
      Math.abs(phaseSum - server_.durationMs) <= 0.1 * server_.durationMs,
      `phases ${phaseSum.toFixed(1)} ms vs the create's span ${server_.durationMs.toFixed(1)} ms`,
    );
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
    assert.ok((await startCount()) > startsBefore, "the start histogram moved with this start");
  });

  test("a sandbox that burns CPU for 5 s is charged within 10% of what its QEMU used after the hand-over", async () => {
    const t = await tenant(admin);
    const c = await t.api.post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    made.push(c.json.id);
    const [nodeId] = await nodeIds(srv, [c.json.id]);
    const pid = (await qemuProcesses()).get(nodeId!);
    assert.ok(pid, "its QEMU runs");
    const before = await processCpuSeconds(pid);
    const burn = await t.api.post(`/v1/sandboxes/${c.json.id}/commands`, {
      cmd: "end=$((SECONDS + 5)); while [ $SECONDS -lt $end ]; do :; done; echo burnt",
      timeoutMs: 120_000,
    });
    assert.equal(commandOutput(burn.json).stdout.trim(), "burnt");
    const after_ = await processCpuSeconds(pid);
    assert.equal((await t.api.delete(`/v1/sandboxes/${c.json.id}`)).status, 204);
    const rec = (await t.api.get(`/v1/usage/records?sandboxId=${c.json.id}`)).json.records[0];
    assert.equal(rec.final, true);
    const used = after_ - before;
    process.stderr.write(
      `burn: charged ${rec.cpuSeconds} CPU-s; its QEMU used ${used.toFixed(2)} CPU-s between hand-over and kill (${c.json.startPath}); overhead before ${rec.overheadCpuSeconds}\n`,
    );
    // Wall-clock seconds: on a loaded host the guest gets less than 5 CPU-s.
    assert.ok(used >= 1, `the guest burnt CPU: ${used}`);
    assert.ok(
      Math.abs(rec.cpuSeconds - used) <= 0.1 * used,
      `charged ${rec.cpuSeconds} CPU-s vs ${used.toFixed(2)} CPU-s its QEMU used after hand-over`,
    );
  });

  test("a root sandbox creates two children from inside (platform grant); its cost report holds all three and agrees with the ledger", async () => {
    const t = await tenant(admin);
    const prices = await admin.put("/v1/prices", {
      json: { defaults: { cpuSecond: 0.0001, memoryGibSecond: 0.00001 } },
    });
    assert.equal(prices.status, 200, prices.text);
    const root = await t.api.post("/v1/sandboxes", { network: { policy: { platform: true } } });
    assert.equal(root.status, 201, root.text);
    made.push(root.json.id);
    // Inside: no key, only $FIREBREAK_URL (the node's proxy adds the sandbox's credential).
    const script = [
      "set -eu",
      'test -n "$FIREBREAK_URL"',
      "for i in 1 2; do",
      `  id=$(curl -sf -X POST -H 'content-type: application/json' -d '{}' "$FIREBREAK_URL/v1/sandboxes" | grep -o '"id":"[a-z0-9]*"' | head -1 | cut -d'"' -f4)`,
      `  curl -sf -X POST -H 'content-type: application/json' -d '{"cmd":"head -c 3000000 /dev/urandom | sha256sum"}' "$FIREBREAK_URL/v1/sandboxes/$id/commands" | grep -q '"type":"end","exitCode":0'`,
      '  curl -sf -o /dev/null -X DELETE "$FIREBREAK_URL/v1/sandboxes/$id"',
      '  echo "$id"',
      "done",
      // Not its own tenant's other sandboxes, not the rest of the API:
      'curl -s -o /dev/null -w "%{http_code}\\n" "$FIREBREAK_URL/v1/keys"',
    ].join("\n");
    const run = await t.api.post(`/v1/sandboxes/${root.json.id}/commands`, {
      cmd: script,
      timeoutMs: 300_000,
    });
    const out = commandOutput(run.json);
    assert.equal(out.exitCode, 0, `${out.stdout}\n${out.stderr}`);
    const lines = out.stdout.trim().split("\n");
    const children = lines.slice(0, 2);
    assert.equal(lines[2], "403", "the grant reaches only /v1/sandboxes");
    for (const id of children) {
      const rec = await t.api.get(`/v1/sandboxes/${id}`);
      assert.equal(rec.status, 200, rec.text);
      assert.equal(rec.json.parentId, root.json.id);
      assert.equal(rec.json.state, "killed");
    }
    assert.equal((await t.api.delete(`/v1/sandboxes/${root.json.id}`)).status, 204);

    const report = await t.api.get(`/v1/sandboxes/${root.json.id}/cost`);
    assert.equal(report.status, 200, report.text);
    assert.equal(report.json.sandboxes, 3);
    const tree = report.json.tree;
    assert.equal(tree.sandboxId, root.json.id);
    assert.deepEqual(
      tree.children.map((n: { sandboxId: string }) => n.sandboxId).sort(),
      [...children].sort(),
    );
    const nodes = [tree, ...tree.children] as {
      sandboxId: string;
      cpuSeconds: number;
      cost: { total: number };
      share: number;
    }[];
    const sum = nodes.reduce((n, x) => n + x.cost.total, 0);
    assert.ok(
      Math.abs(sum - report.json.total.total) <= 1e-6 * nodes.length + 1e-9,
      `${sum} vs ${report.json.total.total}`,
    );
    const shares = nodes.reduce((n, x) => n + x.share, 0);
    assert.ok(Math.abs(shares - 1) <= 1e-5, `shares add up to ${shares}`);
    for (const child of tree.children) assert.ok(child.share > 0, `child ${child.sandboxId} has its share`);
    // The ledger: the same three rows, the same CPU.
    const rows = (await t.api.get(`/v1/usage/records?rootId=${root.json.id}&limit=10`)).json.records as {
      sandboxId: string;
      cpuSeconds: number;
      final: boolean;
    }[];
    assert.deepEqual(rows.map((r) => r.sandboxId).sort(), nodes.map((n) => n.sandboxId).sort());
    for (const r of rows) {
      const n = nodes.find((x) => x.sandboxId === r.sandboxId)!;
      assert.equal(r.final, true);
      assert.ok(
        Math.abs(r.cpuSeconds - n.cpuSeconds) <= 1e-6,
        `${r.sandboxId}: ledger ${r.cpuSeconds} vs report ${n.cpuSeconds}`,
      );
    }
    process.stderr.write(
      `fan-out from inside: total ${report.json.total.total} ${report.json.currency}; ${nodes.map((n) => `${n.sandboxId}=${n.cost.total} (${(n.share * 100).toFixed(1)}%)`).join(", ")}\n`,
    );
  });
});

describe("a sandbox taken warm (real VMs)", { skip: skipUnlessRoot, timeout: 600_000 }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  const made: string[] = [];

  before(async () => {
    ({ srv, admin } = await server({ warmPools: { base: 1 }, config: { usageIntervalMs: 500 } }));
  });

  after(async () => {
    const ours = await nodeIds(srv, made);
    for (const id of made) await admin.delete(`/v1/sandboxes/${id}`).catch(() => {});
    await srv.close();
    await assertNoLeftovers(ours);
  });

  /** Ready VMs in the base template's pool (the node's gauge, through /metrics). */
  async function poolReady(): Promise<number> {
    const m = await fetch(`${srv.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    const fam = parse(await m.text()).find((f) => f.name === "firebreak_warm_pool_vms");
    return (fam?.metrics ?? [])
      .filter((x) => {
        const l = (x as { labels?: Record<string, string> }).labels ?? {};
        return l["state"] === "ready" && l["template"] === "base";
      })
      .reduce((n, x) => n + Number((x as { value?: string }).value ?? 0), 0);
  }

  test("taken warm and killed at once: charged nearly nothing; the pool's work is the platform's overhead", async () => {
    const t = await tenant(admin);
    await waitFor("the pool holds a ready VM", async () => (await poolReady()) >= 1, 300_000);
    const c = await t.api.post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    made.push(c.json.id);
    assert.equal(c.json.startPath, "warm");
    assert.equal((await t.api.delete(`/v1/sandboxes/${c.json.id}`)).status, 204);
    const rec = (await t.api.get(`/v1/usage/records?sandboxId=${c.json.id}`)).json.records[0];
    assert.equal(rec.final, true);
    process.stderr.write(
      `warm: charged ${rec.cpuSeconds} CPU-s from ${rec.chargedFrom}; the pool VM's ${rec.overheadCpuSeconds} CPU-s before hand-over are overhead\n`,
    );
    assert.ok(rec.overheadCpuSeconds > 0, "the pool VM's restore and wait are counted");
    assert.ok(
      rec.cpuSeconds <= 0.1 * rec.overheadCpuSeconds,
      `charged ${rec.cpuSeconds} CPU-s, the pool's work was ${rec.overheadCpuSeconds}`,
    );
    const overhead = await waitFor(
      "the pool VM's overhead record is collected",
      async () =>
        (
          (await admin.get("/v1/usage/overhead/records?limit=1000")).json.records as {
            sandboxId: string;
            kind: string;
            cpuSeconds: number;
          }[]
        ).find((r) => r.sandboxId === c.json.id),
      30_000,
    );
    assert.equal(overhead.kind, "warm_pool");
    assert.ok(overhead.cpuSeconds > 0);
  });
});
