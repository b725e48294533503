// Turns a node's cumulative cgroup samples into billable usage: CPU seconds
// actually used, peak memory, and memory GiB-seconds (measured host memory of
// the VM's cgroup, integrated over time with the trapezoid rule).
//
// A pause destroys the cgroup (its counters restart on resume), so the CPU used
// before a pause is carried in `cpuBaseNanos`.
//
// Traffic counters are cumulative per network namespace, which a pause also
// destroys: the same base + last scheme carries them.
import { TRAFFIC_CLASSES, type TrafficBytes, type UsageSample } from "../node/node-client.ts";

export function zeroTraffic(): TrafficBytes {
  const t = {} as TrafficBytes;
  for (const c of TRAFFIC_CLASSES) t[c] = { tx: 0, rx: 0 };
  return t;
}

const GIB = 2 ** 30;
const MIB = 2 ** 20;

export class Meter {
  cpuBaseNanos = 0;
  lastCpuNanos = 0;
  gibSeconds = 0;
  peakBytes = 0;
  lastAt: number | null = null;
  lastMemoryBytes = 0;
  trafficBase: TrafficBytes = zeroTraffic();
  lastTraffic: TrafficBytes = zeroTraffic();

  static restore(u: {
    cpuSeconds: number;
    memoryGibSeconds: number;
    memoryPeakMib: number;
    traffic?: TrafficBytes;
  }): Meter {
    const m = new Meter();
    if (u.traffic) m.trafficBase = structuredClone(u.traffic);
    m.cpuBaseNanos = Math.round(u.cpuSeconds * 1e9);
    m.gibSeconds = u.memoryGibSeconds;
    m.peakBytes = u.memoryPeakMib * MIB;
    return m;
  }

  add(s: UsageSample): void {
    if (this.lastAt !== null && s.at > this.lastAt) {
      this.gibSeconds += (((this.lastMemoryBytes + s.memoryBytes) / 2) * ((s.at - this.lastAt) / 1000)) / GIB;
    }
    // Counters only grow while the cgroup lives; a smaller value is a stale sample.
    this.lastCpuNanos = Math.max(this.lastCpuNanos, s.cpuNanos);
    this.peakBytes = Math.max(this.peakBytes, s.memoryPeakBytes, s.memoryBytes);
    this.lastAt = s.at;
    this.lastMemoryBytes = s.memoryBytes;
    if (s.traffic) {
      for (const c of TRAFFIC_CLASSES) {
        this.lastTraffic[c] = {
          tx: Math.max(this.lastTraffic[c].tx, s.traffic[c].tx),
          rx: Math.max(this.lastTraffic[c].rx, s.traffic[c].rx),
        };
      }
    }
  }

  /** The cgroup is going away (pause): bank its CPU time; no memory is held until resumed. */
  suspend(): void {
    this.cpuBaseNanos += this.lastCpuNanos;
    this.lastCpuNanos = 0;
    this.lastAt = null;
    this.lastMemoryBytes = 0;
    this.trafficBase = this.traffic;
    this.lastTraffic = zeroTraffic();
  }

  /** Bytes per class so far (tx from the guest, rx to it). */
  get traffic(): TrafficBytes {
    const t = zeroTraffic();
    for (const c of TRAFFIC_CLASSES) {
      t[c] = {
        tx: this.trafficBase[c].tx + this.lastTraffic[c].tx,
        rx: this.trafficBase[c].rx + this.lastTraffic[c].rx,
      };
    }
    return t;
  }

  get cpuSeconds(): number {
    return round6((this.cpuBaseNanos + this.lastCpuNanos) / 1e9);
  }

  get memoryPeakMib(): number {
    return round6(this.peakBytes / MIB);
  }

  get memoryGibSeconds(): number {
    return round6(this.gibSeconds);
  }
}

function round6(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}
