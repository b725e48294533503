import { deleteTemplate, listTemplates } from "@firebreak/node-agent";
import { build, config } from "../local.ts";
import { printJson, progressPrinter } from "../output.ts";

export async function templateBuild(
  nameOrSpec: string,
  opts: { refresh?: boolean; verbose?: boolean; json?: boolean },
): Promise<void> {
  const t0 = performance.now();
  const t = await build(nameOrSpec, {
    ...(opts.refresh ? { refresh: true } : {}),
    onProgress: progressPrinter(Boolean(opts.verbose)),
  });
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  if (opts.json) {
    printJson({ name: t.name, key: t.key, cached: t.cached, imagePath: t.imagePath, seconds: Number(secs) });
    return;
  }
  process.stdout.write(
    `${t.cached ? "unchanged" : "built"} template ${t.name} (image ${t.key.slice(0, 12)}, ${Object.keys(t.manifest.lock.packages).length} packages locked) in ${secs} s\n`,
  );
}

export async function templateList(opts: { json?: boolean }): Promise<void> {
  const all = await listTemplates(config);
  if (opts.json) {
    printJson(
      all.map((t) => ({
        name: t.name,
        key: t.key,
        builtAt: t.manifest.builtAt,
        imageBytes: t.manifest.imageBytes,
        packages: Object.keys(t.manifest.lock.packages).length,
      })),
    );
    return;
  }
  if (all.length === 0) {
    process.stdout.write("no templates built yet; try: firebreak template build base\n");
    return;
  }
  process.stdout.write("NAME            IMAGE         BUILT                     PACKAGES\n");
  for (const t of all) {
    process.stdout.write(
      `${t.name.padEnd(15)} ${t.key.slice(0, 12)}  ${t.manifest.builtAt.padEnd(25)} ${Object.keys(t.manifest.lock.packages).length}\n`,
    );
  }
}

export async function templateDelete(name: string): Promise<void> {
  if (!(await deleteTemplate(config, name))) {
    process.stderr.write(`no built template named ${name}\n`);
    process.exitCode = 1;
    return;
  }
  process.stdout.write(`deleted template ${name}\n`);
}
