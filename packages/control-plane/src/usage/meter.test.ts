// The meter: charged from the hand-over (what the VM used before is the
// platform's overhead), pauses bank CPU, the raw state continues exactly, and
// replicas that share a sandbox's meter through the store never continue a
// stale one (Meter.current).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { UsageSample } from "../node/node-client.ts";
import { Meter, type MeterState, parseMeterState, zeroTraffic } from "./meter.ts";

const S = 1e9;
const MIB = 2 ** 20;

function sample(at: number, cpuSeconds: number, memoryMib = 100, internetTx = 0): UsageSample {
  const traffic = zeroTraffic();
  traffic.internet.tx = internetTx;
  return {
    at,
    cpuNanos: cpuSeconds * S,
    memoryBytes: memoryMib * MIB,
    memoryPeakBytes: memoryMib * MIB,
    traffic,
  };
}

/** The interim record a replica writes: totals and the meter's raw state (as service.ts #usage). */
function record(m: Meter) {
  return {
    cpuSeconds: m.cpuSeconds,
    memoryGibSeconds: m.memoryGibSeconds,
    memoryPeakMib: m.memoryPeakMib,
    traffic: m.traffic,
    chargedFrom: m.handedOverAt === null ? null : new Date(m.handedOverAt).toISOString(),
    meterState: m.checkpoint() as unknown,
  };
}

describe("meter", () => {
  test("charges from the hand-over: the warm pool's and the restore's CPU is overhead", () => {
    const m = new Meter();
    // A pool VM that burned 3.1 CPU-seconds before it was claimed.
    m.handOver(sample(1_000, 3.1, 120, 5_000));
    m.add(sample(1_200, 3.12, 120, 5_100));
    assert.equal(m.cpuSeconds, 0.02);
    assert.equal(m.overheadCpuSeconds, 3.1);
    assert.equal(m.traffic.internet.tx, 100);
    assert.equal(m.handedOverAt, 1_000);
    // 120 MiB for 0.2 s.
    assert.ok(Math.abs(m.memoryGibSeconds - (120 / 1024) * 0.2) < 1e-6);
  });

  test("a pause banks the CPU so far; the resume's restore is overhead; the paused time holds no memory", () => {
    const m = new Meter();
    m.handOver(sample(0, 1));
    m.add(sample(10_000, 6)); // 5 s of CPU
    m.suspend();
    m.handOver(sample(100_000, 0.5)); // new cgroup: 0.5 s spent restoring
    m.add(sample(110_000, 2.5)); // 2 s more
    assert.equal(m.cpuSeconds, 7);
    assert.equal(m.overheadCpuSeconds, 1.5);
    // 100 MiB for 10 s twice: the 90 s paused are not integrated.
    assert.ok(Math.abs(m.memoryGibSeconds - (100 / 1024) * 20) < 1e-6);
  });

  test("a stale (smaller) counter does not move the meter back", () => {
    const m = new Meter();
    m.handOver(sample(0, 0));
    m.add(sample(2_000, 2));
    m.add(sample(1_000, 1));
    assert.equal(m.cpuSeconds, 2);
  });

  test("the raw state continues exactly; the totals of an old record do not double-count", () => {
    const m = new Meter();
    m.handOver(sample(0, 1));
    m.add(sample(5_000, 4));
    const rec = record(m);
    const next = sample(10_000, 7);
    const fromState = Meter.restore(rec);
    fromState.add(next);
    m.add(next);
    assert.equal(fromState.cpuSeconds, 6);
    assert.deepEqual(fromState.state().cpuBaseNanos, m.state().cpuBaseNanos);
    assert.equal(fromState.memoryGibSeconds, m.memoryGibSeconds);
    // A record of an older control plane (no state): its totals are the base,
    // the next sample only sets the offset (its cumulative counter is not added).
    const legacy = Meter.restore({ ...rec, meterState: null });
    legacy.add(next);
    assert.equal(legacy.cpuSeconds, 3);
    legacy.add(sample(15_000, 8));
    assert.equal(legacy.cpuSeconds, 4);
  });

  test("parseMeterState refuses what is not a meter state", () => {
    assert.equal(parseMeterState(null), undefined);
    assert.equal(parseMeterState({ v: 2 }), undefined);
    const good = new Meter().state();
    assert.ok(parseMeterState(good));
    assert.equal(parseMeterState({ ...good, cpuBaseNanos: "1" }), undefined);
    assert.equal(parseMeterState({ ...good, rev: 5 }), undefined);
    assert.equal(parseMeterState({ ...good, trafficBase: {} }), undefined);
  });
});

describe("meters across replicas (Meter.current)", () => {
  /**
   * Two replicas share one stored record; each keeps its meters cached. The
   * sandbox is sampled by A, paused and resumed by B, then sampled and ended
   * by A. `current` decides which meter each continues.
   */
  function run(pick: (cached: Meter | undefined, stored: ReturnType<typeof record> | undefined) => Meter) {
    let stored: ReturnType<typeof record> | undefined;
    const cache = { a: undefined as Meter | undefined, b: undefined as Meter | undefined };
    const use = (r: "a" | "b", fn: (m: Meter) => void) => {
      const m = pick(cache[r], stored);
      cache[r] = m;
      fn(m);
      stored = record(m);
    };
    use("a", (m) => m.handOver(sample(0, 2)));
    use("a", (m) => m.add(sample(5_000, 4))); // 2 s
    use("b", (m) => m.add(sample(10_000, 6))); // 2 s more
    use("b", (m) => m.suspend());
    use("b", (m) => m.handOver(sample(60_000, 1))); // resumed: new cgroup, 1 s restoring
    use("a", (m) => m.add(sample(65_000, 3))); // 2 s
    use("a", (m) => m.add(sample(70_000, 4))); // 1 s
    return stored!;
  }

  test("each replica continues the stored raw state: the totals equal one meter's", () => {
    const got = run((cached, stored) => Meter.current(cached, stored));
    assert.equal(got.cpuSeconds, 7);
    // Running 10 s before the pause and 10 s after, 100 MiB throughout.
    assert.ok(Math.abs(got.memoryGibSeconds - (100 / 1024) * 20) < 1e-6);
    assert.equal(parseMeterState(got.meterState)?.overheadCpuNanos, 3 * S);
  });

  test("continuing a replica's own cached meter (the bug) bills wrong", () => {
    // What the control plane did before: a replica kept its cached meter.
    const got = run((cached, stored) => cached ?? (stored ? Meter.restore(stored) : new Meter()));
    assert.notEqual(got.cpuSeconds, 7);
  });

  test("a replica keeps its own meter while the store holds what it wrote", () => {
    const m = new Meter();
    m.handOver(sample(0, 0));
    const rec = record(m);
    m.add(sample(1_000, 1)); // not written yet
    assert.equal(Meter.current(m, rec), m);
    assert.equal(Meter.current(m, undefined), m);
    // A record without a state (older control plane) does not replace a live meter.
    assert.equal(Meter.current(m, { ...rec, meterState: null }), m);
    // Another replica wrote after it: continue what it wrote.
    const other = Meter.fromState(rec.meterState as MeterState);
    other.add(sample(2_000, 2));
    const theirs = record(other);
    const cont = Meter.current(m, theirs);
    assert.notEqual(cont, m);
    assert.equal(cont.cpuSeconds, 2);
  });
});
