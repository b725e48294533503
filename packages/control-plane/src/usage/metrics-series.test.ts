import assert from "node:assert/strict";
import { test } from "node:test";
import { MetricsSeries } from "./metrics-series.ts";

const sample = (at: number, cpuNanos: number, memoryBytes = 100 * 2 ** 20) => ({
  at,
  cpuNanos,
  memoryBytes,
  memoryPeakBytes: memoryBytes,
});

test("points are CPU shares of the interval since the last sample, per vCPU", () => {
  const m = new MetricsSeries();
  const shape = { vcpus: 2, memoryMib: 512 };
  m.record("a", sample(1_000, 0), shape);
  assert.deepEqual(m.range("a"), [], "the first sample is only the baseline");
  // 5 s at 2 vCPUs = 10 CPU-seconds; 2.5 CPU-seconds used = 25 %.
  m.record("a", sample(6_000, 2.5e9), shape);
  m.record("a", sample(11_000, 2.5e9 + 10e9), shape);
  const pts = m.range("a");
  assert.equal(pts.length, 2);
  assert.deepEqual(
    pts.map((p) => [p.at, p.intervalMs, p.cpuUsedPct]),
    [
      [6_000, 5_000, 25],
      [11_000, 5_000, 100],
    ],
  );
  assert.equal(pts[0]!.memoryTotalBytes, 512 * 2 ** 20);
  assert.equal(pts[0]!.memoryUsedBytes, 100 * 2 ** 20);
  assert.deepEqual(
    m.range("a", 7_000, 20_000).map((p) => p.at),
    [11_000],
  );
  assert.deepEqual(m.range("a", 0, 5_000), []);
});

test("a sample not newer than the last is ignored; a counter that goes back counts as zero", () => {
  const m = new MetricsSeries();
  const shape = { vcpus: 1, memoryMib: 256 };
  m.record("a", sample(1_000, 5e9), shape);
  m.record("a", sample(1_000, 9e9), shape);
  m.record("a", sample(500, 9e9), shape);
  assert.deepEqual(m.range("a"), []);
  m.rebase("a"); // paused: the cgroup's counter restarts
  m.record("a", sample(2_000, 1e9), shape);
  m.record("a", sample(3_000, 0), shape);
  assert.deepEqual(
    m.range("a").map((p) => p.cpuUsedPct),
    [0],
  );
});

test("points per sandbox and series are bounded, oldest first out; forget drops a series", () => {
  const m = new MetricsSeries({ maxPoints: 3, maxSeries: 2 });
  const shape = { vcpus: 1, memoryMib: 256 };
  for (let i = 0; i <= 10; i++) m.record("a", sample(i * 1000, i * 1e8), shape);
  assert.deepEqual(
    m.range("a").map((p) => p.at),
    [8000, 9000, 10000],
  );
  m.record("b", sample(1, 0), shape);
  m.record("c", sample(1, 0), shape);
  assert.equal(m.size, 2);
  assert.deepEqual(m.range("a"), [], "the least recently sampled series went first");
  m.forget("b");
  assert.equal(m.size, 1);
});

test("subscribers see every new point", () => {
  const m = new MetricsSeries();
  const seen: string[] = [];
  const off = m.subscribe((id, p) => seen.push(`${id}@${p.at}`));
  const shape = { vcpus: 1, memoryMib: 256 };
  m.record("a", sample(1, 0), shape);
  m.record("a", sample(2, 0), shape);
  off();
  m.record("a", sample(3, 0), shape);
  assert.deepEqual(seen, ["a@2"]);
});
