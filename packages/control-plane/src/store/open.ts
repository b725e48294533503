// Which database a control plane uses: FIREBREAK_DATABASE_URL (or the
// `database` option): `postgres://...` / `postgresql://...` for a shared
// PostgreSQL, `sqlite:<path>` or a plain path for a SQLite file; default the
// SQLite file in the state dir.
import path from "node:path";

export type DatabaseChoice = { kind: "sqlite"; file: string } | { kind: "postgres"; url: string };

export function resolveDatabase(spec: string | undefined, stateDir: string): DatabaseChoice {
  if (spec === undefined || spec.trim() === "") {
    return { kind: "sqlite", file: path.resolve(stateDir, "control-plane.db") };
  }
  if (/^postgres(ql)?:\/\//i.test(spec)) return { kind: "postgres", url: spec };
  const m = /^sqlite:(?:\/\/)?(.*)$/i.exec(spec);
  if (m) {
    if (!m[1])
      throw new Error(`FIREBREAK_DATABASE_URL ${spec} names no file; use sqlite:/path/to/control-plane.db`);
    return { kind: "sqlite", file: path.resolve(m[1]) };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) {
    throw new Error(
      `FIREBREAK_DATABASE_URL must be postgres://..., postgresql://..., sqlite:<path> or a file path; got a ${spec.split(":")[0]}: URL`,
    );
  }
  return { kind: "sqlite", file: path.resolve(spec) };
}
