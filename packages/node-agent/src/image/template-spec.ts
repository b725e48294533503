// The declarative template spec: what a user writes to describe an
// environment. Validated strictly; every error names the field and the fix.
import fs from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { FirebreakError } from "../errors.ts";

const DEBIAN_PACKAGE = /^[a-z0-9][a-z0-9+.-]+$/;
const ABSOLUTE = /^\/[^\0]*$/;
/** An npm package at one exact version: name@1.2.3 or @scope/name@1.2.3-pre.1. */
const NPM_EXACT = /^(@[a-z0-9][a-z0-9._-]*\/)?[a-z0-9][a-z0-9._-]*@\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/;
const TEMPLATE_NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;
const TEMPLATE_NAME_HINT = "use 1-40 lowercase letters, digits or dashes, starting with a letter or digit";

/**
 * Template names: 1-40 lowercase letters, digits or dashes. A name becomes a
 * file name in the state dir (templates/<name>.json), so every place that
 * takes a name checks it (SECURITY: no `/`, no `..`).
 */
export const TEMPLATE_NAME_RE = /^[a-z0-9][a-z0-9-]{0,39}$/;

export function isTemplateName(name: string): boolean {
  return TEMPLATE_NAME_RE.test(name);
}

/** Path segments of a slash-separated path. */
const segments = (p: string) => p.split("/");

export const TemplateSpecSchema = z
  .object({
    name: z
      .string()
      .regex(
        TEMPLATE_NAME_RE,
        "use 1-40 lowercase letters, digits or dashes, starting with a letter or digit",
      ),
    description: z.string().max(500).optional(),
    debian: z
      .object({
        release: z.enum(["bookworm"]).default("bookworm"),
        packages: z.array(z.string().regex(DEBIAN_PACKAGE, "not a Debian package name")).max(500).default([]),
      })
      .strict()
      .default({ release: "bookworm", packages: [] }),
    files: z
      .array(
        z
          .object({
            // SECURITY: a source is a path relative to the spec file's directory
            // and stays inside it: no absolute path, no `..` (symlinks are
            // checked when the build reads the file, builder.ts).
            src: z
              .string()
              .min(1)
              .max(4096)
              .refine((p) => !p.startsWith("/"), "must be relative to the spec file's directory")
              .refine(
                (p) => !segments(p).includes(".."),
                "must not contain .. (stay inside the spec's directory)",
              )
              .refine((p) => !p.includes("\0"), "must not contain NUL"),
            dest: z
              .string()
              .max(4096)
              .regex(ABSOLUTE, "must be an absolute path inside the guest")
              .refine((p) => !segments(p).includes(".."), "must not contain .."),
            mode: z
              .string()
              .regex(/^0?[0-7]{3,4}$/, "octal, like 0644")
              .optional(),
          })
          .strict(),
      )
      .max(1000)
      .default([]),
    run: z.array(z.string().min(1).max(10_000)).max(200).default([]),
    env: z
      .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "not an environment variable name"), z.string())
      .default({}),
    user: z
      .string()
      .regex(/^[a-z_][a-z0-9_-]{0,31}$/)
      .default("user"),
    workdir: z.string().regex(ABSOLUTE, "must be an absolute path").optional(),
    start: z.string().min(1).max(10_000).optional(),
    ready: z.string().min(1).max(10_000).optional(),
    diskMib: z.number().int().min(512).max(65_536).default(2048),
    // The fields below are optional without defaults, so specs that do not use
    // them keep their content address.
    /** npm packages installed on the host (scripts never run) into /opt/firebreak/npm/node_modules. */
    npm: z
      .object({
        packages: z
          .array(z.string().regex(NPM_EXACT, "name an exact version, like deno@2.9.6 or @scope/pkg@1.2.3"))
          .min(1)
          .max(50),
      })
      .strict()
      .optional(),
    /** Firebreak components copied into /opt/firebreak/<name> (e.g. code-interpreter). */
    components: z
      .array(z.string().regex(/^[a-z][a-z0-9-]{0,39}$/, "a component name, like code-interpreter"))
      .max(10)
      .optional(),
    /** Shape used when a create names none; the template build snapshots this shape. */
    shape: z
      .object({
        vcpus: z.number().int().min(1).max(8),
        memoryMib: z.number().int().min(128).max(16_384),
      })
      .strict()
      .optional(),
    /** More names this template answers to. */
    aliases: z.array(z.string().regex(TEMPLATE_NAME, TEMPLATE_NAME_HINT)).max(10).optional(),
    /** How long `ready` may take to succeed after a cold boot. @default 60000 */
    readyTimeoutMs: z.number().int().min(1000).max(900_000).optional(),
  })
  .strict();

export type TemplateSpec = z.infer<typeof TemplateSpecSchema>;

/** Packages every template gets: PID 1 and what the agent shells out to. */
export const REQUIRED_PACKAGES = ["tini", "coreutils", "bash", "procps"];

export function parseTemplateSpec(raw: unknown, source: string): TemplateSpec {
  const res = TemplateSpecSchema.safeParse(raw);
  if (!res.success) {
    const issues = res.error.issues
      .slice(0, 10)
      .map((i) => `  - ${i.path.length ? i.path.join(".") : "(top level)"}: ${i.message}`)
      .join("\n");
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", `template spec ${source} is invalid:\n${issues}`);
  }
  return res.data;
}

export async function readTemplateSpec(file: string): Promise<{ spec: TemplateSpec; dir: string }> {
  let text: string;
  try {
    text = await fs.readFile(file, "utf8");
  } catch (e) {
    throw new FirebreakError(
      "TEMPLATE_NOT_FOUND",
      `cannot read template spec ${file}: ${(e as NodeJS.ErrnoException).code ?? e}`,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new FirebreakError(
      "TEMPLATE_SPEC_INVALID",
      `template spec ${file} is not valid JSON: ${(e as Error).message}`,
    );
  }
  return { spec: parseTemplateSpec(raw, file), dir: path.dirname(path.resolve(file)) };
}
