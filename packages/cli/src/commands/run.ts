import fs from "node:fs/promises";
import { activeBuildDirs, type NodeRuntime, type Sandbox, type StartTimings } from "@firebreak/node-agent";
import { localRuntime, resolveTemplate } from "../local.ts";
import { progressPrinter } from "../output.ts";

interface RunOpts {
  template: string;
  cpus: number;
  memory: number;
  disk?: number;
  user?: string;
  workdir?: string;
  env?: Record<string, string>;
  timing?: boolean;
}

export async function runCommand(argv: string[], opts: RunOpts): Promise<void> {
  let rt: NodeRuntime | undefined;
  let sb: Sandbox | undefined;
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    // Tear down whatever exists, then exit as a signalled process would.
    void (async () => {
      for (const d of activeBuildDirs) await fs.rm(d, { recursive: true, force: true });
      await rt?.close();
      process.exit(sig === "SIGINT" ? 130 : 143);
    })();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.on("SIGHUP", onSignal);

  try {
    const template = await resolveTemplate(opts.template, progressPrinter(false));
    rt = await localRuntime();
    if (opts.timing) process.stderr.write(`accelerator: ${rt.accel.accel} (${rt.accel.reason})\n`);
    sb = await rt.create({
      template,
      shape: { vcpus: opts.cpus, memoryMib: opts.memory },
      ...(opts.disk ? { diskMib: opts.disk } : {}),
      ...(opts.env ? { envVars: opts.env } : {}),
    });
    if (opts.timing && sb.timings) process.stderr.write(`sandbox ${sb.id}: ${formatTimings(sb.timings)}\n`);
    const stdin = process.stdin.isTTY ? undefined : readStdin();
    const t0 = performance.now();
    const { exitCode } = await sb.exec(argv, {
      ...(opts.user ? { user: opts.user } : {}),
      ...(opts.workdir ? { cwd: opts.workdir } : {}),
      ...(stdin ? { stdin } : {}),
      onStdout: (b) => process.stdout.write(b),
      onStderr: (b) => process.stderr.write(b),
    });
    if (opts.timing)
      process.stderr.write(`command: ${(performance.now() - t0).toFixed(1)}ms, exit ${exitCode}\n`);
    process.exitCode = exitCode;
  } finally {
    if (!interrupted) await rt?.close();
  }
}

async function* readStdin(): AsyncIterable<Uint8Array> {
  for await (const chunk of process.stdin) yield chunk as Buffer;
}

export function formatTimings(t: StartTimings): string {
  const phases = Object.entries(t.phases)
    .map(([k, v]) => `${k}=${v}ms`)
    .join(" ");
  return (
    `path=${t.path} total=${t.totalMs}ms ${phases}` +
    (t.guestUptimeMs !== undefined ? ` guestUptime=${t.guestUptimeMs}ms` : "") +
    (t.fallback ? ` (fallback: ${t.fallback})` : "")
  );
}
