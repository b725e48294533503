import { lstat } from "node:fs/promises";
import { dirname } from "node:path";

const verdicts = new Map<string, Promise<boolean>>();

/**
 * Whether no one but root can change what `path` names: every ancestor (not
 * `path` itself) is a real directory owned by root and not writable by group or
 * others. Cached: only root could make a true answer false. Used to skip the
 * user's cwd check for the user's home (the common case), which would otherwise
 * cost a round trip to the user's file worker on every command.
 */
export function onlyRootCanRedirect(path: string): Promise<boolean> {
  let v = verdicts.get(path);
  if (!v) {
    v = (async () => {
      // SECURITY: lstat never follows the last component; each ancestor is checked in turn
      // from the root down, so none of them can be a symlink.
      const chain: string[] = [];
      for (let p = dirname(path); ; p = dirname(p)) {
        chain.unshift(p);
        if (p === dirname(p)) break;
      }
      for (const dir of chain) {
        const st = await lstat(dir).catch(() => undefined);
        if (!st?.isDirectory() || st.uid !== 0 || (st.mode & 0o022) !== 0) return false;
      }
      return true;
    })();
    verdicts.set(path, v);
  }
  return v;
}
