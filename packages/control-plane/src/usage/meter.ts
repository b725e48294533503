// Turns a node's cumulative cgroup samples into billable usage: CPU seconds
// actually used, peak memory, and memory GiB-seconds (measured host memory of
// the VM's cgroup, integrated over time with the trapezoid rule).
//
// Honest metering: a sandbox is charged from its hand-over. The node reports
// its counters at that moment (create, fork, resume: `handOver`); what the
// cgroup used before (restore, boot, its time in a warm pool) is the
// platform's overhead, carried in `overheadCpuNanos` and never charged.
//
// A pause destroys the cgroup (its counters restart on resume), so the CPU
// charged before a pause is banked in `cpuBaseNanos`; traffic counters
// (cumulative per network namespace, which a pause also destroys) follow
// the same base + (last - offset) scheme.
//
// The meter's whole state is plain data (`state()`), written with every
// interim usage record, so whichever replica takes the next sample continues
// it exactly (`Meter.fromState`): the node's counters are totals since the
// cgroup was made, never increments.
//
// Replicas: each keeps its meters cached, and a cached meter goes stale as
// soon as another replica stores a newer state (it sampled, paused or
// resumed the sandbox). Continuing a stale meter bills wrong: a pause another
// replica banked is lost or banked twice, and memory is integrated over the
// paused interval. So every stored state carries a revision (`rev`, new at
// every write: `checkpoint()`), and `Meter.current` continues the cached
// meter only while the store still holds the state it wrote or read;
// otherwise it continues the stored raw state.
import { randomBytes } from "node:crypto";
import { TRAFFIC_CLASSES, type TrafficBytes, type UsageSample } from "../node/node-client.ts";

export function zeroTraffic(): TrafficBytes {
  const t = {} as TrafficBytes;
  for (const c of TRAFFIC_CLASSES) t[c] = { tx: 0, rx: 0 };
  return t;
}

const GIB = 2 ** 30;
/** CPU share of one vCPU above which an interval counts as busy. */
export const ACTIVE_SHARE = 0.05;
const MIB = 2 ** 20;

/** Everything a meter knows, as JSON (usage_records.meter_state). */
export interface MeterState {
  v: 1;
  /** CPU charged on cgroups that are gone (before pauses). */
  cpuBaseNanos: number;
  /** The current cgroup's counter at hand-over (not charged). */
  cpuOffsetNanos: number;
  /** The current cgroup's last counter. */
  lastCpuNanos: number;
  /** CPU before every hand-over (the platform's). */
  overheadCpuNanos: number;
  gibSeconds: number;
  peakBytes: number;
  lastAt: number | null;
  lastMemoryBytes: number;
  trafficBase: TrafficBytes;
  trafficOffset: TrafficBytes;
  lastTraffic: TrafficBytes;
  /** When it was first handed over (ms since the epoch), null before. */
  handedOverAt: number | null;
  /**
   * The end of the last sample interval in which it was busy (CPU above
   * ACTIVE_SHARE of one vCPU): the cost report's "idle before teardown".
   */
  lastActiveAt?: number | null;
  /**
   * Restored from a record without a state (written by an older control
   * plane): the next sample only sets the offsets (nothing between the last
   * record and it is charged twice).
   */
  rebaseOnNext?: boolean;
  /** The revision of this state: new at every write (checkpoint), so a replica can tell its cached meter is stale. */
  rev?: string;
}

function isTraffic(t: unknown): t is TrafficBytes {
  if (!t || typeof t !== "object") return false;
  return TRAFFIC_CLASSES.every((c) => {
    const v = (t as Record<string, { tx?: unknown; rx?: unknown }>)[c];
    return v && typeof v.tx === "number" && typeof v.rx === "number";
  });
}

/** A usable MeterState, or undefined (anything else in the column is ignored). */
export function parseMeterState(x: unknown): MeterState | undefined {
  if (!x || typeof x !== "object") return undefined;
  const s = x as Partial<MeterState>;
  const nums = [
    s.cpuBaseNanos,
    s.cpuOffsetNanos,
    s.lastCpuNanos,
    s.overheadCpuNanos,
    s.gibSeconds,
    s.peakBytes,
    s.lastMemoryBytes,
  ];
  if (s.v !== 1 || nums.some((n) => typeof n !== "number" || !Number.isFinite(n))) return undefined;
  if (!isTraffic(s.trafficBase) || !isTraffic(s.trafficOffset) || !isTraffic(s.lastTraffic)) return undefined;
  if (s.rev !== undefined && typeof s.rev !== "string") return undefined;
  return structuredClone(s as MeterState);
}

export class Meter {
  #s: MeterState = {
    v: 1,
    cpuBaseNanos: 0,
    cpuOffsetNanos: 0,
    lastCpuNanos: 0,
    overheadCpuNanos: 0,
    gibSeconds: 0,
    peakBytes: 0,
    lastAt: null,
    lastMemoryBytes: 0,
    trafficBase: zeroTraffic(),
    trafficOffset: zeroTraffic(),
    lastTraffic: zeroTraffic(),
    handedOverAt: null,
  };

  /** Continues a meter from its saved state. */
  static fromState(state: MeterState): Meter {
    const m = new Meter();
    m.#s = structuredClone(state);
    return m;
  }

  /**
   * Continues a meter from a usage record: from its saved state when it has
   * one; else (a record of an older control plane) from its totals, and the
   * next sample only sets the offsets.
   */
  static restore(u: {
    cpuSeconds: number;
    memoryGibSeconds: number;
    memoryPeakMib: number;
    traffic?: TrafficBytes;
    meterState?: unknown;
    chargedFrom?: string | null;
  }): Meter {
    const state = parseMeterState(u.meterState);
    if (state) return Meter.fromState(state);
    const m = new Meter();
    if (u.traffic) m.#s.trafficBase = structuredClone(u.traffic);
    m.#s.cpuBaseNanos = Math.round(u.cpuSeconds * 1e9);
    m.#s.gibSeconds = u.memoryGibSeconds;
    m.#s.peakBytes = u.memoryPeakMib * MIB;
    m.#s.handedOverAt = u.chargedFrom ? Date.parse(u.chargedFrom) : null;
    m.#s.rebaseOnNext = true;
    return m;
  }

  /**
   * The meter to continue for a sandbox: the cached one while the store
   * holds the state it last wrote or read (same `rev`), else the stored raw
   * state (another replica wrote after it), else a meter restored from the
   * record's totals. INVARIANT: a replica never continues a meter another
   * replica has moved on from (that double-counts or loses usage).
   */
  static current(
    cached: Meter | undefined,
    stored:
      | {
          cpuSeconds: number;
          memoryGibSeconds: number;
          memoryPeakMib: number;
          traffic?: TrafficBytes;
          meterState?: unknown;
          chargedFrom?: string | null;
        }
      | undefined,
  ): Meter {
    if (!stored) return cached ?? new Meter();
    const state = parseMeterState(stored.meterState);
    if (cached && (!state || state.rev === cached.rev)) return cached;
    return state ? Meter.fromState(state) : Meter.restore(stored);
  }

  /** The revision of the state this meter last wrote or was restored from. */
  get rev(): string | undefined {
    return this.#s.rev;
  }

  /** A copy of the state (to store with the interim record). */
  state(): MeterState {
    return structuredClone(this.#s);
  }

  /**
   * The state to write, under a new revision (this meter now owns it): the
   * interim and final records store this.
   */
  checkpoint(): MeterState {
    this.#s.rev = randomBytes(8).toString("hex");
    return this.state();
  }

  /**
   * The sandbox was handed over with these counters (a new cgroup: create,
   * fork child, resume): only what follows is charged.
   */
  handOver(s: UsageSample): void {
    const st = this.#s;
    st.cpuOffsetNanos = s.cpuNanos;
    st.lastCpuNanos = s.cpuNanos;
    st.overheadCpuNanos += s.cpuNanos;
    st.trafficOffset = s.traffic ? structuredClone(s.traffic) : zeroTraffic();
    st.lastTraffic = structuredClone(st.trafficOffset);
    st.lastAt = s.at;
    st.lastMemoryBytes = s.memoryBytes;
    // Memory now, not the cgroup's peak: that peak may have been reached before hand-over.
    st.peakBytes = Math.max(st.peakBytes, s.memoryBytes);
    st.handedOverAt ??= s.at;
    delete st.rebaseOnNext;
  }

  add(s: UsageSample): void {
    const st = this.#s;
    if (st.rebaseOnNext) {
      // An older record: its totals are the base; this sample is the new offset.
      this.handOver(s);
      st.overheadCpuNanos -= s.cpuNanos; // not overhead: charged already (or lost), not the platform's
      return;
    }
    if (st.lastAt !== null && s.at > st.lastAt) {
      st.gibSeconds += (((st.lastMemoryBytes + s.memoryBytes) / 2) * ((s.at - st.lastAt) / 1000)) / GIB;
    }
    if (
      st.lastAt !== null &&
      s.at > st.lastAt &&
      s.cpuNanos - st.lastCpuNanos > (s.at - st.lastAt) * 1e6 * ACTIVE_SHARE
    ) {
      st.lastActiveAt = s.at;
    }
    // Counters only grow while the cgroup lives; a smaller value is a stale sample.
    st.lastCpuNanos = Math.max(st.lastCpuNanos, s.cpuNanos);
    st.peakBytes = Math.max(st.peakBytes, s.memoryPeakBytes, s.memoryBytes);
    if (st.lastAt === null || s.at > st.lastAt) {
      st.lastAt = s.at;
      st.lastMemoryBytes = s.memoryBytes;
    }
    st.handedOverAt ??= s.at;
    if (s.traffic) {
      for (const c of TRAFFIC_CLASSES) {
        st.lastTraffic[c] = {
          tx: Math.max(st.lastTraffic[c].tx, s.traffic[c].tx),
          rx: Math.max(st.lastTraffic[c].rx, s.traffic[c].rx),
        };
      }
    }
  }

  /** The cgroup is going away (pause): bank its CPU time; no memory is held until resumed. */
  suspend(): void {
    const st = this.#s;
    st.cpuBaseNanos += Math.max(0, st.lastCpuNanos - st.cpuOffsetNanos);
    st.cpuOffsetNanos = 0;
    st.lastCpuNanos = 0;
    st.lastAt = null;
    st.lastMemoryBytes = 0;
    st.trafficBase = this.traffic;
    st.trafficOffset = zeroTraffic();
    st.lastTraffic = zeroTraffic();
  }

  /** Bytes per class so far (tx from the guest, rx to it), from hand-over. */
  get traffic(): TrafficBytes {
    const st = this.#s;
    const t = zeroTraffic();
    for (const c of TRAFFIC_CLASSES) {
      t[c] = {
        tx: st.trafficBase[c].tx + Math.max(0, st.lastTraffic[c].tx - st.trafficOffset[c].tx),
        rx: st.trafficBase[c].rx + Math.max(0, st.lastTraffic[c].rx - st.trafficOffset[c].rx),
      };
    }
    return t;
  }

  /** CPU charged: used after hand-over. */
  get cpuSeconds(): number {
    const st = this.#s;
    return round6((st.cpuBaseNanos + Math.max(0, st.lastCpuNanos - st.cpuOffsetNanos)) / 1e9);
  }

  /** CPU before hand-over (the platform's). */
  get overheadCpuSeconds(): number {
    return round6(this.#s.overheadCpuNanos / 1e9);
  }

  get memoryPeakMib(): number {
    return round6(this.#s.peakBytes / MIB);
  }

  get memoryGibSeconds(): number {
    return round6(this.#s.gibSeconds);
  }

  /** The end of the last busy sample interval (ms since the epoch), null when never busy. */
  get lastActiveAt(): number | null {
    return this.#s.lastActiveAt ?? null;
  }

  /** When charging began (ms since the epoch), null before the hand-over. */
  get handedOverAt(): number | null {
    return this.#s.handedOverAt;
  }
}

function round6(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
