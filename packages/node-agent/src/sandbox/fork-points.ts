// Fork points: a running sandbox's memory and disk frozen once, so that any
// number of sandboxes start from them (fork children, a named snapshot's
// sandboxes, the parent itself, which continues on top). One directory each:
//
//   layers/<id>/memory.ram    guest RAM at the freeze (root:<group>, 0440),
//                             mapped private and copy-on-write by every user
//   layers/<id>/state.bin     device state, x-ignore-shared (root, 0400)
//   layers/<id>/disk.qcow2    the parent's disk layer at the freeze (root, 0400)
//   layers/<id>/manifest.json what it is, its users' chain, sha256 of the files
//   layers/<id>/users/<sandbox>  one marker per sandbox using it;
//                             `@<id>` for a named snapshot built on it
//   layers/<id>/named         present while a named snapshot keeps it
//
// SECURITY: a fork point holds the parent's secrets (token, env, whatever its
// processes hold). QEMU opens a memory file by path (memory-backend-file
// takes no descriptor), so the file cannot be root-only like the disk layers
// (those are descriptors). Each fork point gets a group of its own from a
// host-wide range (ForkPointGroups); its directory is 0750 and its memory
// file 0440 to that group, and only the QEMUs of its users are given that
// supplementary group by the jailer. Another sandbox's VM uid has neither the
// group nor any other way in.
// INVARIANT: a fork point's files never change after the freeze (clones map
// memory.ram; a change would change their RAM). Removed only with its last user.
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { writeFileAtomic } from "../host/safe-fs.ts";
import type { DiskLayer } from "../vmm/qemu-vm.ts";
import type { Shape, TemplateImage } from "./sandbox.ts";
import { MAX_SLOTS } from "./slots.ts";
import type { SnapshotFile } from "./snapshot-store.ts";

export const MAX_FORK_POINT_GROUPS = 16_000;

export interface ForkPointManifest {
  id: string;
  /** The group that may read memory.ram (claimed host-wide while the fork point exists). */
  gid: number;
  template: TemplateImage;
  shape: Shape;
  /** The parent's env at the freeze (its children's, under their own). */
  envVars: Record<string, string>;
  /** Disk chain below a user's own layer, base image first (this fork point's disk.qcow2 last). */
  disk: DiskLayer[];
  /** Fork points this one's chain needs (earlier ones, then itself). */
  layers: string[];
  memory: SnapshotFile;
  state: SnapshotFile;
  diskFile: SnapshotFile;
  createdAt: string;
  /** The sandbox frozen. */
  parent: string;
}

export function layersDir(config: NodeConfig): string {
  return path.join(config.stateDir, "layers");
}

export function forkPointDir(config: NodeConfig, id: string): string {
  if (!/^l[a-z0-9]{1,40}$/.test(id))
    throw new FirebreakError("SNAPSHOT_NOT_FOUND", `no snapshot ${id} on this node`);
  return path.join(layersDir(config), id);
}

export async function readForkPoint(config: NodeConfig, id: string): Promise<ForkPointManifest | undefined> {
  try {
    return JSON.parse(
      await fs.readFile(path.join(forkPointDir(config, id), "manifest.json"), "utf8"),
    ) as ForkPointManifest;
  } catch {
    return undefined;
  }
}

export async function writeForkPointManifest(config: NodeConfig, m: ForkPointManifest): Promise<void> {
  // SECURITY: names the parent's env: root-only.
  await writeFileAtomic(
    path.join(forkPointDir(config, m.id), "manifest.json"),
    JSON.stringify(m, null, 2),
    0o600,
  );
}

export function isNamed(config: NodeConfig, id: string): boolean {
  return existsSync(path.join(forkPointDir(config, id), "named"));
}

/**
 * Host-wide claims on fork-point groups: gid = vmUidBase + MAX_SLOTS + n, so
 * never a VM's own uid/gid (vmUidBase + slot). A claim is an atomic mkdir of
 * <runDir>/groups/<n>; its `owner` file names the fork point's directory. The
 * run dir is host-wide (every state dir on the host shares it): no two fork
 * points anywhere on the host hold the same group.
 */
export class ForkPointGroups {
  readonly dir: string;
  readonly #base: number;

  constructor(config: NodeConfig) {
    this.dir = path.join(config.runDir, "groups");
    this.#base = config.vmUidBase + MAX_SLOTS;
  }

  gidOf(n: number): number {
    return this.#base + n;
  }

  /** Claims a free group for the fork point at `owner` (its directory). */
  async claim(owner: string): Promise<number> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (let n = 0; n < MAX_FORK_POINT_GROUPS; n++) {
      if (await this.#take(n, owner)) return this.gidOf(n);
    }
    throw new FirebreakError(
      "CAPACITY_EXHAUSTED",
      `all ${MAX_FORK_POINT_GROUPS} fork-point groups are in use on this host`,
    );
  }

  /**
   * Keeps `gid` for `owner` when it is free or already its own (after a host
   * reboot emptied the run dir); false when another fork point holds it.
   */
  async adopt(gid: number, owner: string): Promise<boolean> {
    const n = gid - this.#base;
    if (!Number.isInteger(n) || n < 0 || n >= MAX_FORK_POINT_GROUPS) return false;
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const held = await fs.readFile(path.join(this.dir, String(n), "owner"), "utf8").catch(() => undefined);
    if (held !== undefined) return held === owner;
    return this.#take(n, owner);
  }

  async release(gid: number): Promise<void> {
    await fs.rm(path.join(this.dir, String(gid - this.#base)), { recursive: true, force: true });
  }

  /** Releases claims whose fork point directory is gone; returns what it released. */
  async releaseOrphans(): Promise<string[]> {
    const out: string[] = [];
    for (const e of await fs.readdir(this.dir).catch(() => [] as string[])) {
      if (!/^\d+$/.test(e)) continue;
      const claim = path.join(this.dir, e);
      const owner = await fs.readFile(path.join(claim, "owner"), "utf8").catch(() => "");
      if (owner && existsSync(owner)) continue;
      if (!owner) {
        // Being written (mkdir then owner): leave young claims alone.
        const st = await fs.stat(claim).catch(() => undefined);
        if (st && Date.now() - st.mtimeMs < 30_000) continue;
      }
      await fs.rm(claim, { recursive: true, force: true });
      out.push(`group ${this.gidOf(Number(e))}`);
    }
    return out;
  }

  async #take(n: number, owner: string): Promise<boolean> {
    const claim = path.join(this.dir, String(n));
    try {
      await fs.mkdir(claim);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw e;
    }
    await fs.writeFile(path.join(claim, "owner"), owner);
    return true;
  }
}
