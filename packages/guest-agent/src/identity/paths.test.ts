import assert from "node:assert/strict";
import { test } from "node:test";
import { resolveUserPath } from "./paths.ts";

test("resolveUserPath resolves against the home and normalises", () => {
  const home = "/home/user";
  assert.equal(resolveUserPath("/etc/hosts", home), "/etc/hosts");
  assert.equal(resolveUserPath("a/b.txt", home), "/home/user/a/b.txt");
  assert.equal(resolveUserPath("", home), "/home/user");
  assert.equal(resolveUserPath("~", home), "/home/user");
  assert.equal(resolveUserPath("~/x/", home), "/home/user/x");
  assert.equal(resolveUserPath("../other/./f", home), "/home/other/f");
  assert.equal(resolveUserPath("/", home), "/");
  assert.equal(resolveUserPath("/tmp//x/../y/", home), "/tmp/y");
  // An empty path is the default workdir when the sandbox has one (envd).
  assert.equal(resolveUserPath("", home, "/work"), "/work");
  assert.equal(resolveUserPath("x", home, "/work"), "/home/user/x");
});
