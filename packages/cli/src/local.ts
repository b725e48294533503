// The local node, used when no server is configured: runtime, agent bundle and
// template resolution (building built-in templates on first use).
import path from "node:path";
import { buildCodeInterpreterBundle, CODE_INTERPRETER_COMPONENT } from "@firebreak/code-interpreter";
import { buildAgentBundle } from "@firebreak/guest-agent";
import {
  type BuildProgress,
  type BuiltTemplate,
  buildTemplate,
  FirebreakError,
  getTemplate,
  loadConfig,
  type NodeConfig,
  NodeRuntime,
  paths,
  readTemplateSpec,
  resolveSpecFile,
} from "@firebreak/node-agent";
import { log } from "./output.ts";

export const config: NodeConfig = loadConfig();

let runtime: Promise<NodeRuntime> | undefined;
export function localRuntime(): Promise<NodeRuntime> {
  runtime ??= NodeRuntime.open(config, { log });
  return runtime;
}

export async function build(
  nameOrSpec: string,
  opts: { refresh?: boolean; onProgress?: (p: BuildProgress) => void },
): Promise<BuiltTemplate> {
  const specFile = await resolveSpecFile(nameOrSpec);
  const { spec, dir } = await readTemplateSpec(specFile);
  if (process.getuid?.() !== 0) {
    throw new FirebreakError(
      "NOT_ROOT",
      "building templates needs root (debootstrap, image ownership). Run as root.",
    );
  }
  const bundleDir = path.join(paths.cacheDir(config), "agent");
  await buildAgentBundle(bundleDir);
  // Firebreak components the spec names, built from this checkout.
  const components: Record<string, string> = {};
  if (spec.components?.includes(CODE_INTERPRETER_COMPONENT)) {
    const ci = path.join(paths.cacheDir(config), CODE_INTERPRETER_COMPONENT);
    components[CODE_INTERPRETER_COMPONENT] = (await buildCodeInterpreterBundle(ci)).dir;
  }
  const built = await buildTemplate(config, spec, dir, {
    ...opts,
    runtime: localRuntime,
    agent: { bundleDir, nodeBinary: process.execPath },
    components,
  });
  // First boot, then snapshot: creates restore this instead of booting.
  const rt = await localRuntime();
  const t0 = performance.now();
  const snap = await rt.prepareSnapshot(built);
  if (snap.created) {
    opts.onProgress?.({
      step: `snapshot saved after first boot (${(snap.manifest.memory.bytes / 2 ** 20).toFixed(0)} MiB memory, ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
      index: 0,
      total: 0,
    });
  }
  return built;
}

/** A built template by name; built-in templates are built on first use. */
export async function resolveTemplate(
  name: string,
  onProgress?: (p: BuildProgress) => void,
): Promise<BuiltTemplate> {
  const t = await getTemplate(config, name);
  if (t) return t;
  await resolveSpecFile(name); // throws TEMPLATE_NOT_FOUND with the fix for unknown names
  process.stderr.write(`template ${name} is not built yet; building it now (once)\n`);
  return build(name, { ...(onProgress ? { onProgress } : {}) });
}
