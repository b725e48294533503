// Per-sandbox resource metrics: a bounded time series built from the node's
// usage samples (the sampler takes one per running sandbox every 5 s): CPU,
// memory, disk (the sandbox's own disk layer) and network (bytes per interval
// over the billed traffic classes). Served
// by GET /v1/sandboxes/{id}/metrics and E2B's GET /sandboxes/{id}/metrics;
// kept in this process's memory (a control plane restart starts empty), and
// meant to be read by other exporters too (subscribe()).
import { TRAFFIC_CLASSES, type UsageSample } from "../node/node-client.ts";

/** One point: what the sandbox used over the interval that ends at `at`. */
export interface MetricPoint {
  /** End of the interval (ms since the epoch, the node's sample time). */
  at: number;
  /** Length of the interval the CPU figure covers. */
  intervalMs: number;
  vcpus: number;
  /** CPU time over the interval as a share of the sandbox's vCPUs (0-100). */
  cpuUsedPct: number;
  /** Memory charged to the sandbox's cgroup (guest memory the VM touched plus the VMM's own). */
  memoryUsedBytes: number;
  /** Guest memory size. */
  memoryTotalBytes: number;
  /** Bytes the sandbox's own disk layer takes on the host (what it wrote), when the node reports it. */
  diskUsedBytes?: number;
  /** The disk's size as the guest sees it, when the node reports it. */
  diskTotalBytes?: number;
  /** Bytes the guest sent over the interval (every billed traffic class), when the node reports traffic. */
  networkTxBytes?: number;
  /** Bytes the guest received over the interval. */
  networkRxBytes?: number;
}

export interface MetricsSeriesOptions {
  /** Points kept per sandbox (the oldest go first). @default 720 (an hour at 5 s) */
  maxPoints?: number;
  /** Sandboxes with a series at once (the least recently sampled go first). @default 10_000 */
  maxSeries?: number;
}

interface Series {
  points: MetricPoint[];
  last: { at: number; cpuNanos: number; tx?: number; rx?: number } | undefined;
}

/** Bytes summed over the billed classes, or undefined when the sample has no traffic. */
function trafficTotals(s: UsageSample): { tx: number; rx: number } | undefined {
  if (!s.traffic) return undefined;
  let tx = 0;
  let rx = 0;
  for (const c of TRAFFIC_CLASSES) {
    tx += s.traffic[c]?.tx ?? 0;
    rx += s.traffic[c]?.rx ?? 0;
  }
  return { tx, rx };
}

export class MetricsSeries {
  readonly #maxPoints: number;
  readonly #maxSeries: number;
  /** Insertion order is sampling recency: a sample moves its series to the end. */
  readonly #series = new Map<string, Series>();
  readonly #listeners = new Set<(sandboxId: string, p: MetricPoint) => void>();

  constructor(opts: MetricsSeriesOptions = {}) {
    this.#maxPoints = opts.maxPoints ?? 720;
    this.#maxSeries = opts.maxSeries ?? 10_000;
  }

  /**
   * Adds a usage sample. The first sample of a sandbox only sets the
   * baseline; each later one adds a point for the interval since the last.
   * Samples out of order (not newer than the last) are ignored.
   */
  record(sandboxId: string, sample: UsageSample, shape: { vcpus: number; memoryMib: number }): void {
    let s = this.#series.get(sandboxId);
    if (s) this.#series.delete(sandboxId);
    else s = { points: [], last: undefined };
    this.#series.set(sandboxId, s);
    // INVARIANT: at most maxSeries series and maxPoints points each: memory is bounded.
    while (this.#series.size > this.#maxSeries) this.#series.delete(this.#series.keys().next().value!);
    const prev = s.last;
    if (prev && sample.at <= prev.at) return;
    const net = trafficTotals(sample);
    s.last = { at: sample.at, cpuNanos: sample.cpuNanos, ...(net ? { tx: net.tx, rx: net.rx } : {}) };
    if (!prev) return;
    const intervalMs = sample.at - prev.at;
    const cpuNanos = Math.max(0, sample.cpuNanos - prev.cpuNanos);
    const vcpus = Math.max(1, shape.vcpus);
    const pct = (cpuNanos / (intervalMs * 1e6 * vcpus)) * 100;
    const point: MetricPoint = {
      at: sample.at,
      intervalMs,
      vcpus,
      cpuUsedPct: Math.round(Math.min(100, pct) * 100) / 100,
      memoryUsedBytes: sample.memoryBytes,
      memoryTotalBytes: shape.memoryMib * 2 ** 20,
      ...(sample.diskUsedBytes !== undefined ? { diskUsedBytes: sample.diskUsedBytes } : {}),
      ...(sample.diskTotalBytes !== undefined ? { diskTotalBytes: sample.diskTotalBytes } : {}),
      ...(net && prev.tx !== undefined && prev.rx !== undefined
        ? { networkTxBytes: Math.max(0, net.tx - prev.tx), networkRxBytes: Math.max(0, net.rx - prev.rx) }
        : {}),
    };
    s.points.push(point);
    if (s.points.length > this.#maxPoints) s.points.splice(0, s.points.length - this.#maxPoints);
    for (const l of this.#listeners) l(sandboxId, point);
  }

  /** Points with `startMs <= at <= endMs`, oldest first. */
  range(sandboxId: string, startMs = 0, endMs = Number.POSITIVE_INFINITY): MetricPoint[] {
    const s = this.#series.get(sandboxId);
    if (!s) return [];
    return s.points.filter((p) => p.at >= startMs && p.at <= endMs);
  }

  /** The newest point of a sandbox. */
  latest(sandboxId: string): MetricPoint | undefined {
    return this.#series.get(sandboxId)?.points.at(-1);
  }

  /** Drops a sandbox's series (it ended). */
  forget(sandboxId: string): void {
    this.#series.delete(sandboxId);
  }

  /**
   * Drops a sandbox's CPU baseline (it was paused: its cgroup's counter
   * starts again at the resume); its points stay.
   */
  rebase(sandboxId: string): void {
    const s = this.#series.get(sandboxId);
    if (s) s.last = undefined;
  }

  /** Every new point, as it is recorded (exporters); returns the unsubscribe function. */
  subscribe(fn: (sandboxId: string, p: MetricPoint) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  get size(): number {
    return this.#series.size;
  }
}

/** A point as E2B's getMetrics returns it (E2B's SandboxMetric). */
export function e2bMetric(p: MetricPoint) {
  return {
    timestamp: new Date(p.at).toISOString(),
    timestampUnix: Math.floor(p.at / 1000),
    cpuCount: p.vcpus,
    cpuUsedPct: p.cpuUsedPct,
    memUsed: p.memoryUsedBytes,
    memTotal: p.memoryTotalBytes,
    memCache: 0,
    diskUsed: p.diskUsedBytes ?? 0,
    diskTotal: p.diskTotalBytes ?? 0,
  };
}
