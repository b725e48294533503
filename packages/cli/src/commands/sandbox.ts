// firebreak sandbox create|list|get|exec|kill|pause|resume|fork|events: the
// sandbox verbs of the API, one subcommand each.
import { type CommandHandle, Sandbox, type SandboxInfo, type SandboxState } from "@firebreak/sdk";
import { printJson } from "../output.ts";
import {
  connect,
  describeSandbox,
  formatMetadata,
  onInterrupt,
  printSandboxDetails,
  printTable,
  stdinText,
} from "./api-client.ts";
import { type PolicyFlags, policyFromFlags } from "./network.ts";

export interface CreateOpts extends PolicyFlags {
  template?: string;
  cpus?: number;
  memory?: number;
  timeoutMs?: number;
  env?: Record<string, string>;
  metadata?: Record<string, string>;
  json?: boolean;
}

export async function sandboxCreate(opts: CreateOpts): Promise<void> {
  const policy = await policyFromFlags(opts);
  const sb = await Sandbox.create({
    ...(policy ? { network: { policy } } : {}),
    ...(opts.template !== undefined ? { template: opts.template } : {}),
    ...(opts.cpus !== undefined ? { vcpus: opts.cpus } : {}),
    ...(opts.memory !== undefined ? { memoryMib: opts.memory } : {}),
    ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    ...(opts.env ? { envVars: opts.env } : {}),
    ...(opts.metadata ? { metadata: opts.metadata } : {}),
  });
  if (opts.json) printJson(sb.info);
  else process.stdout.write(`${describeSandbox(sb.info)}\n`);
}

export async function sandboxList(opts: {
  state?: string[];
  metadata?: Record<string, string>;
  limit?: number;
  json?: boolean;
}): Promise<void> {
  const all: SandboxInfo[] = [];
  const max = opts.limit ?? Number.POSITIVE_INFINITY;
  for await (const page of Sandbox.list({
    ...(opts.state?.length ? { state: opts.state as SandboxState[] } : {}),
    ...(opts.metadata ? { metadata: opts.metadata } : {}),
    ...(opts.limit !== undefined ? { limit: Math.min(opts.limit, 1000) } : {}),
  })) {
    all.push(...page.slice(0, max - all.length));
    if (all.length >= max) break;
  }
  if (opts.json) return printJson(all);
  if (all.length === 0) {
    process.stdout.write(
      opts.state?.length || opts.metadata
        ? "no sandboxes match\n"
        : "no sandboxes; start one with: firebreak sandbox create\n",
    );
    return;
  }
  printTable(
    ["ID", "STATE", "TEMPLATE", "VCPUS", "MEMORY", "CREATED", "METADATA"],
    all.map((s) => [
      s.id,
      s.state,
      s.template,
      String(s.vcpus),
      `${s.memoryMib} MiB`,
      s.createdAt,
      formatMetadata(s.metadata),
    ]),
  );
}

export async function sandboxGet(id: string, opts: { json?: boolean }): Promise<void> {
  const sb = await connect(id);
  if (opts.json) printJson(sb.info);
  else printSandboxDetails(sb.info);
}

export interface ExecOpts {
  user?: string;
  workdir?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
}

/**
 * Runs argv in a sandbox with live output; resolves with the exit code. Ctrl-C
 * kills the command (and, with `killOnInterrupt`, the sandbox) and exits 130.
 */
export async function execIn(
  sb: Sandbox,
  argv: string[],
  opts: ExecOpts,
  onInterruptExtra?: () => Promise<unknown>,
): Promise<number> {
  const stdin = await stdinText();
  let handle: CommandHandle | undefined;
  const off = onInterrupt(async () => {
    await handle?.kill().catch(() => {});
    await onInterruptExtra?.();
  });
  try {
    handle = await sb.commands.run(argv, {
      background: true,
      ...(opts.user ? { user: opts.user } : {}),
      ...(opts.workdir ? { cwd: opts.workdir } : {}),
      ...(opts.env ? { envVars: opts.env } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      ...(stdin !== undefined ? { stdin } : {}),
      onStdout: (_s, b) => process.stdout.write(b),
      onStderr: (_s, b) => process.stderr.write(b),
    });
    const r = await handle.wait();
    if (r.exitCode < 0 || (r.error && r.exitCode === 0)) {
      process.stderr.write(`error: the command did not finish: ${r.error ?? "unknown reason"}\n`);
      return 1;
    }
    if (r.error) process.stderr.write(`firebreak: ${r.error}\n`);
    return r.exitCode;
  } finally {
    off();
  }
}

export async function sandboxExec(id: string, argv: string[], opts: ExecOpts): Promise<void> {
  const sb = await connect(id);
  process.exitCode = await execIn(sb, argv, opts);
}

export async function sandboxKill(id: string, opts: { json?: boolean }): Promise<void> {
  const killed = await Sandbox.kill(id);
  if (opts.json) printJson({ id, killed });
  else if (killed) process.stdout.write(`killed sandbox ${id}\n`);
  if (!killed) {
    if (!opts.json) process.stderr.write(`no sandbox ${id}; see: firebreak sandbox list\n`);
    process.exitCode = 1;
  }
}

export async function sandboxPause(id: string, opts: { json?: boolean }): Promise<void> {
  const info = await (await connect(id)).pause();
  if (opts.json) printJson(info);
  else process.stdout.write(`${describeSandbox(info)}\n`);
}

export async function sandboxResume(id: string, opts: { json?: boolean; timeoutMs?: number }): Promise<void> {
  const info = await (await connect(id)).resume(
    opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {},
  );
  if (opts.json) printJson(info);
  else process.stdout.write(`${describeSandbox(info)}\n`);
}

export async function sandboxFork(id: string, opts: { count: number; json?: boolean }): Promise<void> {
  const kids = await (await connect(id)).fork(opts.count);
  if (opts.json) printJson(kids.map((k) => k.info));
  else for (const k of kids) process.stdout.write(`${describeSandbox(k.info)}\n`);
}

export async function sandboxTimeout(id: string, timeoutMs: number): Promise<void> {
  await (await connect(id)).setTimeout(timeoutMs);
  process.stdout.write(`sandbox ${id} now times out ${timeoutMs} ms from now\n`);
}

export async function sandboxLogs(
  id: string,
  opts: { source?: "console" | "start"; follow?: boolean },
): Promise<void> {
  const sb = await connect(id);
  const abort = new AbortController();
  const stop = onInterrupt(async () => abort.abort());
  try {
    for await (const chunk of sb.logs({
      source: opts.source ?? "console",
      follow: Boolean(opts.follow),
      signal: abort.signal,
    })) {
      process.stdout.write(chunk);
    }
  } catch (e) {
    if (!abort.signal.aborted) throw e;
  } finally {
    stop();
  }
}

export async function sandboxEvents(id: string, opts: { json?: boolean }): Promise<void> {
  const events = await (await connect(id)).events();
  if (opts.json) return printJson(events);
  for (const e of events) {
    const detail = Object.keys(e.detail ?? {}).length ? ` ${JSON.stringify(e.detail)}` : "";
    process.stdout.write(`${e.at}  ${e.type}${detail}\n`);
  }
}
