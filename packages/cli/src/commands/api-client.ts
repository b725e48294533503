// Glue between the CLI and the API: when to use the server, SDK objects built
// from the environment, and the table and duration formatting the API
// commands share.
import { Firebreak, Sandbox, type SandboxInfo } from "@firebreak/sdk";

/**
 * Whether `run` and `template` go to a server: FIREBREAK_URL and
 * FIREBREAK_API_KEY both set. With only one of them set, warns and stays local.
 */
export function useServer(): boolean {
  const url = Boolean(process.env["FIREBREAK_URL"]);
  const key = Boolean(process.env["FIREBREAK_API_KEY"]);
  if (url && key) return true;
  if (url !== key) {
    process.stderr.write(
      url
        ? "warning: FIREBREAK_URL is set but FIREBREAK_API_KEY is not; using the local node (set FIREBREAK_API_KEY to use the server)\n"
        : "warning: FIREBREAK_API_KEY is set but FIREBREAK_URL is not; using the local node (set FIREBREAK_URL to use the server)\n",
    );
  }
  return false;
}

/** Admin namespaces; throws CONFIG_MISSING (set FIREBREAK_URL / FIREBREAK_API_KEY, or run `firebreak up`). */
export function client(): Firebreak {
  return new Firebreak();
}

export function connect(id: string): Promise<Sandbox> {
  return Sandbox.connect(id);
}

/** Writes rows as aligned columns under a header. */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd();
  process.stdout.write(`${[line(header), ...rows.map(line)].join("\n")}\n`);
}

export function formatMetadata(m: Record<string, string> | undefined): string {
  return Object.entries(m ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}

/** One line about a sandbox: id, state, shape, start path. */
export function describeSandbox(s: SandboxInfo): string {
  const start = s.startPath ? `; ${s.startPath} start${s.timings ? ` in ${s.timings.totalMs} ms` : ""}` : "";
  const timeout = s.timeoutAt ? `; times out at ${s.timeoutAt}` : "";
  return `sandbox ${s.id} ${s.state} (template ${s.template}, ${s.vcpus} vCPU, ${s.memoryMib} MiB${start}${timeout})`;
}

/** Key/value lines for `sandbox get`. */
export function printSandboxDetails(s: SandboxInfo): void {
  const rows: [string, string | undefined][] = [
    ["id", s.id],
    ["state", s.state],
    ["template", s.template],
    ["vcpus", String(s.vcpus)],
    ["memoryMib", String(s.memoryMib)],
    ["metadata", formatMetadata(s.metadata) || undefined],
    ["createdAt", s.createdAt],
    ["readyAt", s.readyAt ?? undefined],
    ["timeoutAt", s.timeoutAt ?? undefined],
    ["endedAt", s.endedAt],
    ["endReason", s.endReason],
    ["startPath", s.startPath ?? undefined],
    [
      "timings",
      s.timings
        ? `total=${s.timings.totalMs}ms ${Object.entries(s.timings.phases)
            .map(([k, v]) => `${k}=${v}ms`)
            .join(" ")}`
        : undefined,
    ],
    ["parentId", s.parentId],
    ["rootId", s.rootId],
  ];
  for (const [k, v] of rows) if (v !== undefined && v !== "") process.stdout.write(`${k.padEnd(10)} ${v}\n`);
}

/** Reads all of stdin when it is not a terminal (the API takes stdin as one UTF-8 string). */
export async function stdinText(): Promise<string | undefined> {
  if (process.stdin.isTTY) return undefined;
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** Runs `onSignal` once on SIGINT/SIGTERM/SIGHUP, then exits 130 (Ctrl-C) or 143. */
export function onInterrupt(onSignal: () => Promise<unknown>): () => void {
  let fired = false;
  const handler = (sig: NodeJS.Signals) => {
    if (fired) return;
    fired = true;
    void onSignal()
      .catch(() => {})
      .finally(() => process.exit(sig === "SIGINT" ? 130 : 143));
  };
  for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, handler);
  return () => {
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.off(s, handler);
  };
}
