// Terminal output helpers: progress lines, JSON, exit codes.
import type { BuildProgress } from "@firebreak/node-agent";

export const EXIT_USAGE = 2;

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Renders build progress on stderr: step lines, and the latest detail line on a TTY. */
export function progressPrinter(verbose: boolean): (p: BuildProgress) => void {
  const tty = process.stderr.isTTY;
  let detailShown = false;
  return (p) => {
    if (p.detail === undefined) {
      if (detailShown && tty) process.stderr.write("\r\x1b[2K");
      detailShown = false;
      process.stderr.write(p.total ? `[${p.index}/${p.total}] ${p.step}\n` : `${p.step}\n`);
      return;
    }
    if (verbose) process.stderr.write(`    ${p.detail}\n`);
    else if (tty) {
      const width = (process.stderr.columns ?? 100) - 6;
      process.stderr.write(`\r\x1b[2K    ${p.detail.slice(0, width)}`);
      detailShown = true;
    }
  };
}

export function log(line: string): void {
  if (process.env["FIREBREAK_LOG"]) process.stderr.write(`firebreak: ${line}\n`);
}
