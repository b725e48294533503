import assert from "node:assert/strict";
import { chmod, mkdir, mkdtemp, rm, symlink } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { onlyRootCanRedirect } from "./protected-path.ts";

test("onlyRootCanRedirect: true only below root-owned, non-writable real directories", {
  skip: process.getuid?.() !== 0 && "needs root-owned fixtures",
}, async () => {
  // /run is root's and 0755; /tmp is world-writable.
  const dir = await mkdtemp("/run/fb-protected-");
  try {
    await chmod(dir, 0o755);
    await mkdir(join(dir, "home"), { mode: 0o755 });
    await chmod(join(dir, "home"), 0o755);
    await symlink(join(dir, "home"), join(dir, "link"));
    await mkdir(join(dir, "open"));
    await chmod(join(dir, "open"), 0o777);
    await mkdir(join(dir, "group"));
    await chmod(join(dir, "group"), 0o775);
    assert.equal(await onlyRootCanRedirect(join(dir, "home", "user")), true);
    assert.equal(await onlyRootCanRedirect(join(dir, "link", "user")), false);
    assert.equal(await onlyRootCanRedirect(join(dir, "open", "user")), false);
    assert.equal(await onlyRootCanRedirect(join(dir, "group", "user")), false);
    assert.equal(await onlyRootCanRedirect(join(dir, "missing", "user")), false);
    assert.equal(await onlyRootCanRedirect("/tmp/anything/home"), false);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
