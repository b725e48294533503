import { isAbsolute, join, normalize } from "node:path";

/**
 * Resolves a path from a request like envd: an empty path is the sandbox's
 * default workdir (or the home without one), absolute paths are kept, `~` and
 * `~/x` expand to the user's home, anything else is relative to the home. The
 * result is normalised and has no trailing slash (except "/").
 */
export function resolveUserPath(path: string, home: string, defaultWorkdir = ""): string {
  let p = path === "" ? defaultWorkdir || home : path;
  if (p === "~") p = home;
  else if (p.startsWith("~/")) p = join(home, p.slice(2));
  else if (!isAbsolute(p)) p = join(home, p);
  const n = normalize(p);
  return n.length > 1 && n.endsWith("/") ? n.slice(0, -1) : n;
}
