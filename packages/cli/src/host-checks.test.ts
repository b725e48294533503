// Host checks on made-up hosts: a missing, wrong or unusable tun device, a
// cgroup root without controllers, a disk too small. Each failure names what
// is wrong and carries the command that fixes it.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { cgroupCheck, diskCheck, rootCheck, tunCheck } from "./host-checks.ts";

let dir: string;
before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-host-checks-"));
});
after(() => fs.rm(dir, { recursive: true, force: true }));

test("tun: a missing device fails with the mknod that creates it root-only", async () => {
  const c = await tunCheck(path.join(dir, "net", "tun"));
  assert.equal(c.status, "fail");
  assert.match(c.detail, /does not exist/);
  assert.match(c.fix ?? "", /mknod -m 0600 \S+\/net\/tun c 10 200/);
});

test("tun: a file or another device in its place fails and says to replace it", async () => {
  const file = path.join(dir, "not-tun");
  await fs.writeFile(file, "");
  for (const device of [file, "/dev/null"]) {
    const c = await tunCheck(device);
    assert.equal(c.status, "fail", device);
    assert.match(c.detail, /is not the tun device \(char 10:200\)/);
    assert.match(c.fix ?? "", new RegExp(`^rm ${device} && mkdir -p .* && mknod -m 0600 ${device} c 10 200`));
  }
});

test("tun: the host's device is accepted whatever its mode (root opens it, QEMU gets the descriptor)", {
  skip: process.getuid?.() === 0 ? false : "opening /dev/net/tun needs root",
}, async () => {
  const c = await tunCheck();
  assert.equal(c.status, "ok", c.detail);
  assert.match(c.detail, /mode \d{4}/);
});

test("cgroups: a root with no hierarchy fails with a mount command", async () => {
  const c = await cgroupCheck(dir);
  assert.equal(c.status, "fail");
  assert.match(c.detail, /no cgroup hierarchy/);
  assert.match(c.fix ?? "", /^mount -t cgroup2 none /);
});

test("cgroups: v1 with controllers missing names them and mounts each", async () => {
  const root = path.join(dir, "cg-v1");
  for (const c of ["cpu", "cpuacct"]) {
    await fs.mkdir(path.join(root, c), { recursive: true });
    await fs.writeFile(path.join(root, c, "cgroup.procs"), "");
  }
  const c = await cgroupCheck(root);
  assert.equal(c.status, "fail");
  assert.match(c.detail, /lacks memory, pids/);
  assert.match(c.fix ?? "", /mount -t cgroup -o memory cgroup \S+\/memory; .*mount -t cgroup -o pids cgroup/);
});

test("cgroups: v2 without the memory controller names it", async () => {
  const root = path.join(dir, "cg-v2");
  await fs.mkdir(root);
  await fs.writeFile(path.join(root, "cgroup.controllers"), "cpuset cpu io pids\n");
  const c = await cgroupCheck(root);
  assert.equal(c.status, "fail");
  assert.match(c.detail, /lacks the memory controller/);
  assert.ok(c.fix);
});

test("disk: below the build threshold fails and says where to find room; above passes", async () => {
  const low = await diskCheck(path.join(dir, "state", "not-yet"), Number.MAX_SAFE_INTEGER);
  assert.equal(low.check.status, "fail");
  assert.ok(low.freeMib > 0);
  assert.match(low.check.fix ?? "", /FIREBREAK_STATE_DIR/);
  const ok = await diskCheck(dir, 1);
  assert.equal(ok.check.status, "ok");
});

test("root: the uid decides, and the fix says to run as root", () => {
  const c = rootCheck();
  if (process.getuid?.() === 0) assert.equal(c.status, "ok");
  else {
    assert.equal(c.status, "fail");
    assert.match(c.fix ?? "", /as root/);
  }
});
