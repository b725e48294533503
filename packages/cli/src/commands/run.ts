import fs from "node:fs/promises";
import { activeBuildDirs, type NodeRuntime, type Sandbox, type StartTimings } from "@firebreak/node-agent";
import { Sandbox as ApiSandbox } from "@firebreak/sdk";
import { localRuntime, resolveTemplate } from "../local.ts";
import { progressPrinter } from "../output.ts";
import { onInterrupt, useServer } from "./api-client.ts";
import { execIn } from "./sandbox.ts";

interface RunOpts {
  template: string;
  cpus?: number;
  memory?: number;
  disk?: number;
  user?: string;
  workdir?: string;
  env?: Record<string, string>;
  timing?: boolean;
}

export async function runCommand(argv: string[], opts: RunOpts): Promise<void> {
  if (useServer()) return runOnServer(argv, opts);
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

/** The same over the API (FIREBREAK_URL and FIREBREAK_API_KEY set): create, exec, kill. */
async function runOnServer(argv: string[], opts: RunOpts): Promise<void> {
  let sb: ApiSandbox | undefined;
  const creating = ApiSandbox.create({
    template: opts.template,
    ...(opts.cpus !== undefined ? { vcpus: opts.cpus } : {}),
    ...(opts.memory !== undefined ? { memoryMib: opts.memory } : {}),
    ...(opts.env ? { envVars: opts.env } : {}),
  });
  // Ctrl-C while the VM starts: let the create finish, then kill what it made.
  const off = onInterrupt(async () => {
    process.stderr.write("interrupted; removing the sandbox being created\n");
    await (await creating.catch(() => undefined))?.kill();
  });
  try {
    sb = await creating.finally(off);
    if (opts.timing) {
      const t = sb.info.timings;
      const phases = Object.entries(t?.phases ?? {})
        .map(([k, v]) => `${k}=${v}ms`)
        .join(" ");
      process.stderr.write(
        `sandbox ${sb.id}: path=${sb.info.startPath ?? "?"} total=${t?.totalMs ?? "?"}ms ${phases}\n`,
      );
    }
    const t0 = performance.now();
    const created = sb;
    const exitCode = await execIn(
      sb,
      argv,
      {
        ...(opts.user ? { user: opts.user } : {}),
        ...(opts.workdir ? { workdir: opts.workdir } : {}),
      },
      () => created.kill(),
    );
    if (opts.timing)
      process.stderr.write(`command: ${(performance.now() - t0).toFixed(1)}ms, exit ${exitCode}\n`);
    process.exitCode = exitCode;
  } finally {
    await sb?.kill().catch((e: unknown) => {
      process.stderr.write(`warning: could not kill sandbox ${sb?.id}: ${(e as Error).message}\n`);
    });
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
