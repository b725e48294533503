// The node's Prometheus metrics (prom-client, a registry of its own, not the
// global one): start phases, warm pool hits and refills, platform overhead.
// The control plane asks each node for them (the node API's Metrics call)
// and serves them on its own /metrics with a `node` label, so one scrape
// target covers the fleet. Names follow Prometheus conventions: base units
// in the name (seconds, bytes), `_total` for counters.
import {
  Counter,
  Gauge,
  Histogram,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from "prom-client";

/** Buckets for start latencies: warm claims (ms) to cold boots under emulation (tens of s). */
export const START_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export interface PoolGauge {
  template: string;
  shape: string;
  ready: number;
  filling: number;
  target: number;
}

export class NodeMetrics {
  readonly registry = new Registry();
  readonly startPhase: Histogram<"template" | "path" | "phase">;
  readonly poolClaims: Counter<"template" | "result">;
  readonly poolRefill: Histogram<"template">;
  readonly overheadCpu: Counter<"template" | "kind">;
  readonly overheadDropped: Counter;
  #pools: () => PoolGauge[] = () => [];
  #frozen: () => number = () => 0;

  constructor() {
    const registers = [this.registry];
    this.startPhase = new Histogram({
      name: "firebreak_node_start_phase_duration_seconds",
      help: "Time of each phase of a sandbox start on the node, by template, start path and phase.",
      labelNames: ["template", "path", "phase"],
      buckets: START_BUCKETS_S,
      registers,
    });
    this.poolClaims = new Counter({
      name: "firebreak_warm_pool_claims_total",
      help: "Creates that asked a configured warm pool for a VM: result hit (claimed) or miss (empty).",
      labelNames: ["template", "result"],
      registers,
    });
    this.poolRefill = new Histogram({
      name: "firebreak_warm_pool_refill_duration_seconds",
      help: "Time to restore one VM into a warm pool (off the start path).",
      labelNames: ["template"],
      buckets: START_BUCKETS_S,
      registers,
    });
    this.overheadCpu = new Counter({
      name: "firebreak_platform_overhead_cpu_seconds_total",
      help: "CPU the platform spent that no tenant is charged for (warm pools, snapshot preparation, restores and boots before hand-over, template builds), by template and kind.",
      labelNames: ["template", "kind"],
      registers,
    });
    this.overheadDropped = new Counter({
      name: "firebreak_platform_overhead_records_dropped_total",
      help: "Overhead records the node dropped because no control plane collected them in time.",
      registers,
    });
    const self = this;
    new Gauge({
      name: "firebreak_warm_pool_vms",
      help: "Warm pool VMs by template, shape and state (ready: claimable; filling: being restored).",
      labelNames: ["template", "shape", "state"],
      registers,
      collect() {
        this.reset();
        for (const p of self.#pools()) {
          this.set({ template: p.template, shape: p.shape, state: "ready" }, p.ready);
          this.set({ template: p.template, shape: p.shape, state: "filling" }, p.filling);
        }
      },
    });
    new Gauge({
      name: "firebreak_node_sandboxes_frozen",
      help: "Running sandboxes frozen because they were idle (FIREBREAK_FREEZE_IDLE_MS); the next request thaws them.",
      registers,
      collect() {
        this.set(self.#frozen());
      },
    });
    new Gauge({
      name: "firebreak_warm_pool_target_vms",
      help: "Warm pool size asked for, by template and shape.",
      labelNames: ["template", "shape"],
      registers,
      collect() {
        this.reset();
        for (const p of self.#pools()) this.set({ template: p.template, shape: p.shape }, p.target);
      },
    });
  }

  /** Where the pool gauges read from (set by the node service). */
  pools(fn: () => PoolGauge[]): void {
    this.#pools = fn;
  }

  /** Where the frozen-sandbox gauge reads from (set by the node service). */
  frozen(fn: () => number): void {
    this.#frozen = fn;
  }

  /** Every metric with its values (the node API's Metrics answer). */
  async json(): Promise<MetricObjectWithValues<MetricValue<string>>[]> {
    return (await this.registry.getMetricsAsJSON()) as MetricObjectWithValues<MetricValue<string>>[];
  }
}
