// Platform overhead: CPU this node spent that no tenant is charged for, as
// records a control plane collects (the node API's Overhead call) into its
// overhead account. A tenant's sandbox is charged only from its hand-over
// (warm claim, restore, boot or resume finished): what its cgroup used
// before, and everything pool VMs, snapshot preparation and template builds
// use, is recorded here.
//
// Delivery is exact across control-plane replicas: records carry ids unique
// to this daemon's life (`<node>:<epoch>:<seq>`), a collector stores them
// idempotently and acknowledges the highest seq it stored; only then are
// they dropped here. Bounded: at most `maxRecords` wait (the oldest are
// dropped and counted when nobody collects).
import { randomBytes } from "node:crypto";

export type OverheadKind =
  /** A warm pool VM: restore, init, warm-up and waiting, until claimed or discarded. */
  | "warm_pool"
  /** A snapshot restore before hand-over. */
  | "restore"
  /** A cold boot (and the template's start command) before hand-over. */
  | "boot"
  /** A resume's restore before the sandbox runs again. */
  | "resume"
  /** A fork child's restore before hand-over. */
  | "fork"
  /** The boot that makes a template's snapshot. */
  | "snapshot_prepare"
  /** A template build's VM (run steps). */
  | "template_build"
  /** A start that failed: nobody got the sandbox. */
  | "failed_start";

export interface OverheadRecord {
  /** Unique: `<nodeId>:<epoch>:<seq>`. */
  id: string;
  seq: number;
  nodeId: string;
  kind: OverheadKind;
  template: string;
  /** When the work ended (ISO). */
  at: string;
  cpuSeconds: number;
  /** Wall time the work held its VM. */
  wallSeconds: number;
  /** Guest memory of the VM. */
  memoryMib: number;
  /** The node's sandbox id, when the work was for one. */
  nodeSandboxId?: string;
  /** The control plane's sandbox id, when known. */
  platformId?: string;
}

export class OverheadLedger {
  readonly nodeId: string;
  readonly epoch = randomBytes(4).toString("hex");
  readonly maxRecords: number;
  #seq = 0;
  #records: OverheadRecord[] = [];
  dropped = 0;
  onRecord: ((r: OverheadRecord) => void) | undefined;
  onDrop: ((n: number) => void) | undefined;

  constructor(nodeId: string, maxRecords = 100_000) {
    this.nodeId = nodeId;
    this.maxRecords = maxRecords;
  }

  add(r: Omit<OverheadRecord, "id" | "seq" | "nodeId" | "at"> & { at?: string }): OverheadRecord {
    const seq = ++this.#seq;
    const rec: OverheadRecord = {
      ...r,
      id: `${this.nodeId}:${this.epoch}:${seq}`,
      seq,
      nodeId: this.nodeId,
      at: r.at ?? new Date().toISOString(),
      cpuSeconds: Math.round(r.cpuSeconds * 1e6) / 1e6,
      wallSeconds: Math.round(r.wallSeconds * 1e3) / 1e3,
    };
    this.#records.push(rec);
    // INVARIANT: memory is bounded when nobody collects.
    if (this.#records.length > this.maxRecords) {
      const n = this.#records.length - this.maxRecords;
      this.#records.splice(0, n);
      this.dropped += n;
      this.onDrop?.(n);
    }
    this.onRecord?.(rec);
    return rec;
  }

  /**
   * Drops what the collector stored (seq <= ackSeq of this epoch) and returns
   * what waits, oldest first, at most `limit`.
   */
  take(ack: { epoch: string; seq: number } | undefined, limit = 1000): OverheadRecord[] {
    if (ack && ack.epoch === this.epoch) this.#records = this.#records.filter((r) => r.seq > ack.seq);
    return this.#records.slice(0, limit);
  }

  get pending(): number {
    return this.#records.length;
  }
}
