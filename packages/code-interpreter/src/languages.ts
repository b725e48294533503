// Languages the service answers to, the kernel each one runs on, and the
// small snippets the service runs silently in a kernel (environment
// variables, reseeding after a snapshot clone). Values reach the snippets
// only as JSON string literals, never spliced into code as raw text.

export type KernelFamily = "python" | "javascript";

/** Every language name the service accepts (after normalizeLanguage) and its kernel family. */
export const LANGUAGES: Record<string, KernelFamily> = {
  python: "python",
  javascript: "javascript",
  typescript: "javascript",
};

/** E2B's aliases: no language is python, `js` is javascript, `ts` is typescript. */
export function normalizeLanguage(language: string | undefined | null): string {
  const l = (language ?? "").trim().toLowerCase();
  if (!l) return "python";
  if (l === "js") return "javascript";
  if (l === "ts") return "typescript";
  return l;
}

/** A JSON text as a string literal both Python and JavaScript read back exactly. */
function literal(value: unknown): string {
  return JSON.stringify(JSON.stringify(value));
}

export function setEnvSnippet(family: KernelFamily, env: Record<string, string>): string {
  if (Object.keys(env).length === 0) return "";
  if (family === "python")
    return `__import__("os").environ.update(__import__("json").loads(${literal(env)}))`;
  return `for (const [k, v] of Object.entries(JSON.parse(${literal(env)}))) Deno.env.set(k, v);`;
}

/** Puts back what `setEnvSnippet` changed: the global value, or nothing. */
export function resetEnvSnippet(
  family: KernelFamily,
  keys: string[],
  global: Record<string, string>,
): string {
  if (keys.length === 0) return "";
  const restore: Record<string, string> = {};
  const remove: string[] = [];
  for (const k of keys) {
    if (Object.hasOwn(global, k)) restore[k] = global[k]!;
    else remove.push(k);
  }
  if (family === "python") {
    return [
      `__import__("os").environ.update(__import__("json").loads(${literal(restore)}))`,
      `[__import__("os").environ.pop(k, None) for k in __import__("json").loads(${literal(remove)})]`,
    ].join("\n");
  }
  return [
    `for (const [k, v] of Object.entries(JSON.parse(${literal(restore)}))) Deno.env.set(k, v);`,
    `for (const k of JSON.parse(${literal(remove)})) Deno.env.delete(k);`,
  ].join("\n");
}

/**
 * Runs once in every kernel before its first cell. The kernels were started
 * before the template's snapshot was taken, so every sandbox restored from it
 * begins with the same pseudo-random generator state: reseed from the
 * (reseeded) kernel pool.
 */
export function reseedSnippet(family: KernelFamily): string {
  if (family === "python") {
    return [
      `__import__("random").seed()`,
      `__import__("sys").modules.get("numpy") and __import__("sys").modules["numpy"].random.seed()`,
    ].join("\n");
  }
  // V8's Math.random cannot be reseeded: replace it with the OS generator.
  return [
    "{",
    "  const buf = new Uint32Array(2);",
    "  Math.random = function random() {",
    "    crypto.getRandomValues(buf);",
    "    return (buf[0] * 2 ** 21 + (buf[1] >>> 11)) / 2 ** 53;",
    "  };",
    "}",
  ].join("\n");
}
