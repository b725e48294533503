// The control plane's Prometheus metrics (prom-client), served on GET
// /metrics with every node's metrics merged in (the node API's Metrics call,
// each value labelled with its `node`): start latency by path and template,
// creates by path and outcome, failures by error code, API latency by route
// and status, sandboxes by state, node capacity committed and free, warm
// pools (from the nodes), usage counters. Prometheus naming: base units in
// the name, `_total` on counters.
//
// With several replicas each serves its own counters (requests it handled,
// usage it metered); gauges read from the store or the node registry are the
// same on every replica (aggregate them with max, not sum).
import { START_BUCKETS_S } from "@firebreak/node-agent";
import {
  AggregatorRegistry,
  Counter,
  Gauge,
  Histogram,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from "prom-client";
import type { NodeDirectory } from "../node/directory.ts";
import { TRAFFIC_CLASSES } from "../node/node-client.ts";
import type { SandboxObserver } from "../sandboxes/observer.ts";
import { SANDBOX_STATES, type Store } from "../store/store.ts";

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly httpDuration: Histogram<"method" | "route" | "status">;
  readonly apiErrors: Counter<"code">;
  readonly creates: Counter<"path" | "outcome">;
  readonly createFailures: Counter<"code" | "template">;
  readonly startDuration: Histogram<"path" | "template">;
  readonly usageCpu: Counter<"template">;
  readonly usageGib: Counter<"template">;
  readonly usageTraffic: Counter<"class" | "direction">;
  readonly poolHitRatio: Gauge<"template">;
  readonly webhookDeliveries: Counter<"outcome">;
  readonly #nodes: NodeDirectory;

  constructor(store: Store, nodes: NodeDirectory) {
    this.#nodes = nodes;
    const registers = [this.registry];
    this.httpDuration = new Histogram({
      name: "firebreak_http_request_duration_seconds",
      help: "API request latency by method, route and status.",
      labelNames: ["method", "route", "status"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.apiErrors = new Counter({
      name: "firebreak_api_errors_total",
      help: "API answers that were errors, by error code.",
      labelNames: ["code"],
      registers,
    });
    this.creates = new Counter({
      name: "firebreak_sandbox_creates_total",
      help: "Sandbox creates by start path (warm, snapshot, cold; none when it never started) and outcome (started, failed).",
      labelNames: ["path", "outcome"],
      registers,
    });
    this.createFailures = new Counter({
      name: "firebreak_sandbox_create_failures_total",
      help: "Creates that failed, by error code and template.",
      labelNames: ["code", "template"],
      registers,
    });
    this.startDuration = new Histogram({
      name: "firebreak_sandbox_start_duration_seconds",
      help: "Time from a create request to a running sandbox, by start path and template.",
      labelNames: ["path", "template"],
      buckets: START_BUCKETS_S,
      registers,
    });
    this.usageCpu = new Counter({
      name: "firebreak_usage_cpu_seconds_total",
      help: "CPU seconds charged to tenants (after hand-over), by template.",
      labelNames: ["template"],
      registers,
    });
    this.usageGib = new Counter({
      name: "firebreak_usage_memory_gib_seconds_total",
      help: "Memory GiB-seconds charged to tenants, by template.",
      labelNames: ["template"],
      registers,
    });
    this.usageTraffic = new Counter({
      name: "firebreak_usage_traffic_bytes_total",
      help: "Network bytes charged to tenants, by traffic class and direction (tx from the guest, rx to it).",
      labelNames: ["class", "direction"],
      registers,
    });
    this.webhookDeliveries = new Counter({
      name: "firebreak_webhook_attempts_total",
      help: "Webhook delivery attempts made by this control plane, by outcome (delivered, retry, gave_up).",
      labelNames: ["outcome"],
      registers,
    });
    this.poolHitRatio = new Gauge({
      name: "firebreak_warm_pool_hit_ratio",
      help: "Share of creates that asked a warm pool and got a VM (hits / (hits + misses)) since each node started, by template, over every node that answered this scrape.",
      labelNames: ["template"],
      registers,
    });
    new Gauge({
      name: "firebreak_sandboxes",
      help: "Sandboxes that have not ended, by state (read from the store).",
      labelNames: ["state"],
      registers,
      async collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const r of await store.listLiveSandboxes()) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
        for (const st of SANDBOX_STATES) {
          if (st === "killed" || st === "crashed" || st === "failed") continue;
          this.set({ state: st }, counts.get(st) ?? 0);
        }
      },
    });
    const nodeGauge = (name: string, help: string, pick: (r: NodeReportLike) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ["node"],
        registers,
        collect() {
          this.reset();
          for (const v of nodes.views()) if (v.healthy) this.set({ node: v.id }, pick(v.report));
        },
      });
    nodeGauge("firebreak_node_vcpus", "Host CPUs of each node.", (r) => r.vcpus);
    nodeGauge(
      "firebreak_node_committed_vcpus",
      "vCPUs committed to live sandboxes and pool VMs on each node.",
      (r) => r.committedVcpus,
    );
    nodeGauge("firebreak_node_memory_bytes", "Host memory of each node.", (r) => r.memoryMib * 2 ** 20);
    nodeGauge(
      "firebreak_node_committed_memory_bytes",
      "Guest memory committed to live sandboxes and pool VMs on each node.",
      (r) => r.committedMemoryMib * 2 ** 20,
    );
    nodeGauge(
      "firebreak_node_free_memory_bytes",
      "Free host memory of each node, as it last reported.",
      (r) => r.freeMemoryMib * 2 ** 20,
    );
    new Gauge({
      name: "firebreak_node_up",
      help: "1 when a node reported within its lease, else 0.",
      labelNames: ["node"],
      registers,
      collect() {
        this.reset();
        for (const v of nodes.views()) this.set({ node: v.id }, v.healthy ? 1 : 0);
      },
    });
  }

  /** The observer that feeds the create and usage metrics from the sandbox service. */
  observer(): SandboxObserver {
    return {
      created: (e) => {
        this.creates.inc({ path: e.path ?? "none", outcome: e.outcome });
        if (e.outcome === "started" && e.path) {
          this.startDuration.observe({ path: e.path, template: e.template }, e.ms / 1000);
        }
        if (e.outcome === "failed")
          this.createFailures.inc({ code: e.code ?? "INTERNAL", template: e.template });
      },
      metered: (rec, d) => {
        if (d.cpuSeconds > 0) this.usageCpu.inc({ template: rec.template }, d.cpuSeconds);
        if (d.memoryGibSeconds > 0) this.usageGib.inc({ template: rec.template }, d.memoryGibSeconds);
        for (const c of TRAFFIC_CLASSES) {
          if (d.traffic[c].tx > 0) this.usageTraffic.inc({ class: c, direction: "tx" }, d.traffic[c].tx);
          if (d.traffic[c].rx > 0) this.usageTraffic.inc({ class: c, direction: "rx" }, d.traffic[c].rx);
        }
      },
    };
  }

  /** The exposition text: this process's metrics, then every node's (labelled `node`). */
  async text(): Promise<string> {
    const fromNodes = await this.#fromNodes();
    this.#setHitRatio(fromNodes);
    const own = await this.registry.metrics();
    if (!fromNodes.length) return own;
    const merged = AggregatorRegistry.aggregate(
      fromNodes as Parameters<typeof AggregatorRegistry.aggregate>[0],
    );
    return `${own}\n${await merged.metrics()}`;
  }

  /** Pool hit ratio per template from the nodes' claim counters. */
  #setHitRatio(fromNodes: MetricObjectWithValues<MetricValue<string>>[][]): void {
    const claims = new Map<string, { hit: number; miss: number }>();
    for (const node of fromNodes) {
      for (const m of node) {
        if (m.name !== "firebreak_warm_pool_claims_total") continue;
        for (const v of m.values) {
          const t = String(v.labels["template"] ?? "");
          const c = claims.get(t) ?? { hit: 0, miss: 0 };
          if (v.labels["result"] === "hit") c.hit += v.value;
          else if (v.labels["result"] === "miss") c.miss += v.value;
          claims.set(t, c);
        }
      }
    }
    this.poolHitRatio.reset();
    for (const [template, c] of claims) {
      if (c.hit + c.miss > 0) this.poolHitRatio.set({ template }, c.hit / (c.hit + c.miss));
    }
  }

  /** Every node's metrics (prom-client JSON), each value labelled with its node. */
  async #fromNodes(): Promise<MetricObjectWithValues<MetricValue<string>>[][]> {
    const fromNodes: MetricObjectWithValues<MetricValue<string>>[][] = [];
    await Promise.all(
      this.#nodes.ids().map(async (id) => {
        try {
          const node = this.#nodes.node(id);
          if (!node.metrics) return;
          const json = (await withTimeout(node.metrics(), 2_000)) as MetricObjectWithValues<
            MetricValue<string>
          >[];
          fromNodes.push(
            json.map((m) => ({
              ...m,
              values: m.values.map((v) => ({ ...v, labels: { ...v.labels, node: id } })),
            })),
          );
        } catch {
          // a node that does not answer in time is left out of this scrape
        }
      }),
    );
    return fromNodes;
  }
}

interface NodeReportLike {
  vcpus: number;
  committedVcpus: number;
  memoryMib: number;
  committedMemoryMib: number;
  freeMemoryMib: number;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("timed out")), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
