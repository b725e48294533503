// The QEMU jail, tried from outside and as an escaped VMM would try it: the
// process's identity, capabilities, seccomp, cgroup, mounts and descriptors;
// who owns the sandbox's files; and canaries that planted links must not
// reach through pause, resume, fork and kill. Real microVMs.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { after, test } from "node:test";
import { run } from "../src/host/exec.ts";
import {
  assertNoLeftovers,
  config,
  createdIds,
  exec,
  killSandbox,
  newSandbox,
  runtime,
  skipUnlessRoot,
} from "./helpers.ts";

after(async () => {
  const rt = await runtime();
  await rt.close();
  await assertNoLeftovers(createdIds);
});

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** Runs argv as `uid` (no groups, no capabilities), like an escaped QEMU. */
function asUid(uid: number, argv: string[]) {
  return run(
    "setpriv",
    [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--inh-caps=-all", "--", ...argv],
    { allowFailure: true },
  );
}

test("QEMU runs as the sandbox's own uid, with no capabilities, no groups, no_new_privs, seccomp, in its cgroup from the start", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const sb = await newSandbox({ shape: { vcpus: 1, memoryMib: 256 } });
  t.after(() => killSandbox(sb));
  const pid = sb.vm!.pid;
  const uid = rt.vmUid(sb.slot!);
  const st = status(pid);
  assert.match(
    readFileSync(`/proc/${pid}/cmdline`, "utf8"),
    /^qemu-system-x86_64\0/,
    "the jailer exec'd QEMU",
  );
  assert.equal(st["Uid"], [uid, uid, uid, uid].join("\t"));
  assert.equal(st["Gid"], [uid, uid, uid, uid].join("\t"));
  assert.equal(st["Groups"], "");
  for (const set of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) {
    assert.equal(st[set], "0000000000000000", `${set} is empty`);
  }
  assert.equal(st["NoNewPrivs"], "1");
  assert.equal(st["Seccomp"], "2", "QEMU's own seccomp filter is on (-sandbox on)");

  // Every controller puts QEMU in the sandbox's cgroup, with the shape's limits.
  const cgroups = readFileSync(`/proc/${pid}/cgroup`, "utf8");
  for (const c of ["memory", "pids", "cpu"]) {
    assert.match(cgroups, new RegExp(`[:,]${c}[,:].*/firebreak/fb-${sb.id}$`, "m"), `in the ${c} cgroup`);
  }
  const cg = sb.cgroup!.dirs();
  const read = (f: string) => readFileSync(f, "utf8").trim();
  const memDir = cg.find((d) => d.includes("/memory/"));
  if (memDir) {
    assert.equal(Number(read(path.join(memDir, "memory.limit_in_bytes"))), (256 + 256) * 2 ** 20);
    const cpuDir = cg.find((d) => d.includes("/cpu/"))!;
    assert.equal(read(path.join(cpuDir, "cpu.cfs_quota_us")), "100000");
    const pidsDir = cg.find((d) => d.includes("/pids/"))!;
    assert.equal(read(path.join(pidsDir, "pids.max")), String(64 + 4));
  }
});

test("QEMU sees every mount read-only, in a mount namespace of its own, and holds only its own files", {
  skip: skipUnlessRoot,
}, async (t) => {
  const sb = await newSandbox();
  t.after(() => killSandbox(sb));
  const pid = sb.vm!.pid;
  const ours = await fs.readlink("/proc/self/ns/mnt");
  assert.notEqual(await fs.readlink(`/proc/${pid}/ns/mnt`), ours, "its own mount namespace");
  const mounts = readFileSync(`/proc/${pid}/mountinfo`, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => {
      const f = l.split(" ");
      return { line: l, id: f[0], parent: f[1], point: f[4], ro: f[5]!.split(",").includes("ro") };
    });
  // A mount covered by another on the same mount point cannot be reached by any path.
  const covered = (m: (typeof mounts)[number]) =>
    mounts.some((o) => o.parent === m.id && o.point === m.point);
  const writable = mounts.filter((m) => !m.ro && !covered(m)).map((m) => m.line);
  assert.deepEqual(writable, [], "no mount is writable for QEMU");

  // Its descriptors: the disk chain, the tap, sockets and pipes, and the
  // snapshot's memory file (read-only); no directory.
  const memoryFile = path.join(config.stateDir, "snapshots");
  const targets: { fd: string; target: string }[] = [];
  for (const fd of await fs.readdir(`/proc/${pid}/fd`)) {
    targets.push({ fd, target: await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => "gone") });
  }
  const files = targets.filter((t) => t.target.startsWith("/")).map((t) => t.target);
  for (const { fd, target: f } of targets.filter((t) => t.target.startsWith("/"))) {
    if (f.startsWith(memoryFile) && f.endsWith("/memory.ram")) {
      // SECURITY: QEMU maps the shared snapshot memory private; it holds it read-only.
      const flags = Number.parseInt(
        /^flags:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, "utf8"))![1]!,
        8,
      );
      assert.equal(flags & 3, 0, `the snapshot's memory file is open read-only (flags ${flags.toString(8)})`);
      continue;
    }
    assert.ok(
      f === "/dev/net/tun" ||
        f === "/dev/null" ||
        f.startsWith("/dev/") ||
        sb.disk.some((d) => d.path === f) ||
        f.endsWith("/qemu-system-x86_64") ||
        /\.so(\.|$)/.test(f),
      `unexpected file open in QEMU: ${f}`,
    );
  }
  assert.ok(files.includes("/dev/net/tun"), "the tap descriptor came from the jailer");
  assert.ok(
    sb.disk.every((d) => files.includes(d.path)),
    "every layer of the disk chain is an inherited descriptor",
  );
});

test("the VM uid owns nothing: the sandbox dir and its files are root's; the uid cannot list, plant or read", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const sb = await newSandbox();
  t.after(() => killSandbox(sb));
  const uid = rt.vmUid(sb.slot!);
  const dir = await fs.stat(sb.dir);
  assert.equal(dir.uid, 0);
  assert.equal(dir.gid, uid);
  assert.equal(dir.mode & 0o777, 0o710);
  for (const f of await fs.readdir(sb.dir)) {
    const st = await fs.lstat(path.join(sb.dir, f));
    assert.equal(st.uid, 0, `${f} is root's`);
    assert.equal(st.mode & 0o077, f === "state.json" ? 0o044 : 0, `${f} is not readable by others`);
  }
  const found = await run("find", [config.stateDir, "-xdev", "-uid", String(uid)], { allowFailure: true });
  assert.equal(found.stdout.trim(), "", "no file of the state dir belongs to the VM uid");

  const ls = await asUid(uid, ["ls", sb.dir]);
  assert.notEqual(ls.exitCode, 0, "the VM uid cannot list its sandbox dir");
  const plant = await asUid(uid, ["ln", "-s", "/etc/shadow", path.join(sb.dir, "planted")]);
  assert.notEqual(plant.exitCode, 0, "the VM uid cannot plant a link");
  const read = await asUid(uid, ["cat", path.join(sb.dir, "disk.qcow2")]);
  assert.notEqual(read.exitCode, 0, "the VM uid cannot read its own disk layer by path");
  assert.equal((await exec(sb, ["true"])).exitCode, 0);
});

/** Root-only canary files that a planted link would point at. */
async function canaries(n: number): Promise<{ files: string[]; check: () => Promise<void> }> {
  const dir = await fs.mkdtemp("/root/fb-canary-");
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const f = path.join(dir, `canary-${i}`);
    await fs.writeFile(f, `canary ${i}\n`, { mode: 0o600 });
    files.push(f);
  }
  return {
    files,
    check: async () => {
      for (const [i, f] of files.entries()) {
        const st = await fs.lstat(f);
        assert.equal(st.uid, 0, `${f} keeps its owner`);
        assert.equal(st.gid, 0);
        assert.equal(st.mode & 0o7777, 0o600, `${f} keeps its mode`);
        assert.equal(await fs.readFile(f, "utf8"), `canary ${i}\n`, `${f} keeps its content`);
      }
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

test("links planted in the sandbox dir (console log, memory files, temp files) are never followed through pause, resume, fork and kill", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const names = [
    "paused-memory.bin",
    "paused.json",
    "paused.json.tmp",
    `paused.json.${process.pid}.tmp`,
    `state.json.${process.pid}.tmp`,
    "migrate-out.sock",
    "freeze-stream.bin",
  ];
  const c = await canaries(names.length + 1);
  const plant = async (dir: string) => {
    // Planted as root: the worst case, a writer the directory's mode should
    // have stopped. The runtime must still not write through them.
    for (const [i, name] of names.entries()) {
      await fs.rm(path.join(dir, name), { force: true });
      await fs.symlink(c.files[i]!, path.join(dir, name));
    }
  };
  const sb = await newSandbox();
  t.after(() => killSandbox(sb));
  await plant(sb.dir);
  // A pause that meets a planted link fails and ends the sandbox; either way
  // nothing is written through the link.
  await rt.pause(sb.id).catch(() => {});
  if (sb.state === "paused") {
    await plant(sb.dir);
    await rt.resume(sb.id).catch(() => {});
  }

  const parent = await newSandbox();
  t.after(() => killSandbox(parent));
  await plant(parent.dir);
  const children = await rt.fork(parent.id, 1).catch(() => []);
  for (const ch of children) {
    createdIds.add(ch.id);
    await plant(ch.dir);
    await killSandbox(ch);
  }
  await killSandbox(parent);
  await killSandbox(sb);
  // The console log is opened O_NOFOLLOW on every launch: a link there fails the start.
  const logLink = await newSandbox();
  t.after(() => killSandbox(logLink));
  await fs.rm(path.join(logLink.dir, "console.log"));
  await fs.symlink(c.files[names.length]!, path.join(logLink.dir, "console.log"));
  await rt.pause(logLink.id).catch(() => {});
  if (logLink.state === "paused") await rt.resume(logLink.id).catch(() => {});
  await killSandbox(logLink);
  await c.check();
});
