import { chown, mkdir } from "node:fs/promises";
import { dirname } from "node:path";
import type { UserInfo } from "../identity/users.ts";

const canChown = () => process.getuid?.() === 0;

/** chown to the user when the agent runs as root (it always does inside a VM). */
export async function giveToUser(path: string, user: UserInfo): Promise<void> {
  if (canChown()) await chown(path, user.uid, user.gid);
}

/**
 * mkdir -p that hands every directory it created to the user.
 * Returns true when the leaf directory was created.
 */
export async function makeDirsForUser(path: string, user: UserInfo): Promise<boolean> {
  const first = await mkdir(path, { recursive: true });
  if (first === undefined) return false;
  if (canChown()) {
    // Walk back from the leaf to the first directory mkdir created.
    const created: string[] = [];
    for (let p = path; ; p = dirname(p)) {
      created.push(p);
      if (p === first || p === dirname(p)) break;
    }
    for (const p of created) await chown(p, user.uid, user.gid);
  }
  return true;
}
