import { isAbsolute, join, normalize } from "node:path";

/**
 * Resolves a path from a request: absolute paths are kept, `~` and `~/x` expand to
 * the user's home, anything else is relative to the home (E2B semantics). The
 * result is normalised and has no trailing slash (except "/").
 */
export function resolveUserPath(path: string, home: string): string {
  let p = path;
  if (p === "" || p === "~") p = home;
  else if (p.startsWith("~/")) p = join(home, p.slice(2));
  else if (!isAbsolute(p)) p = join(home, p);
  const n = normalize(p);
  return n.length > 1 && n.endsWith("/") ? n.slice(0, -1) : n;
}
