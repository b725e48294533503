// The files `firebreak up` keeps in its state dir: the pid file of the running
// server (written once it listens, removed when it stops), the log of a
// detached server, and the admin key (root-only). `firebreak down` finds the
// server through them.
import fs from "node:fs";
import path from "node:path";
import { FirebreakError } from "@firebreak/node-agent";

export interface ServerFiles {
  stateDir: string;
  /** The running server's pid (one line). */
  pidFile: string;
  /** stdout and stderr of `firebreak up --detach`. */
  logFile: string;
  /** The admin API key, root-only (0600). */
  adminKeyFile: string;
  /** The control plane's database lock (holds the owner's pid): a fallback for `down`. */
  dbLockFile: string;
}

/** The state dir `firebreak up` uses: --state-dir, FIREBREAK_STATE_DIR or /var/lib/firebreak. */
export function stateDirOf(opt: string | undefined): string {
  return path.resolve(opt ?? process.env["FIREBREAK_STATE_DIR"] ?? "/var/lib/firebreak");
}

export function serverFiles(stateDir: string): ServerFiles {
  return {
    stateDir,
    pidFile: path.join(stateDir, "firebreak-up.pid"),
    logFile: path.join(stateDir, "firebreak-up.log"),
    adminKeyFile: path.join(stateDir, "admin-key"),
    dbLockFile: path.join(stateDir, "control-plane.db.lock"),
  };
}

function writeAtomic(file: string, data: string, mode: number): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, data, { mode });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
}

/**
 * The stored admin key, or undefined when there is none.
 * SECURITY: the key is an admin credential; a file that is not root's or that
 * others can read is refused rather than used (it may have leaked).
 */
export function readAdminKey(files: ServerFiles): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(files.adminKeyFile);
  } catch {
    return undefined;
  }
  if (!st.isFile() || st.uid !== 0 || (st.mode & 0o077) !== 0) {
    throw new FirebreakError(
      "INTERNAL",
      `${files.adminKeyFile} must be a root-owned file only root can read; it is not, so the key in it may have leaked. ` +
        "Revoke that key (firebreak keys revoke ...), delete the file and start again",
    );
  }
  const key = fs.readFileSync(files.adminKeyFile, "utf8").trim();
  return key || undefined;
}

export function writeAdminKey(files: ServerFiles, key: string): void {
  fs.mkdirSync(files.stateDir, { recursive: true, mode: 0o700 });
  writeAtomic(files.adminKeyFile, `${key}\n`, 0o600);
}

export function writePidFile(files: ServerFiles): void {
  writeAtomic(files.pidFile, `${process.pid}\n`, 0o644);
}

/** Removes the pid file if it is this process's. */
export function removePidFile(files: ServerFiles): void {
  try {
    if (fs.readFileSync(files.pidFile, "utf8").trim() === String(process.pid)) fs.rmSync(files.pidFile);
  } catch {
    // already gone
  }
}

/** Whether pid is a live (not zombie) `firebreak up` or control plane process. */
export function isServerProcess(pid: number): boolean {
  let cmdline: string[];
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    if (/\) [ZX] /.test(stat)) return false;
    cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  } catch {
    return false;
  }
  const main = cmdline.findIndex((a) => a.endsWith("/packages/cli/src/main.ts"));
  const cli = main >= 0 && cmdline[main + 1] === "up";
  const cp = cmdline.some((a) => a.endsWith("/packages/control-plane/src/main.ts"));
  return cli || cp;
}

/**
 * The pid of the server running on this state dir: from the pid file, or from
 * the database lock (a server started without one). A stale pid file (its
 * process gone, or the pid reused by another program) is removed.
 */
export function runningServer(files: ServerFiles): number | undefined {
  for (const file of [files.pidFile, files.dbLockFile]) {
    let pid: number;
    try {
      pid = Number(fs.readFileSync(file, "utf8").trim());
    } catch {
      continue;
    }
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isServerProcess(pid)) return pid;
    if (file === files.pidFile) fs.rmSync(file, { force: true });
  }
  return undefined;
}
