// firebreak template build|list|delete over the API (when a server is
// configured): the build's NDJSON progress stream drives a progress bar.
import fs from "node:fs/promises";
import path from "node:path";
import { FirebreakError } from "@firebreak/node-agent";
import type { BuildProgress, TemplateSpec } from "@firebreak/sdk";
import { printJson } from "../output.ts";
import { client, printTable } from "./api-client.ts";

/** A spec file path (read and sent as { spec }) or a built-in name (sent as { name }). */
async function specOrName(arg: string): Promise<string | TemplateSpec> {
  const looksLikePath = arg.endsWith(".json") || arg.includes("/");
  if (!looksLikePath) return arg;
  let text: string;
  try {
    text = await fs.readFile(path.resolve(arg), "utf8");
  } catch (e) {
    throw new FirebreakError(
      "TEMPLATE_NOT_FOUND",
      `cannot read the template spec ${arg}: ${(e as Error).message}; name a built-in template or an existing spec file`,
    );
  }
  let spec: TemplateSpec;
  try {
    spec = JSON.parse(text) as TemplateSpec;
  } catch (e) {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", `${arg} is not JSON: ${(e as Error).message}`);
  }
  // The server refuses files[] (it would read them from its own disk); say so before sending.
  if (Array.isArray(spec.files) && spec.files.length) {
    throw new FirebreakError(
      "TEMPLATE_SPEC_INVALID",
      `${arg}: files[] cannot be sent to a server (a server never reads files from its own disk for an API spec). ` +
        "Write the files with run steps (cat > /path <<'EOF' ... EOF), or build locally as root without FIREBREAK_URL/FIREBREAK_API_KEY set",
    );
  }
  return spec;
}

/** Renders progress on stderr: a bar and the step on a TTY, plain step lines otherwise. */
export function progressBar(verbose: boolean): (p: BuildProgress) => void {
  const tty = Boolean(process.stderr.isTTY);
  const width = 24;
  let lastStep = "";
  return (p) => {
    if (p.detail !== undefined) {
      if (verbose) process.stderr.write(`    ${p.detail}\n`);
      return;
    }
    if (p.step === lastStep) return;
    lastStep = p.step;
    const counter = p.total ? `[${p.index}/${p.total}]` : "";
    if (!tty || !p.total) {
      process.stderr.write(`${counter ? `${counter} ` : ""}${p.step}\n`);
      return;
    }
    const filled = Math.round((width * Math.min(p.index, p.total)) / p.total);
    const bar = `${"#".repeat(filled)}${"-".repeat(width - filled)}`;
    const cols = (process.stderr.columns ?? 100) - width - counter.length - 5;
    process.stderr.write(`\r\x1b[2K[${bar}] ${counter} ${p.step.slice(0, Math.max(cols, 10))}`);
    if (p.index >= p.total) process.stderr.write("\n");
  };
}

export async function templateBuildApi(
  nameOrSpec: string,
  opts: { verbose?: boolean; json?: boolean; refresh?: boolean },
): Promise<void> {
  if (opts.refresh) process.stderr.write("note: --refresh is not available over the API; ignored\n");
  const t0 = performance.now();
  const show = progressBar(Boolean(opts.verbose));
  let shown = false;
  const t = await client().templates.build(await specOrName(nameOrSpec), {
    onProgress: (p) => {
      shown = true;
      show(p);
    },
  });
  if (shown && process.stderr.isTTY) process.stderr.write("\r\x1b[2K");
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  if (opts.json) return printJson(t);
  const pkgs = Array.isArray(t.packages) ? t.packages.length : t.packages;
  process.stdout.write(
    `built template ${t.name} (image ${t.key.slice(0, 12)}, ${pkgs} packages locked) in ${secs} s\n`,
  );
}

export async function templateListApi(opts: { json?: boolean }): Promise<void> {
  const all = await client().templates.list();
  if (opts.json) return printJson(all);
  if (all.length === 0) {
    process.stdout.write("no templates built yet; try: firebreak template build base\n");
    return;
  }
  printTable(
    ["NAME", "IMAGE", "BUILT", "SIZE", "PACKAGES"],
    all.map((t) => [
      t.name,
      t.key.slice(0, 12),
      t.builtAt,
      `${(t.imageBytes / 2 ** 20).toFixed(0)} MiB`,
      String(Array.isArray(t.packages) ? t.packages.length : t.packages),
    ]),
  );
}

export async function templateDeleteApi(name: string): Promise<void> {
  if (!(await client().templates.delete(name))) {
    process.stderr.write(`no built template named ${name}; see: firebreak template list\n`);
    process.exitCode = 1;
    return;
  }
  process.stdout.write(`deleted template ${name}\n`);
}
