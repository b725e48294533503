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

  /** Claims the lowest free slot for a sandbox. */
  async claim(sandboxId: string): Promise<number> {
    await fs.mkdir(this.dir, { recursive: true });
    for (let slot = 0; slot < MAX_SLOTS; slot++) {
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
