// scripts/lib/install-qemu.sh, how set-up gets QEMU >= 10: a host that
// cannot get it stops set-up with one error line saying what to do instead;
// an install already in place (or named by FIREBREAK_QEMU_PREFIX) is used as
// is. Against fake QEMU prefixes and os-release files; no root, no apt.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

const LIB = fileURLToPath(new URL("../../../scripts/lib/install-qemu.sh", import.meta.url));
let dir: string;

/** A prefix whose bin/qemu-system-x86_64 prints `version`. */
function fakeQemu(prefix: string, version: string): string {
  fs.mkdirSync(path.join(prefix, "bin"), { recursive: true });
  fs.writeFileSync(
    path.join(prefix, "bin", "qemu-system-x86_64"),
    `#!/bin/sh\necho "QEMU emulator version ${version} (Debian)"\n`,
    { mode: 0o755 },
  );
  return prefix;
}

/** Runs install_qemu the way set-up does (its say/die), with QEMU_ROOT and OS_RELEASE in `dir`. */
function installQemu(osRelease: string, env: Record<string, string> = {}) {
  fs.writeFileSync(path.join(dir, "os-release"), osRelease);
  const script = [
    "set -euo pipefail",
    'say() { echo "==> $*" >&2; }',
    'die() { echo "error: $*" >&2; exit 1; }',
    `source '${LIB}'`,
    `QEMU_ROOT='${path.join(dir, "root")}'`,
    `OS_RELEASE='${path.join(dir, "os-release")}'`,
    "install_qemu",
  ].join("\n");
  const env0 = { ...process.env };
  delete env0["FIREBREAK_QEMU_PREFIX"];
  const r = spawnSync("bash", ["-c", script], { env: { ...env0, ...env }, encoding: "utf8" });
  return { code: r.status, stderr: r.stderr };
}

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-setup-qemu-"));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test("a host that is not Debian stops set-up with one line: what is needed and how to give it", () => {
  const r = installQemu('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n');
  assert.equal(r.code, 1);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /^error: Firebreak needs QEMU >= 10 .*this host is Fedora Linux 40/);
  assert.match(lines[0]!, /FIREBREAK_QEMU_PREFIX/);
});

test("FIREBREAK_QEMU_PREFIX naming a QEMU older than 10 is refused; one of 10 is used as is", () => {
  const old = fakeQemu(path.join(dir, "old"), "7.2.15");
  const bad = installQemu("ID=debian\nVERSION_CODENAME=bookworm\n", { FIREBREAK_QEMU_PREFIX: old });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, new RegExp(`^error: .*FIREBREAK_QEMU_PREFIX=${old} holds no such QEMU`, "m"));
  const good = fakeQemu(path.join(dir, "good"), "10.1.0");
  const ok = installQemu("ID=debian\nVERSION_CODENAME=bookworm\n", { FIREBREAK_QEMU_PREFIX: good });
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stderr, /QEMU 10 at FIREBREAK_QEMU_PREFIX/);
});

test("an install of QEMU 10 already in place is kept: nothing is fetched, whatever the host", () => {
  const v = path.join(dir, "root", "1_10.0.2");
  fakeQemu(path.join(v, "usr"), "10.0.2");
  fs.symlinkSync("1_10.0.2", path.join(dir, "root", "current"));
  // Not Debian: set-up would refuse to fetch, so success means nothing was fetched.
  const r = installQemu('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /QEMU present: QEMU emulator version 10\.0\.2/);
});
