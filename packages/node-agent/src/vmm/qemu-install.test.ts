// Finding the node's QEMU: the version is read from the binary itself, and an
// old or missing one is refused with the way to get a new one.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { FirebreakError } from "../errors.ts";
import { findQemu, MIN_QEMU_MAJOR, parseQemuVersion, qemuPrefix } from "./qemu-install.ts";

test("the version line of QEMU 7.2 and 10.0 is parsed", () => {
  assert.deepEqual(parseQemuVersion("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"), {
    major: 10,
    minor: 0,
  });
  assert.deepEqual(parseQemuVersion("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"), {
    major: 7,
    minor: 2,
  });
  assert.equal(parseQemuVersion("qemu-img version 10.0.2"), undefined);
});

test("FIREBREAK_QEMU_PREFIX wins; else set-up's install if present, else /usr", () => {
  assert.equal(qemuPrefix({ FIREBREAK_QEMU_PREFIX: "/srv/qemu" }), "/srv/qemu");
  assert.ok(["/opt/firebreak/qemu/current/usr", "/usr"].includes(qemuPrefix({})));
});

/** A fake prefix whose qemu-system-x86_64 prints `version`. */
async function fakePrefix(version: string | undefined, firmware = true): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-qemu-"));
  await fs.mkdir(path.join(dir, "bin"));
  await fs.mkdir(path.join(dir, "share", "qemu"), { recursive: true });
  if (version !== undefined) {
    await fs.writeFile(
      path.join(dir, "bin", "qemu-system-x86_64"),
      `#!/bin/sh\necho "QEMU emulator version ${version} (test)"\n`,
      { mode: 0o755 },
    );
  }
  if (firmware) await fs.writeFile(path.join(dir, "share", "qemu", "qboot.rom"), "");
  return dir;
}

test("an old or missing QEMU is QEMU_MISSING with the fix in the message", async (t) => {
  const cases: [string | undefined, boolean, RegExp][] = [
    ["7.2.22", true, /QEMU 7\.2; shared copy-on-write snapshots need QEMU >= 10/],
    [undefined, true, /no working QEMU/],
    ["10.0.2", false, /qboot/],
  ];
  for (const [version, firmware, why] of cases) {
    const dir = await fakePrefix(version, firmware);
    t.after(() => fs.rm(dir, { recursive: true, force: true }));
    await assert.rejects(findQemu(dir), (e: unknown) => {
      assert.ok(e instanceof FirebreakError);
      assert.equal(e.code, "QEMU_MISSING");
      assert.match(e.message, why);
      assert.match(e.message, /scripts\/setup\.sh/);
      return true;
    });
  }
  const good = await fakePrefix(`${MIN_QEMU_MAJOR}.1.0`);
  t.after(() => fs.rm(good, { recursive: true, force: true }));
  const q = await findQemu(good);
  assert.equal(q.major, MIN_QEMU_MAJOR);
  assert.equal(q.system, path.join(good, "bin", "qemu-system-x86_64"));
  assert.equal(q.bios, path.join(good, "share", "qemu", "qboot.rom"));
});
