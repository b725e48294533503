import assert from "node:assert/strict";
import { test } from "node:test";
import { resolveDatabase } from "./open.ts";

test("database choice: PostgreSQL URLs, sqlite: URLs, paths, the default, and what is refused", () => {
  assert.deepEqual(resolveDatabase(undefined, "/var/lib/fb"), {
    kind: "sqlite",
    file: "/var/lib/fb/control-plane.db",
  });
  assert.deepEqual(resolveDatabase("  ", "/s"), { kind: "sqlite", file: "/s/control-plane.db" });
  for (const url of ["postgres://u:p@db:5432/fb", "postgresql://db/fb?sslmode=require", "POSTGRES://x/y"]) {
    assert.deepEqual(resolveDatabase(url, "/s"), { kind: "postgres", url });
  }
  assert.deepEqual(resolveDatabase("sqlite:/tmp/a.db", "/s"), { kind: "sqlite", file: "/tmp/a.db" });
  assert.deepEqual(resolveDatabase("sqlite:///tmp/a.db", "/s"), { kind: "sqlite", file: "/tmp/a.db" });
  assert.deepEqual(resolveDatabase("/tmp/b.db", "/s"), { kind: "sqlite", file: "/tmp/b.db" });
  assert.equal(resolveDatabase("rel.db", "/s").kind, "sqlite");
  assert.throws(() => resolveDatabase("mysql://db/fb", "/s"), /postgres:\/\/.*got a mysql: URL/);
  assert.throws(() => resolveDatabase("sqlite:", "/s"), /names no file/);
});
