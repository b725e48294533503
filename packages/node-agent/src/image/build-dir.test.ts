// A killed build leaves debootstrap's /proc mounted inside its staging root:
// removing the staging directory must still work (it failed with EBUSY, and
// with it every later build of that state dir).
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { run } from "../host/exec.ts";
import { removeBuildDir } from "./builder.ts";

const notRoot = process.getuid?.() !== 0 ? "needs root (mounts)" : false;

test("a staging directory with a proc mounted inside its root is removed, mount and all", {
  skip: notRoot,
}, async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), ".build-test-"));
  const procDir = path.join(dir, "rootfs", "proc");
  await fs.mkdir(procDir, { recursive: true });
  await run("mount", ["-t", "proc", "proc", procDir]);
  try {
    assert.ok((await fs.readFile("/proc/self/mounts", "utf8")).includes(procDir));
    await removeBuildDir(dir);
    assert.equal(existsSync(dir), false);
    assert.ok(!(await fs.readFile("/proc/self/mounts", "utf8")).includes(procDir), "the mount is gone");
  } finally {
    await run("umount", ["--lazy", procDir], { allowFailure: true });
    await fs.rm(dir, { recursive: true, force: true });
  }
});
