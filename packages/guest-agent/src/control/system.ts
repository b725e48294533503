import { execFile } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";

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
