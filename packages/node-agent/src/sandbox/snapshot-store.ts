// Template snapshots: a VM saved after its first boot (agent ready, start
// command running), restored instead of booted. One per template image,
// shape, kernel and accelerator:
//
//   snapshots/<key>/memory.bin   device + memory state (QEMU migration stream)
//   snapshots/<key>/disk.qcow2   the disk layer at save time (read-only backing
//                                file of every clone's own layer)
//   snapshots/<key>/manifest.json  sizes and sha256 of both, what it was made from
//
// INVARIANT: a snapshot is never restored unless its files match the manifest:
// sizes are checked on every use, checksums once per file version (recorded in
// verified.json). A mismatch quarantines the snapshot and the create boots cold.
// Nothing secret is saved: the snapshot VM has only a throwaway identity, which
// every restore replaces (token, env, clock, entropy).
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import type { KernelManifest } from "../image/kernel.ts";
import { type Accelerator, BASE_CMDLINE } from "../vmm/qemu-vm.ts";
import type { Shape, TemplateImage } from "./node-runtime.ts";

/** Bumped when the VM's device model or snapshot layout changes. */
export const SNAPSHOT_FORMAT = 1;

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
  disk: SnapshotFile;
  createdAt: string;
  bootMs: number;
  saveMs: number;
}

export interface LoadedSnapshot {
  dir: string;
  manifest: SnapshotManifest;
  memoryPath: string;
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

async function sha256File(file: string): Promise<string> {
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
    const snap: LoadedSnapshot = {
      dir,
      manifest,
      memoryPath: path.join(dir, manifest.memory.file),
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
    for (const f of [s.manifest.memory, s.manifest.disk]) {
      const st = await fs.stat(path.join(s.dir, f.file)).catch(() => undefined);
      if (!st) return `${f.file} is missing`;
      if (st.size !== f.bytes) return `${f.file} is ${st.size} bytes, the manifest says ${f.bytes}`;
      stats.push(`${f.file}:${st.ino}:${st.size}:${st.mtimeMs}`);
    }
    const stamp = stats.join(",");
    const verified = await fs.readFile(path.join(s.dir, "verified"), "utf8").catch(() => "");
    if (verified === stamp) return undefined;
    for (const f of [s.manifest.memory, s.manifest.disk]) {
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

  /** Writes a snapshot atomically: `write` fills the two files in a staging directory. */
  async save(
    key: string,
    template: TemplateImage,
    shape: Shape,
    made: { kernel: string; accel: Accelerator },
    write: (memoryFile: string, diskFile: string) => Promise<{ saveMs: number; bootMs: number }>,
  ): Promise<SnapshotManifest> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o755 });
    const staging = path.join(this.dir, `.tmp-${key}-${process.pid}-${Date.now()}`);
    await fs.mkdir(staging, { mode: 0o755 });
    try {
      const memoryFile = path.join(staging, "memory.bin");
      const diskFile = path.join(staging, "disk.qcow2");
      const { saveMs, bootMs } = await write(memoryFile, diskFile);
      for (const f of [memoryFile, diskFile]) {
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
          file: "memory.bin",
          bytes: (await fs.stat(memoryFile)).size,
          sha256: await sha256File(memoryFile),
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

  /** Removes staging directories left by interrupted saves. */
  async removeStale(): Promise<void> {
    for (const e of await fs.readdir(this.dir).catch(() => [] as string[])) {
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
