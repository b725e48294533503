// Built templates on this node: names point at content-addressed images.
import fs from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type NodeConfig, paths } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { type BuiltTemplate, type TemplateManifest, templateImageFromManifest } from "./builder.ts";
import { isTemplateName } from "./template-spec.ts";

/** Templates that ship with Firebreak: templates/<name>/template.json in the checkout. */
export const BUILTIN_TEMPLATES_DIR = fileURLToPath(new URL("../../../../templates", import.meta.url));

export async function builtinTemplates(): Promise<string[]> {
  const entries = await fs.readdir(BUILTIN_TEMPLATES_DIR).catch(() => [] as string[]);
  const out: string[] = [];
  for (const e of entries) {
    if (
      await fs.access(path.join(BUILTIN_TEMPLATES_DIR, e, "template.json")).then(
        () => true,
        () => false,
      )
    )
      out.push(e);
  }
  return out.sort();
}

/** A spec file for `name-or-path`: an existing path, else a built-in template's spec. */
export async function resolveSpecFile(nameOrPath: string): Promise<string> {
  if (nameOrPath.includes("/") || nameOrPath.endsWith(".json")) return path.resolve(nameOrPath);
  const builtin = path.join(BUILTIN_TEMPLATES_DIR, nameOrPath, "template.json");
  // SECURITY: only a template name is looked up among the built-ins (".." is not one).
  if (
    isTemplateName(nameOrPath) &&
    (await fs.access(builtin).then(
      () => true,
      () => false,
    ))
  )
    return builtin;
  throw new FirebreakError(
    "TEMPLATE_NOT_FOUND",
    `no template named ${nameOrPath}; built-in templates: ${(await builtinTemplates()).join(", ") || "none"}. ` +
      "Pass a spec file path (firebreak template build ./my-template.json) to build your own.",
  );
}

export async function getTemplate(config: NodeConfig, name: string): Promise<BuiltTemplate | undefined> {
  // SECURITY: the name is a file name in the templates dir; nothing else is read.
  if (!isTemplateName(name)) return undefined;
  try {
    const tag = JSON.parse(
      await fs.readFile(path.join(paths.templatesDir(config), `${name}.json`), "utf8"),
    ) as {
      key: string;
    };
    // The key names a directory that deleteTemplate removes: only a content address.
    if (typeof tag.key !== "string" || !/^[0-9a-f]{32}$/.test(tag.key)) return undefined;
    const m = JSON.parse(
      await fs.readFile(path.join(paths.imagesDir(config), tag.key, "manifest.json"), "utf8"),
    ) as TemplateManifest;
    if (m.key !== tag.key) return undefined;
    return templateImageFromManifest(config, m);
  } catch {
    return undefined;
  }
}

export async function listTemplates(config: NodeConfig): Promise<BuiltTemplate[]> {
  const files = await fs.readdir(paths.templatesDir(config)).catch(() => [] as string[]);
  const out: BuiltTemplate[] = [];
  for (const f of files) {
    if (!f.endsWith(".json") || f.endsWith(".lock.json")) continue;
    const t = await getTemplate(config, f.slice(0, -5));
    // An alias tag resolves to its template, which is listed under its own name.
    if (t && t.name === f.slice(0, -5)) out.push(t);
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

/** Removes a template's tag and lock, and its image when no other tag uses it. */
export async function deleteTemplate(config: NodeConfig, name: string): Promise<boolean> {
  const t = await getTemplate(config, name); // undefined for anything but a template name
  if (!t) return false;
  const dir = paths.templatesDir(config);
  if (t.name !== name) {
    // Deleting an alias removes only that name.
    await fs.rm(path.join(dir, `${name}.json`), { force: true });
    return true;
  }
  await fs.rm(path.join(dir, `${name}.json`), { force: true });
  await fs.rm(path.join(dir, `${name}.lock.json`), { force: true });
  for (const alias of t.manifest.spec.aliases ?? []) {
    const tag = await fs
      .readFile(path.join(dir, `${alias}.json`), "utf8")
      .then((x) => JSON.parse(x) as { key?: string; aliasOf?: string })
      .catch(() => undefined);
    if (tag?.aliasOf === name) await fs.rm(path.join(dir, `${alias}.json`), { force: true });
  }
  const others = await listTemplates(config);
  if (!others.some((o) => o.key === t.key)) {
    await fs.rm(path.join(paths.imagesDir(config), t.key), { recursive: true, force: true });
  }
  return true;
}
