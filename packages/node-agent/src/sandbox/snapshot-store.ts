// Template snapshots: a VM saved after its first boot (agent ready, start
// command running), restored instead of booted. One per template image,
// shape, kernel and accelerator:
//
//   snapshots/<key>/memory.ram   guest RAM, byte for byte (the snapshot VM ran
//                                with it as a shared memory file); every clone
//                                maps it private and copy-on-write, so clones
//                                share its page cache and never write it
//   snapshots/<key>/state.bin    device state (QEMU migration stream saved
//                                with x-ignore-shared: no RAM, ~100 KB)
//   snapshots/<key>/disk.qcow2   the disk layer at save time (read-only backing
//                                file of every clone's own layer)
//   snapshots/<key>/manifest.json  sizes and sha256 of the three, what it was made from
//
// INVARIANT: a snapshot is never restored unless its files match the manifest:
// sizes are checked on every use, checksums once per file version (recorded in
// `verified`). A mismatch quarantines the snapshot and the create boots cold.
// INVARIANT: a snapshot's files never change once renamed into place (a
// running clone maps memory.ram: changing it would change the clone's RAM);
// a new version is a new directory. Root's, 0444.
// Nothing secret is saved: the snapshot VM has only a throwaway identity, which
// every restore replaces (token, env, clock, entropy), so memory.ram may be
// world-readable (QEMU opens it by path as the VM's uid).
import { createHash } from "node:crypto";
import { createReadStream, constants as fsc } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import type { KernelManifest } from "../image/kernel.ts";
import { type Accelerator, BASE_CMDLINE } from "../vmm/qemu-vm.ts";
import type { Shape, TemplateImage } from "./node-runtime.ts";

/** Bumped when the VM's device model or snapshot layout changes. */
export const SNAPSHOT_FORMAT = 2;

export interface SnapshotFile {
  file: string;
  bytes: number;
  sha256: string;
}

export interface SnapshotManifest {
  key: string;
  format: number;
  template: string;
  templateKey: string;
  shape: Shape;
  kernel: string;
  accel: Accelerator;
  memory: SnapshotFile;
  state: SnapshotFile;
  disk: SnapshotFile;
  createdAt: string;
  bootMs: number;
  saveMs: number;
}

export interface LoadedSnapshot {
  dir: string;
  manifest: SnapshotManifest;
  /** Guest RAM, mapped by every clone. */
  memoryPath: string;
  /** Device state (x-ignore-shared stream). */
  statePath: string;
  diskPath: string;
}

/** A snapshot could not be restored; the caller falls back to a cold boot. */
export class SnapshotRestoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SnapshotRestoreError";
  }
}

export function snapshotKey(
  templateKey: string,
  shape: Shape,
  kernel: KernelManifest,
  accel: Accelerator,
): string {
  return createHash("sha256")
    .update(
      JSON.stringify({
        f: SNAPSHOT_FORMAT,
        templateKey,
        shape,
        k: kernel.vmlinuxSha256,
        accel,
        BASE_CMDLINE,
      }),
    )
    .digest("hex")
    .slice(0, 24);
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

export class SnapshotStore {
  readonly dir: string;
  readonly #memo = new Map<string, LoadedSnapshot>();

  constructor(config: NodeConfig) {
    this.dir = path.join(config.stateDir, "snapshots");
  }

  /** Manifests of the snapshots present (not checked; for reports). */
  async manifests(): Promise<SnapshotManifest[]> {
    const out: SnapshotManifest[] = [];
    for (const e of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (e.startsWith(".")) continue;
      try {
        out.push(
          JSON.parse(await fs.readFile(path.join(this.dir, e, "manifest.json"), "utf8")) as SnapshotManifest,
        );
      } catch {
        // being written or removed
      }
    }
    return out;
  }

  /** The usable snapshot for a key, or why there is none. Cheap after the first call. */
  async find(key: string): Promise<{ snapshot?: LoadedSnapshot; problem?: string }> {
    const dir = path.join(this.dir, key);
    let manifest: SnapshotManifest;
    try {
      manifest = JSON.parse(await fs.readFile(path.join(dir, "manifest.json"), "utf8")) as SnapshotManifest;
    } catch {
      this.#memo.delete(key);
      return {};
    }
    if (manifest.format !== SNAPSHOT_FORMAT || !manifest.state) return {};
    const snap: LoadedSnapshot = {
      dir,
      manifest,
      memoryPath: path.join(dir, manifest.memory.file),
      statePath: path.join(dir, manifest.state.file),
      diskPath: path.join(dir, manifest.disk.file),
    };
    const problem = await this.#check(snap);
    if (problem) {
      await this.quarantine(snap, problem);
      return { problem: `snapshot ${key} is unusable (${problem})` };
    }
    this.#memo.set(key, snap);
    return { snapshot: snap };
  }

  async #check(s: LoadedSnapshot): Promise<string | undefined> {
    const stats = [];
    const files = [s.manifest.memory, s.manifest.state, s.manifest.disk];
    for (const f of files) {
      const st = await fs.stat(path.join(s.dir, f.file)).catch(() => undefined);
      if (!st) return `${f.file} is missing`;
      if (st.size !== f.bytes) return `${f.file} is ${st.size} bytes, the manifest says ${f.bytes}`;
      stats.push(`${f.file}:${st.ino}:${st.size}:${st.mtimeMs}`);
    }
    const stamp = stats.join(",");
    const verified = await fs.readFile(path.join(s.dir, "verified"), "utf8").catch(() => "");
    if (verified === stamp) return undefined;
    for (const f of files) {
      if ((await sha256File(path.join(s.dir, f.file))) !== f.sha256)
        return `${f.file} does not match its checksum`;
    }
    await fs.writeFile(path.join(s.dir, "verified"), stamp);
    return undefined;
  }

  /** Moves a bad snapshot aside (kept for inspection) so it is never used again. */
  async quarantine(s: LoadedSnapshot, reason: string): Promise<void> {
    this.#memo.delete(s.manifest.key);
    const bad = path.join(this.dir, `.bad-${s.manifest.key}-${Date.now()}`);
    await fs.rename(s.dir, bad).catch(() => {});
    await fs.writeFile(path.join(bad, "reason"), reason).catch(() => {});
  }

  /**
   * Writes a snapshot atomically: `write` fills the three files in a staging
   * directory (memory.ram exists, sized and empty, when it is called).
   */
  async save(
    key: string,
    template: TemplateImage,
    shape: Shape,
    made: { kernel: string; accel: Accelerator },
    write: (files: {
      memory: string;
      state: string;
      disk: string;
    }) => Promise<{ saveMs: number; bootMs: number }>,
  ): Promise<SnapshotManifest> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o755 });
    const staging = path.join(this.dir, `.tmp-${key}-${process.pid}-${Date.now()}`);
    // Traversable by every VM (clones open memory.ram by path); nothing in it is secret.
    await fs.mkdir(staging, { mode: 0o755 });
    try {
      const memoryFile = path.join(staging, "memory.ram");
      const stateFile = path.join(staging, "state.bin");
      const diskFile = path.join(staging, "disk.qcow2");
      await createMemoryFile(memoryFile, shape.memoryMib);
      const { saveMs, bootMs } = await write({ memory: memoryFile, state: stateFile, disk: diskFile });
      await syncFile(memoryFile);
      for (const f of [memoryFile, stateFile, diskFile]) {
        await fs.chown(f, 0, 0);
        await fs.chmod(f, 0o444);
      }
      const manifest: SnapshotManifest = {
        key,
        format: SNAPSHOT_FORMAT,
        template: template.name,
        templateKey: template.key!,
        shape,
        kernel: made.kernel,
        accel: made.accel,
        memory: {
          file: "memory.ram",
          bytes: (await fs.stat(memoryFile)).size,
          sha256: await sha256File(memoryFile),
        },
        state: {
          file: "state.bin",
          bytes: (await fs.stat(stateFile)).size,
          sha256: await sha256File(stateFile),
        },
        disk: {
          file: "disk.qcow2",
          bytes: (await fs.stat(diskFile)).size,
          sha256: await sha256File(diskFile),
        },
        createdAt: new Date().toISOString(),
        bootMs: Math.round(bootMs),
        saveMs: Math.round(saveMs),
      };
      await fs.writeFile(path.join(staging, "manifest.json"), JSON.stringify(manifest, null, 2));
      const final = path.join(this.dir, key);
      await fs.rm(final, { recursive: true, force: true });
      await fs.rename(staging, final);
      this.#memo.delete(key);
      return manifest;
    } finally {
      await fs.rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * Removes staging directories left by interrupted saves, and snapshots of an
   * older format (never restored again; a clone still mapping one keeps its
   * pages: removing a file does not change a mapping of it).
   */
  async removeStale(): Promise<void> {
    for (const e of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (!e.startsWith(".")) {
        const m = await fs.readFile(path.join(this.dir, e, "manifest.json"), "utf8").catch(() => "");
        let format = -1;
        try {
          format = (JSON.parse(m) as { format?: number }).format ?? -1;
        } catch {
          // unreadable: left alone (being written by an older node?)
        }
        if (format >= 1 && format < SNAPSHOT_FORMAT) {
          await fs.rm(path.join(this.dir, e), { recursive: true, force: true });
        }
        continue;
      }
      const m = /^\.tmp-[0-9a-f]+-(\d+)-/.exec(e);
      if (
        m &&
        !(await fs.access(`/proc/${m[1]}`).then(
          () => true,
          () => false,
        ))
      ) {
        await fs.rm(path.join(this.dir, e), { recursive: true, force: true });
      }
    }
  }
}

/**
 * A new guest-RAM file of `memoryMib` MiB (sparse: holes read as zeros), root's
 * and 0600 until the caller hands it to the VM that fills it. O_EXCL and
 * O_NOFOLLOW: never an existing file or a planted link.
 */
export async function createMemoryFile(file: string, memoryMib: number): Promise<void> {
  const fh = await fs.open(file, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  try {
    await fh.truncate(memoryMib * 1024 * 1024);
  } finally {
    await fh.close();
  }
}

export async function syncFile(file: string): Promise<void> {
  const fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
