import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { FirebreakError } from "../errors.ts";
import { parseTemplateSpec, readTemplateSpec } from "./template-spec.ts";

test("a minimal spec gets documented defaults", () => {
  const s = parseTemplateSpec({ name: "py" }, "t");
  assert.equal(s.debian.release, "bookworm");
  assert.deepEqual(s.debian.packages, []);
  assert.equal(s.user, "user");
  assert.equal(s.diskMib, 2048);
});

test("errors name the field and the reason", () => {
  assert.throws(
    () =>
      parseTemplateSpec({ name: "Bad Name", debian: { packages: ["ok", "no way"] }, extra: 1 }, "spec.json"),
    (e: unknown) => {
      assert.ok(e instanceof FirebreakError);
      assert.equal(e.code, "TEMPLATE_SPEC_INVALID");
      assert.match(e.message, /name: use 1-40 lowercase/);
      assert.match(e.message, /debian\.packages\.1: not a Debian package name/);
      assert.match(e.message, /extra/);
      return true;
    },
  );
});

test("relative guest paths are refused", () => {
  assert.throws(
    () => parseTemplateSpec({ name: "x", files: [{ src: "a", dest: "etc/x" }] }, "s"),
    /files\.0\.dest: must be an absolute path/,
  );
});

test("malformed JSON and missing files give clear errors", async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-spec-"));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  await fs.writeFile(path.join(dir, "bad.json"), "{ name: ");
  await assert.rejects(readTemplateSpec(path.join(dir, "bad.json")), /is not valid JSON/);
  await assert.rejects(
    readTemplateSpec(path.join(dir, "missing.json")),
    /cannot read template spec .*ENOENT/,
  );
});

test("npm packages need exact versions; shape, aliases and readyTimeoutMs are checked", () => {
  const ok = parseTemplateSpec(
    {
      name: "ci",
      npm: { packages: ["@deno/linux-x64-glibc@2.9.6", "zeromq@6.8.0", "x@1.0.0-rc.1"] },
      components: ["code-interpreter"],
      shape: { vcpus: 2, memoryMib: 1024 },
      aliases: ["ci-v1"],
      readyTimeoutMs: 600_000,
    },
    "s",
  );
  assert.deepEqual(ok.shape, { vcpus: 2, memoryMib: 1024 });
  assert.throws(
    () => parseTemplateSpec({ name: "x", npm: { packages: ["deno@^2.0.0", "left-pad", "a@latest"] } }, "s"),
    (e: unknown) => {
      assert.ok(e instanceof FirebreakError);
      for (const i of [0, 1, 2])
        assert.match(e.message, new RegExp(`npm\\.packages\\.${i}: name an exact version`));
      return true;
    },
  );
  assert.throws(
    () => parseTemplateSpec({ name: "x", shape: { vcpus: 9, memoryMib: 256 } }, "s"),
    /shape\.vcpus/,
  );
  assert.throws(() => parseTemplateSpec({ name: "x", aliases: ["Bad"] }, "s"), /aliases\.0/);
  assert.throws(() => parseTemplateSpec({ name: "x", readyTimeoutMs: 10 }, "s"), /readyTimeoutMs/);
});

test("specs without the optional fields keep their content address (no defaults added)", () => {
  const s = parseTemplateSpec({ name: "py" }, "t");
  for (const k of ["npm", "components", "shape", "aliases", "readyTimeoutMs"]) assert.ok(!(k in s), k);
});
