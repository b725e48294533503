import { execFile, spawn } from "node:child_process";
import { access, readFile, writeFile } from "node:fs/promises";
import { createInterface } from "node:readline";

/** Guest clock is corrected only when it is off by more than this. */
export const CLOCK_TOLERANCE_MS = 50;

/** The `date` binary used to set the clock; tests substitute a recorder. */
function dateBin(): string {
  return process.env["FIREBREAK_AGENT_DATE_BIN"] || "date";
}

/** Formats epoch ms as `@<seconds>.<fraction>` for `date -s`. */
export function dateArgument(epochMs: number): string {
  const secs = Math.floor(epochMs / 1000);
  const frac = String(Math.round(epochMs - secs * 1000)).padStart(3, "0");
  return `@${secs}.${frac}`;
}

/**
 * Sets the wall clock to `hostEpochMs` when it differs by more than the tolerance.
 * Returns whether it was set. Runs `date -u -s @<s.frac>` (coreutils) without a shell.
 */
export async function syncClock(hostEpochMs: number, now: () => number = Date.now): Promise<boolean> {
  if (!Number.isFinite(hostEpochMs) || hostEpochMs <= 0)
    throw new Error("wallClockMs must be a positive number");
  if (Math.abs(now() - hostEpochMs) <= CLOCK_TOLERANCE_MS) return false;
  await new Promise<void>((resolve, reject) => {
    execFile(dateBin(), ["-u", "-s", dateArgument(hostEpochMs)], { timeout: 5000 }, (err, _out, stderr) => {
      if (err) reject(new Error(`setting the clock failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
  return true;
}

/**
 * Mixes host-provided bytes into the kernel pool by writing /dev/urandom (this
 * does not credit entropy; it makes restored snapshots diverge from each other).
 */
export async function mixEntropy(base64: string): Promise<void> {
  const bytes = Buffer.from(base64, "base64");
  if (bytes.length === 0) throw new Error("entropy must be non-empty base64");
  await writeFile("/dev/urandom", bytes);
}

/** Guest uptime in ms from /proc/uptime (falls back to the process uptime). */
export async function uptimeMs(): Promise<number> {
  try {
    const text = await readFile("/proc/uptime", "utf8");
    return Math.round(Number(text.split(" ")[0]) * 1000);
  } catch {
    return Math.round(process.uptime() * 1000);
  }
}

/**
 * The privileged helper shipped beside the agent bundle (native/fb-guestctl.c):
 * credits entropy and forces a CRNG reseed, and sets the clock, in one exec.
 * Undefined when the agent runs outside a VM image (tests on the host).
 */
export async function guestctlPath(): Promise<string | undefined> {
  const p = new URL("./bin/fb-guestctl", import.meta.url).pathname;
  try {
    await access(p);
    return p;
  } catch {
    return undefined;
  }
}

/**
 * Applies the host's wall clock (when off by more than the tolerance) and
 * entropy with fb-guestctl. A snapshot clone must not share random state with
 * its siblings: writing /dev/urandom only mixes, RNDRESEEDCRNG reseeds now.
 * The helper runs as a long-lived child (`fb-guestctl serve`, started before
 * any snapshot is taken), so an init after a restore costs one pipe round trip,
 * not a fork and exec on a cold emulated CPU. If it has died, one exec is used.
 */
export function guestctlApply(helper: string, now: () => number = Date.now) {
  let server: ReturnType<typeof spawn> | undefined;
  let lines: AsyncIterator<string> | undefined;
  let queue: Promise<unknown> = Promise.resolve();
  const startServer = () => {
    server = spawn(helper, ["serve"], { stdio: ["pipe", "pipe", "inherit"] });
    server.on("exit", () => {
      server = undefined;
      lines = undefined;
    });
    server.on("error", () => {
      server = undefined;
      lines = undefined;
    });
    lines = createInterface({ input: server.stdout! })[Symbol.asyncIterator]();
  };
  startServer();
  const viaServer = async (args: string[]): Promise<void> => {
    if (!server || !lines) startServer();
    server!.stdin!.write(`${args.join(" ")}\n`);
    const reply = await lines!.next();
    if (reply.done) throw new Error("fb-guestctl exited");
    if (reply.value !== "ok") throw new Error(`fb-guestctl: ${reply.value}`);
  };
  const viaExec = (args: string[]) =>
    new Promise<void>((resolve, reject) => {
      execFile(helper, args, { timeout: 5000 }, (err, _out, stderr) => {
        if (err) reject(new Error(`fb-guestctl failed: ${stderr.trim() || err.message}`));
        else resolve();
      });
    });
  return (hostEpochMs: number, base64: string): Promise<void> => {
    if (!Number.isFinite(hostEpochMs) || hostEpochMs <= 0) {
      return Promise.reject(new Error("wallClockMs must be a positive number"));
    }
    const entropy = Buffer.from(base64, "base64");
    if (entropy.length === 0) return Promise.reject(new Error("entropy must be non-empty base64"));
    const clock =
      Math.abs(now() - hostEpochMs) <= CLOCK_TOLERANCE_MS
        ? "-"
        : `${BigInt(Math.round(hostEpochMs)) * 1_000_000n}`;
    const args = ["init", clock, entropy.toString("hex")];
    // One request at a time on the pipe.
    const run = queue.then(() => viaServer(args).catch(() => viaExec(args)));
    queue = run.catch(() => {});
    return run;
  };
}
