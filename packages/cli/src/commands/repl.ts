// firebreak sandbox repl <id>: cells from stdin run in the sandbox's code
// interpreter, one per line (or, with --multiline, each ending at a blank
// line); output streams as it comes, the cell's value is printed after it.
// State survives between cells (one context). Exits 1 when a cell raised.
import readline from "node:readline";
import type { CodeResult, Execution, Sandbox } from "@firebreak/sdk";
import { connect } from "./api-client.ts";

export interface ReplOpts {
  language?: string;
  context?: string;
  multiline?: boolean;
  json?: boolean;
}

/** How a result reads in a terminal: its text, else what formats it carries. */
export function describeResult(r: CodeResult): string {
  if (r.text !== undefined && !r.png && !r.svg && !r.jpeg) return r.text;
  const formats: string[] = [];
  if (r.png) formats.push(`png ${Math.floor((r.png.length * 3) / 4)} bytes`);
  if (r.jpeg) formats.push(`jpeg ${Math.floor((r.jpeg.length * 3) / 4)} bytes`);
  if (r.svg) formats.push(`svg ${r.svg.length} chars`);
  if (r.html && !r.text) formats.push("html");
  if (r.chart) formats.push(`chart ${String((r.chart as { type?: unknown }).type ?? "")}`.trim());
  if (r.data) formats.push("data");
  if (r.json !== undefined && r.text === undefined) formats.push("json");
  return `[${formats.join(", ") || "result"}]${r.text !== undefined ? ` ${r.text}` : ""}`;
}

async function runCell(sb: Sandbox, code: string, opts: ReplOpts): Promise<Execution> {
  const exec = await sb.runCode(code, {
    ...(opts.context ? { context: opts.context } : { language: opts.language ?? "python" }),
    ...(opts.json
      ? {}
      : {
          onStdout: (t) => process.stdout.write(t),
          onStderr: (t) => process.stderr.write(t),
        }),
  });
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(exec)}\n`);
    return exec;
  }
  for (const r of exec.results) process.stdout.write(`${describeResult(r)}\n`);
  if (exec.error) {
    process.stderr.write(
      `${exec.error.traceback || `${exec.error.name}: ${exec.error.value}`}`.trimEnd().concat("\n"),
    );
  }
  return exec;
}

export async function sandboxRepl(id: string, opts: ReplOpts): Promise<void> {
  const sb = await connect(id);
  const prompt = process.stdin.isTTY && !opts.json;
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  let failed = false;
  let cell: string[] = [];
  const flush = async () => {
    const code = cell.join("\n");
    cell = [];
    if (!code.trim()) return;
    const exec = await runCell(sb, code, opts);
    if (exec.error) failed = true;
  };
  if (prompt) process.stdout.write(">>> ");
  // One cell at a time, in order: the loop reads the next line only after the cell ran.
  for await (const line of rl) {
    if (opts.multiline) {
      if (line.trim() === "") await flush();
      else cell.push(line);
    } else {
      cell.push(line);
      await flush();
    }
    if (prompt) process.stdout.write(opts.multiline && cell.length ? "... " : ">>> ");
  }
  await flush();
  if (prompt) process.stdout.write("\n");
  process.exitCode = failed ? 1 : 0;
}
