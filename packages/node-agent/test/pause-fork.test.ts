// Pause to disk and resume (also across node processes), and fork into
// children: real microVMs.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { paths } from "../src/config.ts";
import {
  assertNoLeftovers,
  config,
  createdIds,
  createSandbox,
  exec,
  killSandbox,
  leftovers,
  newSandbox,
  runtime,
  STATE_DIR,
  skipUnlessRoot,
  sleep,
} from "./helpers.ts";

const layersDir = path.join(config.stateDir, "layers");

after(async () => {
  const rt = await runtime();
  await rt.close();
  await assertNoLeftovers(createdIds);
});

async function count(sb: Parameters<typeof exec>[0]): Promise<number> {
  const r = await exec(sb, ["cat", "/tmp/count"]);
  return Number(r.stdout.trim());
}

const COUNTER =
  "nohup sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' >/dev/null 2>&1 &";

test("pause frees the VM, network and cgroup; resume brings back files and a running process", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const sb = await newSandbox({ envVars: { KEPT: "across-pause" } });
  t.after(() => killSandbox(sb));
  assert.equal((await exec(sb, ["sh", "-c", `echo before > /home/user/note; ${COUNTER}`])).exitCode, 0);
  await sleep(1000);
  const before = await count(sb);
  assert.ok(before >= 1, `the counter runs (${before})`);

  await rt.pause(sb.id);
  assert.equal(sb.state, "paused");
  const held = await leftovers(sb.id);
  // Only files remain while paused: no QEMU, namespace, veth, cgroup, slot or owner record.
  assert.deepEqual(
    held.filter((h) => !h.startsWith("state dir")),
    [],
    `a paused sandbox holds no host resources:\n${held.join("\n")}`,
  );
  assert.ok(existsSync(path.join(sb.dir, "paused-memory.bin")));

  await rt.resume(sb.id);
  assert.equal(sb.state, "running");
  assert.equal((await exec(sb, ["cat", "/home/user/note"])).stdout, "before\n");
  assert.equal((await exec(sb, ["sh", "-c", "echo $KEPT"])).stdout, "across-pause\n");
  const resumed = await count(sb);
  assert.ok(resumed >= before, `the counter continued from ${before} (now ${resumed}), it did not restart`);
  await sleep(1000);
  assert.ok((await count(sb)) > resumed, "the counter keeps counting after resume");
  assert.ok(!existsSync(path.join(sb.dir, "paused-memory.bin")), "the saved state is removed once resumed");
});

test("a filesystem-only pause keeps files and identity; the resume boots afresh (new boot id, no old processes)", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const sb = await createSandbox(t, { envVars: { KEPT: "across-reboot" } });
  const token = sb.accessToken;
  const bootId = async () => (await exec(sb, ["cat", "/proc/sys/kernel/random/boot_id"])).stdout.trim();
  const bootBefore = await bootId();
  // Written just before the pause, never synced by the test: the pause syncs.
  assert.equal((await exec(sb, ["sh", "-c", `echo kept > /home/user/note; ${COUNTER}`])).exitCode, 0);

  await rt.pause(sb.id, { memory: false });
  assert.equal(sb.state, "paused");
  assert.ok(!existsSync(path.join(sb.dir, "paused-memory.bin")), "no memory is saved");
  const held = await leftovers(sb.id);
  assert.deepEqual(
    held.filter((h) => !h.startsWith("state dir")),
    [],
    `a paused sandbox holds no host resources:\n${held.join("\n")}`,
  );

  await rt.resume(sb.id);
  assert.equal(sb.state, "running");
  assert.equal("boot" in sb.lastPhases, true, `the resume booted (phases ${JSON.stringify(sb.lastPhases)})`);
  assert.notEqual(await bootId(), bootBefore, "a new boot");
  assert.equal(sb.accessToken, token, "same token");
  assert.equal((await exec(sb, ["cat", "/home/user/note"])).stdout, "kept\n");
  assert.equal((await exec(sb, ["sh", "-c", "echo $KEPT"])).stdout, "across-reboot\n");
  // The counter of before the pause did not come back (its count, if /tmp kept it, stands still).
  const c1 = (await exec(sb, ["sh", "-c", "cat /tmp/count 2>/dev/null || echo none"])).stdout;
  await sleep(600);
  const c2 = (await exec(sb, ["sh", "-c", "cat /tmp/count 2>/dev/null || echo none"])).stdout;
  assert.equal(c2, c1, "old processes are gone");
});

test("a sandbox paused by one node process is resumed by another", { skip: skipUnlessRoot }, async (t) => {
  // The first "node process": creates a sandbox, starts a counter, writes a file, pauses, exits.
  const script = fileURLToPath(new URL("./fixtures/pause-in-child.ts", import.meta.url));
  const child = spawn(process.execPath, [script], {
    env: { ...process.env, FIREBREAK_STATE_DIR: STATE_DIR },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (b: Buffer) => {
    out += b.toString();
  });
  const code = await new Promise<number | null>((r) => child.on("exit", r));
  assert.equal(code, 0, `the pausing process failed: ${out}`);
  const m = /^paused (\w+) at (\d+)$/m.exec(out);
  assert.ok(m, `the child reported the paused sandbox: ${out}`);
  const [, id, before] = m;
  createdIds.add(id!);

  // The second: adopts it and resumes it.
  const rt = await runtime();
  assert.ok((await rt.adoptPaused()).includes(id!), "the paused sandbox is adopted");
  const sb = rt.get(id!);
  t.after(() => killSandbox(sb));
  assert.equal(sb.state, "paused");
  await rt.resume(id!);
  assert.equal((await exec(sb, ["cat", "/home/user/written-before-pause"])).stdout, "yes\n");
  const now = await count(sb);
  assert.ok(now >= Number(before), `the process survived the node restart (${before} -> ${now})`);
});

test("killing a paused sandbox removes its files", { skip: skipUnlessRoot }, async () => {
  const rt = await runtime();
  const sb = await newSandbox();
  await rt.pause(sb.id);
  await rt.kill(sb.id);
  await assertNoLeftovers([sb.id]);
});

test("fork: children start from the parent's state, each writes only to its own layer", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const parent = await newSandbox({ envVars: { ROLE: "parent" } });
  t.after(() => killSandbox(parent));
  await exec(parent, ["sh", "-c", "echo at-fork > /home/user/shared"]);

  const children = await rt.fork(parent.id, 3);
  for (const c of children) {
    createdIds.add(c.id);
    t.after(() => killSandbox(c));
  }
  assert.equal(children.length, 3);
  assert.equal(new Set([parent.id, ...children.map((c) => c.id)]).size, 4, "every child has its own id");
  assert.equal(
    new Set([parent.accessToken, ...children.map((c) => c.accessToken)]).size,
    4,
    "and its own token",
  );

  for (const s of [parent, ...children]) {
    assert.equal(
      (await exec(s, ["cat", "/home/user/shared"])).stdout,
      "at-fork\n",
      "everyone sees the parent's files",
    );
    assert.equal(
      (await exec(s, ["sh", "-c", "echo $ROLE"])).stdout,
      "parent\n",
      "children inherit the parent's env",
    );
  }
  assert.equal((await exec(children[0]!, ["sh", "-c", "echo mine > /home/user/child0"])).exitCode, 0);
  for (const s of [parent, children[1]!, children[2]!]) {
    assert.notEqual(
      (await exec(s, ["test", "-e", "/home/user/child0"])).exitCode,
      0,
      "a child's write stays in its layer",
    );
  }
  assert.equal((await exec(parent, ["sh", "-c", "echo later > /home/user/parent-later"])).exitCode, 0);
  assert.notEqual((await exec(children[1]!, ["test", "-e", "/home/user/parent-later"])).exitCode, 0);

  const random = await Promise.all(
    [parent, ...children].map(
      async (s) => (await exec(s, ["sh", "-c", "head -c 16 /dev/urandom | od -An -tx1"])).stdout,
    ),
  );
  assert.equal(new Set(random).size, 4, `every fork reads different random bytes:\n${random.join("")}`);

  const layers = await fs.readdir(layersDir);
  assert.ok(layers.length >= 1, "the frozen layer exists while its users live");
  for (const s of [...children, parent]) await rt.kill(s.id);
  const remaining = (await fs.readdir(layersDir).catch(() => [] as string[])).filter((l) =>
    layers.includes(l),
  );
  assert.deepEqual(remaining, [], "the layer is removed with its last user");
  await assertNoLeftovers([parent.id, ...children.map((c) => c.id)]);
  assert.equal(existsSync(path.join(paths.sandboxesDir(config), parent.id)), false);
});
