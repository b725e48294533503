// Network slots claimed on disk, so several processes on one node (CLI runs,
// tests, the server) never hand out the same slot. A claim is an atomic mkdir.
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { FirebreakError } from "../errors.ts";

export const MAX_SLOTS = 16_000;

export class SlotRegistry {
  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * Claims a free slot for a sandbox, round-robin from where the last claim on
   * this host ended: a slot (its host address, and any connection a client
   * pooled to it) is reused as late as possible.
   */
  async claim(sandboxId: string): Promise<number> {
    await fs.mkdir(this.dir, { recursive: true });
    const cursorFile = path.join(this.dir, "next");
    const start = Number(await fs.readFile(cursorFile, "utf8").catch(() => "0")) % MAX_SLOTS || 0;
    for (let i = 0; i < MAX_SLOTS; i++) {
      const slot = (start + i) % MAX_SLOTS;
      // A veth left behind by a crashed owner still holds the slot's name
      // until the reconciler removes it: skip it rather than fail the create.
      if (existsSync(`/sys/class/net/fbh-${slot}`)) continue;
      const p = path.join(this.dir, String(slot));
      try {
        await fs.mkdir(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EEXIST") continue;
        throw e;
      }
      await fs.writeFile(path.join(p, "owner"), sandboxId);
      // The cursor is only a hint (the mkdir above is the lock): concurrent
      // claims may race on it, and losing that race costs nothing.
      const tmp = `${cursorFile}.${process.pid}.${slot}`;
      await fs
        .writeFile(tmp, String((slot + 1) % MAX_SLOTS))
        .then(() => fs.rename(tmp, cursorFile))
        .catch(() => fs.rm(tmp, { force: true }));
      return slot;
    }
    throw new FirebreakError("CAPACITY_EXHAUSTED", `all ${MAX_SLOTS} network slots are in use on this node`);
  }

  async release(slot: number): Promise<void> {
    await fs.rm(path.join(this.dir, String(slot)), { recursive: true, force: true });
  }

  /** slot -> owning sandbox id ("" while a claim is being written). */
  async list(): Promise<Map<number, string>> {
    const out = new Map<number, string>();
    let entries: string[];
    try {
      entries = await fs.readdir(this.dir);
    } catch {
      return out;
    }
    for (const e of entries) {
      if (!/^\d+$/.test(e)) continue;
      const owner = await fs.readFile(path.join(this.dir, e, "owner"), "utf8").catch(() => "");
      out.set(Number(e), owner.trim());
    }
    return out;
  }
}
