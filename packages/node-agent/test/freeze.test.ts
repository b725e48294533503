// Idle sandboxes frozen in their cgroup (FIREBREAK_FREEZE_IDLE_MS), thawed by
// the next use and by every lifecycle step that needs their QEMU: real microVMs.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import path from "node:path";
import { after, test } from "node:test";

// This file's runtime freezes sandboxes idle for 1 s (helpers read the env when loaded).
process.env["FIREBREAK_FREEZE_IDLE_MS"] = "1000";
const {
  assertNoLeftovers,
  createSandbox,
  createdIds,
  exec,
  killSandbox,
  newSandbox,
  runtime,
  skipUnlessRoot,
  sleep,
} = await import("./helpers.ts");

after(async () => {
  const rt = await runtime();
  await rt.close();
  await assertNoLeftovers(createdIds);
});

type Sb = Awaited<ReturnType<typeof newSandbox>>;

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what}`);
    await sleep(100);
  }
}

/** What the kernel says: frozen (v2 cgroup.events, or v1 freezer.state). */
async function frozenOnHost(sb: Sb): Promise<boolean> {
  const name = `fb-${sb.id}`;
  const v2 = await fs
    .readFile(path.join("/sys/fs/cgroup/firebreak", name, "cgroup.events"), "utf8")
    .catch(() => undefined);
  if (v2 !== undefined) return v2.includes("frozen 1");
  const v1 = await fs.readFile(path.join("/sys/fs/cgroup/freezer/firebreak", name, "freezer.state"), "utf8");
  return v1.trim() === "FROZEN";
}

async function cpuNanos(sb: Sb): Promise<number> {
  return (await sb.cgroup!.usage()).cpuNanos;
}

test("an idle sandbox is frozen (its QEMU uses no CPU at all) and the next use thaws it", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const sb = await createSandbox(t);
  await until(() => sb.frozen, 60_000, "the idle sandbox is frozen");
  assert.equal(await frozenOnHost(sb), true);
  const c0 = await cpuNanos(sb);
  await sleep(2000);
  assert.equal(await cpuNanos(sb), c0, "a frozen sandbox uses no CPU");

  rt.touch(sb.id);
  await until(() => !sb.frozen, 5000, "touch thaws it");
  assert.equal(await frozenOnHost(sb), false);
  assert.equal((await exec(sb, ["echo", "awake"])).stdout, "awake\n");
});

test("a sandbox something holds open is never frozen", { skip: skipUnlessRoot }, async (t) => {
  const rt = await runtime();
  const sb = await createSandbox(t);
  const held = (id: string) => id === sb.id;
  rt.busyChecks.add(held);
  t.after(() => rt.busyChecks.delete(held));
  await sleep(6000);
  assert.equal(sb.frozen, false);
  rt.busyChecks.delete(held);
  await until(() => sb.frozen, 60_000, "frozen once released");
});

test("pause, resume, fork and kill work on a frozen sandbox and leave nothing behind", {
  skip: skipUnlessRoot,
}, async (t) => {
  const rt = await runtime();
  const sb = await createSandbox(t);
  assert.equal((await exec(sb, ["sh", "-c", "echo frozen-then-paused > /home/user/f"])).exitCode, 0);
  await until(() => sb.frozen, 60_000, "frozen before the pause");
  await rt.pause(sb.id);
  assert.equal(sb.state, "paused");
  await rt.resume(sb.id);
  assert.equal((await exec(sb, ["cat", "/home/user/f"])).stdout, "frozen-then-paused\n");
  await until(() => sb.frozen, 60_000, "frozen before the fork");
  const [child] = await rt.fork(sb.id, 1);
  createdIds.add(child!.id);
  t.after(() => killSandbox(child));
  assert.equal((await exec(child!, ["cat", "/home/user/f"])).stdout, "frozen-then-paused\n");
  await until(() => child!.frozen && sb.frozen, 60_000, "both frozen before the kill");
  await rt.kill(child!.id);
  await rt.kill(sb.id);
  assert.equal(sb.state, "stopped");
});
