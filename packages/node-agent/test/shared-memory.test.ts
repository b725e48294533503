// Shared copy-on-write memory files, in real microVMs: clones of a template
// snapshot map one immutable memory file and share its pages; a clone's
// writes never reach it; a fork point's memory file is readable by its own
// users' QEMUs and by no other VM uid; named snapshots start sandboxes, also
// after a node restart, until deleted (deletion waits for their last user);
// standby VMs (QEMU waiting for a state) are taken by creates.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { run } from "../src/host/exec.ts";
import { type BuiltTemplate, FirebreakError, type NodeRuntime, type Sandbox } from "../src/index.ts";
import { DEFAULT_SHAPE } from "../src/sandbox/node-runtime.ts";
import { snapshotKey } from "../src/sandbox/snapshot-store.ts";
import { WarmPools } from "../src/sandbox/warm-pool.ts";
import {
  assertNoLeaks,
  assertNoLeftovers,
  config,
  createdIds,
  createSandbox,
  exec,
  killSandbox,
  runtime,
  STATE_DIR,
  skipUnlessRoot,
  template,
  waitFor,
} from "./helpers.ts";

const layersDir = path.join(config.stateDir, "layers");

async function execOk(sb: Sandbox, argv: string[]): Promise<string> {
  const r = await exec(sb, argv);
  assert.equal(r.exitCode, 0, `${argv.join(" ")} failed in ${sb.id}: ${r.stderr}`);
  return r.stdout;
}

/** smaps of one mapping of `file` in process `pid`: fields in KiB. */
async function mappingOf(pid: number, file: string): Promise<Record<string, number> | undefined> {
  const smaps = await fs.readFile(`/proc/${pid}/smaps`, "utf8");
  let cur: Record<string, number> | undefined;
  let found: Record<string, number> | undefined;
  for (const line of smaps.split("\n")) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      cur = line.trimEnd().endsWith(` ${file}`) ? {} : undefined;
      if (cur) found = cur;
      continue;
    }
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (m && cur) cur[m[1]!] = Number(m[2]);
  }
  return found;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest("hex");
}

/** Runs argv as `uid` with exactly `groups` (no capabilities), like an escaped QEMU. */
function asUid(uid: number, groups: number[], argv: string[]) {
  return run(
    "setpriv",
    [
      `--reuid=${uid}`,
      `--regid=${uid}`,
      ...(groups.length ? [`--groups=${groups.join(",")}`] : ["--clear-groups"]),
      "--inh-caps=-all",
      "--",
      ...argv,
    ],
    { allowFailure: true },
  );
}

function groupsOf(pid: number): number[] {
  const line = /^Groups:[ \t]*(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? "";
  return line.split(/\s+/).filter(Boolean).map(Number);
}

describe("shared copy-on-write memory", { skip: skipUnlessRoot }, () => {
  let rt: NodeRuntime;
  let tpl: BuiltTemplate;
  before(async () => {
    rt = await runtime();
    tpl = await template("base");
    await rt.prepareSnapshot(tpl);
  });
  after(async () => {
    await rt?.close();
    await assertNoLeaks();
  });

  test("two clones map the template snapshot's memory file and share its pages; their writes never reach it", async (t) => {
    const snap = (await rt.snapshots.find(snapshotKey(tpl.key, DEFAULT_SHAPE, rt.kernel, rt.accel.accel)))
      .snapshot;
    assert.ok(snap, "no template snapshot");
    const st = await fs.stat(snap.memoryPath);
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o777, 0o444, "the template's memory file is root's and read-only");
    const before = { mtimeMs: st.mtimeMs, sha256: await sha256File(snap.memoryPath) };
    assert.equal(before.sha256, snap.manifest.memory.sha256);

    const a = await createSandbox(t);
    const b = await createSandbox(t);
    // Both touch what every clone touches (a command), then write a lot of
    // memory with a marker that must never show up in the file.
    const marker = `fb-cow-${randomBytes(12).toString("hex")}`;
    for (const sb of [a, b]) {
      await execOk(sb, [
        "/bin/sh",
        "-c",
        `for i in $(seq 2000); do echo ${marker}; done > /dev/shm/m && cat /dev/shm/m > /dev/null`,
      ]);
    }
    const maps = await Promise.all([a, b].map((sb) => mappingOf(sb.vm!.pid, snap.memoryPath)));
    for (const [i, m] of maps.entries()) {
      assert.ok(m, `clone ${i} does not map ${snap.memoryPath}`);
      // Pages of the file both clones touched are counted half in each one's PSS.
      assert.ok(
        (m["Shared_Clean"] ?? 0) > 1024,
        `clone ${i} shares no page of the file: ${JSON.stringify(m)}`,
      );
      assert.ok(
        (m["Pss"] ?? 0) < (m["Rss"] ?? 0),
        `clone ${i}: PSS ${m["Pss"]} is not below RSS ${m["Rss"]}`,
      );
      // The guest's writes are copies private to the clone.
      assert.ok((m["Private_Dirty"] ?? 0) > 0, `clone ${i} wrote no private copy: ${JSON.stringify(m)}`);
    }
    const after = await fs.stat(snap.memoryPath);
    assert.equal(after.mtimeMs, before.mtimeMs, "a clone changed the memory file");
    assert.equal(await sha256File(snap.memoryPath), before.sha256, "the memory file's content changed");
    const bytes = await fs.readFile(snap.memoryPath);
    assert.equal(bytes.indexOf(marker), -1, "a clone's memory reached the snapshot's memory file");
  });

  test("a fork point's memory file: its users' QEMUs hold its group; no other VM uid can read it", async (t) => {
    const other = await createSandbox(t);
    const parent = await createSandbox(t, { envVars: { FB_FORK_SECRET: "s3cret" } });
    const children = await rt.fork(parent.id, 1);
    for (const c of children) {
      createdIds.add(c.id);
      t.after(() => killSandbox(c));
    }
    const child = children[0]!;
    const layer = parent.layers.at(-1)!;
    const memory = path.join(layersDir, layer, "memory.ram");
    const st = await fs.stat(memory);
    const gid = st.gid;
    assert.equal(st.uid, 0);
    assert.equal(st.mode & 0o777, 0o440, "root's, readable by its group only");
    const dir = await fs.stat(path.join(layersDir, layer));
    assert.equal(dir.gid, gid);
    assert.equal(dir.mode & 0o777, 0o750);
    assert.ok(gid > config.vmUidBase + 15_999, `the group ${gid} is no VM's own uid/gid`);

    // The parent (restarted on top of the fork point) and the child map it, with its group.
    for (const sb of [parent, child]) {
      assert.ok(groupsOf(sb.vm!.pid).includes(gid), `${sb.id}'s QEMU lacks the fork point's group`);
      assert.ok(await mappingOf(sb.vm!.pid, memory), `${sb.id} does not map the fork point's memory`);
    }
    // Another tenant's VM has no such group, and its uid cannot read the file.
    assert.deepEqual(groupsOf(other.vm!.pid), [], "an unrelated QEMU holds supplementary groups");
    const otherUid = rt.vmUid(other.slot!);
    const denied = await asUid(otherUid, [], ["head", "-c", "1", memory]);
    assert.notEqual(denied.exitCode, 0, "another VM uid read a fork point's memory");
    // Control: the same uid with the fork point's group can (the refusal is the group's doing).
    const allowed = await asUid(otherUid, [gid], ["head", "-c", "1", memory]);
    assert.equal(allowed.exitCode, 0, `with the group the file is readable: ${allowed.stderr}`);
    // And nobody writes it, not even its users.
    const write = await asUid(rt.vmUid(child.slot!), [gid], ["sh", "-c", `: >> ${memory}`]);
    assert.notEqual(write.exitCode, 0, "a user of the fork point could write its memory file");

    assert.equal(await execOk(child, ["printenv", "FB_FORK_SECRET"]), "s3cret\n");
  });

  test("a named snapshot starts sandboxes with its memory and files; deleting it waits for its last user", async (t) => {
    const sb = await createSandbox(t, { envVars: { ROLE: "original" } });
    // A process started before the snapshot keeps running in its sandboxes.
    await execOk(sb, ["sh", "-c", "echo before > /home/user/note; nohup sleep 1000 >/dev/null 2>&1 &"]);
    const { snapshotId } = await rt.snapshotOf(sb.id);
    assert.equal(sb.state, "running", "the snapshotted sandbox keeps running");
    assert.ok((await rt.listSnapshots()).includes(snapshotId));
    await execOk(sb, ["sh", "-c", "echo after > /home/user/note"]);

    const a = await createSandbox(t, { fromSnapshot: snapshotId, envVars: { EXTRA: "x" } });
    assert.equal(a.timings?.path, "snapshot");
    assert.equal(await execOk(a, ["cat", "/home/user/note"]), "before\n", "the snapshot's disk");
    assert.equal(
      await execOk(a, ["sh", "-c", "echo $ROLE $EXTRA"]),
      "original x\n",
      "its env under the create's",
    );
    assert.equal((await exec(a, ["pgrep", "-x", "sleep"])).exitCode, 0, "its processes");
    assert.notEqual(a.accessToken, sb.accessToken);
    await assert.rejects(
      rt.create({ template: tpl, fromSnapshot: snapshotId, shape: { memoryMib: 512 } }),
      (e: unknown) => e instanceof FirebreakError && e.code === "SHAPE_INVALID",
    );

    await rt.deleteSnapshot(snapshotId);
    assert.ok(!(await rt.listSnapshots()).includes(snapshotId));
    await assert.rejects(
      rt.create({ template: tpl, fromSnapshot: snapshotId }),
      (e: unknown) => e instanceof FirebreakError && e.code === "SNAPSHOT_NOT_FOUND",
    );
    await assert.rejects(
      rt.deleteSnapshot(snapshotId),
      (e: unknown) => e instanceof FirebreakError && e.code === "SNAPSHOT_NOT_FOUND",
    );
    // Still in use by `a` and by the original: kept, and `a` keeps working.
    assert.ok(existsSync(path.join(layersDir, snapshotId)));
    assert.equal(await execOk(a, ["cat", "/home/user/note"]), "before\n");
    await killSandbox(a);
    await killSandbox(sb);
    await waitFor("the deleted snapshot's files to go", () => !existsSync(path.join(layersDir, snapshotId)));
  });

  test("a named snapshot survives a node restart", async (t) => {
    // The first node process: a sandbox, a file, a snapshot; then it exits
    // (its sandbox is killed with it; the snapshot stays in the state dir).
    const script = fileURLToPath(new URL("./fixtures/snapshot-in-child.ts", import.meta.url));
    const child = spawn(process.execPath, [script], {
      env: { ...process.env, FIREBREAK_STATE_DIR: STATE_DIR },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
    });
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    assert.equal(code, 0, `the snapshotting process failed: ${out}`);
    const m = /^snapshot (\w+) of (\w+)$/m.exec(out);
    assert.ok(m, `the child reported its snapshot: ${out}`);
    const [, snapshotId, origin] = m;
    createdIds.add(origin!);
    t.after(() => rt.deleteSnapshot(snapshotId!).catch(() => {}));

    // This process is the next node: the snapshot is still there and starts sandboxes.
    assert.ok((await rt.listSnapshots()).includes(snapshotId!));
    const sb = await createSandbox(t, { fromSnapshot: snapshotId! });
    assert.equal(await execOk(sb, ["cat", "/home/user/from-the-first-node"]), "yes\n");
    await killSandbox(sb);
    await rt.deleteSnapshot(snapshotId!);
    await waitFor("the snapshot's files to go", () => !existsSync(path.join(layersDir, snapshotId!)));
  });

  test("standby VMs: a create takes one and finishes its start; kill and close leave nothing", async (t) => {
    const shape = DEFAULT_SHAPE;
    await rt.fillStandby(tpl, 2, shape);
    rt.standbys.stop(); // no refill: the test counts
    const pool = () =>
      rt.standbys.status().find((p) => WarmPools.id(p.templateKey, p.shape) === WarmPools.id(tpl.key, shape));
    assert.equal(pool()?.ready, 2);
    assert.equal(
      rt.list().filter((s) => s.state === "standby").length,
      0,
      "standby VMs are not listed as sandboxes",
    );
    // Make sure no warm pool VM is taken instead.
    rt.pools.stop();
    const sb = await createSandbox(t, { envVars: { WHO: "standby" } });
    assert.equal(sb.timings?.path, "snapshot");
    assert.ok("standby" in (sb.timings?.phases ?? {}), `no standby phase: ${JSON.stringify(sb.timings)}`);
    assert.ok(!("spawn" in (sb.timings?.phases ?? {})), "a standby start spawns no QEMU");
    assert.equal(await execOk(sb, ["printenv", "WHO"]), "standby\n");
    assert.equal(pool()?.ready, 1);
    await killSandbox(sb);
    await assertNoLeftovers([sb.id]);
  });
});
