// E2B snapshots over Firebreak's named node snapshots: a running sandbox is
// saved once (SandboxService.snapshot -> NodeClient.snapshotOf), and any
// number of sandboxes start from it (create with templateID = the snapshot's
// id or one of its names). Deleted with E2B's DELETE /templates/{id}.
// The registry lives in this process's memory: the node keeps the files, and
// a control plane restart forgets the names (docs/E2B.md).
import { randomBytes } from "node:crypto";

export interface E2bSnapshot {
  /** E2B's snapshotID: `snap-<16 chars>`. */
  id: string;
  tenantId: string;
  /** `<tenant>/<name>:default` when named, else the id. */
  names: string[];
  name: string | undefined;
  nodeId: string;
  nodeSnapshotId: string;
  /** The sandbox it was taken of, and that sandbox's template and shape. */
  sandboxId: string;
  template: string;
  vcpus: number;
  memoryMib: number;
  createdAt: string;
}

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
const newSnapshotId = () => `snap-${[...randomBytes(16)].map((b) => ALPHABET[b % ALPHABET.length]).join("")}`;

export class E2bSnapshots {
  readonly #byId = new Map<string, E2bSnapshot>();

  add(s: Omit<E2bSnapshot, "id" | "names" | "createdAt">, tenantName: string): E2bSnapshot {
    const id = newSnapshotId();
    // A name given again moves to the newest snapshot (E2B: a new build of the same template).
    if (s.name !== undefined) {
      for (const old of this.#byId.values()) {
        if (old.tenantId === s.tenantId && old.name === s.name) {
          old.name = undefined;
          old.names = [old.id];
        }
      }
    }
    const snap: E2bSnapshot = {
      ...s,
      id,
      names: s.name !== undefined ? [`${tenantName}/${s.name}:default`] : [id],
      createdAt: new Date().toISOString(),
    };
    this.#byId.set(id, snap);
    return snap;
  }

  /**
   * A tenant's snapshot by id or name (`name`, `name:default`,
   * `<tenant>/name[:default]`). INVARIANT: another tenant's snapshot is never found.
   */
  find(tenantId: string, ref: string): E2bSnapshot | undefined {
    const byId = this.#byId.get(ref.replace(/:default$/, ""));
    if (byId) return byId.tenantId === tenantId ? byId : undefined;
    const name = ref.replace(/:default$/, "").replace(/^[^/]*\//, "");
    for (const s of this.#byId.values()) if (s.tenantId === tenantId && s.name === name) return s;
    return undefined;
  }

  /** A tenant's snapshots, newest first, optionally of one sandbox or matching a name. */
  list(tenantId: string, filter: { sandboxId?: string; name?: string } = {}): E2bSnapshot[] {
    const wanted = filter.name?.replace(/:default$/, "").replace(/^[^/]*\//, "");
    return [...this.#byId.values()]
      .filter(
        (s) =>
          s.tenantId === tenantId &&
          (filter.sandboxId === undefined || s.sandboxId === filter.sandboxId) &&
          (wanted === undefined || s.name === wanted || s.id === wanted),
      )
      .reverse();
  }

  remove(id: string): void {
    this.#byId.delete(id);
  }
}
