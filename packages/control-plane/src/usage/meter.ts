// Turns a node's cumulative cgroup samples into billable usage: CPU seconds
// actually used, peak memory, and memory GiB-seconds (measured host memory of
// the VM's cgroup, integrated over time with the trapezoid rule).
//
// A pause destroys the cgroup (its counters restart on resume), so the CPU used
// before a pause is carried in `cpuBaseNanos`.
import type { UsageSample } from "../node/node-client.ts";

const GIB = 2 ** 30;
const MIB = 2 ** 20;

export class Meter {
  cpuBaseNanos = 0;
  lastCpuNanos = 0;
  gibSeconds = 0;
  peakBytes = 0;
  lastAt: number | null = null;
  lastMemoryBytes = 0;

  static restore(u: { cpuSeconds: number; memoryGibSeconds: number; memoryPeakMib: number }): Meter {
    const m = new Meter();
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
  }

  /** The cgroup is going away (pause): bank its CPU time; no memory is held until resumed. */
  suspend(): void {
    this.cpuBaseNanos += this.lastCpuNanos;
    this.lastCpuNanos = 0;
    this.lastAt = null;
    this.lastMemoryBytes = 0;
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
