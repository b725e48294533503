// Warm pools in real microVMs, and the start path report: a create takes a
// pool VM when there is one (path "warm", claim phase), restores the snapshot
// when the pool is empty ("snapshot", restore phase), and boots when told to
// ("cold", boot phase). Pool VMs are clones too: each claim gets its own
// entropy, clock, token and env. Many claim/kill cycles leave nothing, and
// close() leaves no pool VM behind, even with a refill in flight.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { type BuiltTemplate, NodeRuntime, paths, type Sandbox } from "../src/index.ts";
import { envdClient } from "../src/sandbox/envd-client.ts";
import { DEFAULT_SHAPE } from "../src/sandbox/node-runtime.ts";
import { WarmPools } from "../src/sandbox/warm-pool.ts";
import {
  assertNoLeaks,
  assertNoLeftovers,
  config,
  createdIds,
  createSandbox,
  exec,
  leftovers,
  listDir,
  qemuProcesses,
  runtime,
  skipUnlessRoot,
  sleep,
  template,
  waitFor,
} from "./helpers.ts";

// Create/kill cycles through the warm path: 100, as the issue asks. Each cycle
// waits for the pool to hold a VM again (one restore in the background,
// ~0.5-0.8 s here on 2 shared cores), so ~1-1.5 minutes; with snapshot.test.ts
// both files stay under ~5 minutes. FIREBREAK_TEST_FAST_CYCLES overrides it.
const CYCLES = Number(process.env["FIREBREAK_TEST_FAST_CYCLES"] ?? 100);

async function execOk(sb: Sandbox, argv: string[]): Promise<string> {
  const r = await exec(sb, argv);
  assert.equal(r.exitCode, 0, `${argv.join(" ")} failed in ${sb.id}: ${r.stderr}`);
  return r.stdout;
}

function assertPath(sb: Sandbox, want: "warm" | "snapshot" | "cold", phase: string): void {
  const t = sb.timings;
  assert.ok(t, `sandbox ${sb.id} has no start timings`);
  assert.equal(t.path, want, `sandbox ${sb.id} started via ${t.path} (fallback: ${t.fallback ?? "none"})`);
  assert.ok(phase in t.phases, `no ${phase} phase in ${JSON.stringify(t.phases)}`);
}

async function assertRefused(address: string, token: string): Promise<void> {
  await assert.rejects(
    envdClient(address, token).process.list({}),
    (e: unknown) => e instanceof ConnectError && e.code === Code.Unauthenticated,
  );
}

/** Ids of owner records written by this process. */
async function ourOwnerIds(): Promise<string[]> {
  const ids: string[] = [];
  for (const f of await listDir(paths.ownersDir(config))) {
    if (!f.endsWith(".json")) continue;
    const rec = JSON.parse(
      await fs.readFile(path.join(paths.ownersDir(config), f), "utf8").catch(() => "{}"),
    ) as { ownerPid?: number };
    if (rec.ownerPid === process.pid) ids.push(f.slice(0, -5));
  }
  return ids;
}

/** Sandbox ids of the QEMU processes this process started (QEMU is exec'd by nsenter and setpriv). */
async function ourQemuIds(): Promise<string[]> {
  const ids: string[] = [];
  for (const [id, pid] of await qemuProcesses()) {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === process.pid) ids.push(id);
  }
  return ids.sort();
}

/** The VMs waiting in `rt`'s pools (not listed by rt.list()). */
async function poolVms(rt: NodeRuntime): Promise<Sandbox[]> {
  const out: Sandbox[] = [];
  for (const id of await ourOwnerIds()) {
    try {
      const sb = rt.get(id);
      if (sb.state === "warm") out.push(sb);
    } catch {
      // another runtime's sandbox
    }
  }
  return out;
}

describe("warm pools", { skip: skipUnlessRoot }, () => {
  let rt: NodeRuntime;
  let tpl: BuiltTemplate;
  const pool = (r: NodeRuntime = rt) =>
    r.pools
      .status()
      .find((p) => WarmPools.id(p.templateKey, p.shape) === WarmPools.id(tpl.key, DEFAULT_SHAPE));
  /** Waits until the pool holds `n` VMs; fails early with the pool's error. */
  const poolReady = (n: number, r: NodeRuntime = rt) =>
    waitFor(
      `${n} ready VM(s) in the pool`,
      () => {
        const p = pool(r);
        if (p?.lastError && p.filling === 0 && p.ready < n)
          throw new Error(`pool fill failed: ${p.lastError}`);
        return (p?.ready ?? 0) >= n;
      },
      60_000,
    );

  before(async () => {
    rt = await runtime();
    tpl = await template("base");
    await rt.prepareSnapshot(tpl);
  });
  after(async () => {
    await rt?.close();
    await assertNoLeaks();
  });

  test("the start path report: empty pool -> snapshot, pool VM -> warm, forceCold -> cold", async (t) => {
    // A pool that exists but holds nothing: the create restores the snapshot.
    await rt.fillPool(tpl, 0);
    assert.equal(pool()?.ready, 0);
    const restored = await createSandbox(t);
    assertPath(restored, "snapshot", "restore");
    assert.ok(!("claim" in restored.timings!.phases));

    await rt.fillPool(tpl, 1);
    assert.equal(pool()?.ready, 1);
    const warm = await createSandbox(t);
    assertPath(warm, "warm", "claim");
    for (const p of ["restore", "boot", "spawn"]) assert.ok(!(p in warm.timings!.phases), `warm has ${p}`);
    assert.equal(warm.timings?.fallback, undefined);

    // forceCold boots even with a pool VM waiting, and leaves that VM in the pool.
    await poolReady(1);
    const cold = await createSandbox(t, { forceCold: true });
    assertPath(cold, "cold", "boot");
    assert.equal(pool()?.ready, 1, "forceCold took the pool's VM");

    for (const sb of [restored, warm, cold]) {
      assert.ok(sb.timings!.totalMs > 0);
      assert.equal(await execOk(sb, ["echo", sb.timings!.path]), `${sb.timings!.path}\n`);
    }
  });

  test("a create with env vars is still served from the pool, and sees its env", async (t) => {
    await rt.fillPool(tpl, 1);
    await poolReady(1);
    const sb = await createSandbox(t, { envVars: { FB_POOL_ENV: "given at claim", WHO: "warm" } });
    assertPath(sb, "warm", "claim");
    assert.equal(await execOk(sb, ["printenv", "FB_POOL_ENV"]), "given at claim\n");
    assert.equal(await execOk(sb, ["printenv", "WHO"]), "warm\n");
    // Under the template's env, which stays.
    assert.equal(await execOk(sb, ["printenv", "LANG"]), "C.UTF-8\n");
    // Also for commands run as root, and in a login shell.
    const asRoot = await exec(sb, ["printenv", "FB_POOL_ENV"], { user: "root" });
    assert.deepEqual(asRoot, { exitCode: 0, stdout: "given at claim\n", stderr: "" });
    assert.equal(await execOk(sb, ["/bin/bash", "-lc", "echo $FB_POOL_ENV"]), "given at claim\n");
  });

  test("claimed pool VMs have their own entropy, clock and token; the claim replaces the pool identity", async (t) => {
    await rt.fillPool(tpl, 2);
    await poolReady(2);
    const waiting = await poolVms(rt);
    assert.equal(waiting.length, 2);
    const poolTokens = new Map(waiting.map((sb) => [sb.id, sb.accessToken]));
    const a = await createSandbox(t);
    const b = await createSandbox(t);
    assertPath(a, "warm", "claim");
    assertPath(b, "warm", "claim");
    assert.ok(poolTokens.has(a.id) && poolTokens.has(b.id), "the claimed VMs are not the ones that waited");

    const random = async (sb: Sandbox) =>
      (await execOk(sb, ["/bin/sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"])).replace(/\s+/g, "");
    const [ra, rb] = [await random(a), await random(b)];
    assert.match(ra, /^[0-9a-f]{64}$/);
    assert.notEqual(ra, rb, "two pool VMs read the same bytes from /dev/urandom");
    const uuid = async (sb: Sandbox) =>
      (await execOk(sb, ["python3", "-c", "import uuid;print(uuid.uuid4())"])).trim();
    const [ua, ub] = [await uuid(a), await uuid(b)];
    assert.match(ua, /^[0-9a-f-]{36}$/);
    assert.notEqual(ua, ub, "two pool VMs generated the same uuid4");

    // Pool VMs were clocked when restored, not when claimed: still the host's time.
    for (const sb of [a, b]) {
      const before = Date.now();
      const guestMs = Number((await execOk(sb, ["date", "+%s.%N"])).trim()) * 1000;
      const after = Date.now();
      assert.ok(
        guestMs >= before - 1000 && guestMs <= after + 1000,
        `guest clock of ${sb.id} is ${new Date(guestMs).toISOString()}; host ${new Date(before).toISOString()} .. ${new Date(after).toISOString()}`,
      );
    }

    assert.ok(a.network && b.network);
    // The token the VM had while waiting is refused once it is claimed.
    for (const sb of [a, b]) {
      assert.notEqual(sb.accessToken, poolTokens.get(sb.id));
      await assertRefused(sb.network!.sandboxAddress, poolTokens.get(sb.id)!);
    }
    await assertRefused(b.network.sandboxAddress, a.accessToken);
    await assertRefused(a.network.sandboxAddress, b.accessToken);
    await envdClient(a.network.sandboxAddress, a.accessToken).process.list({});
  });

  test(`${CYCLES} create/kill cycles through the warm path leave nothing`, async (t) => {
    const ids: string[] = [];
    t.after(async () => {
      for (const id of ids) await rt.kill(id);
    });
    await rt.fillPool(tpl, 2);
    const fdsBefore = (await fs.readdir("/proc/self/fd")).length;
    for (let i = 0; i < CYCLES; i++) {
      await poolReady(1);
      const sb = await rt.create({ template: tpl, envVars: { CYCLE: String(i) } });
      createdIds.add(sb.id);
      ids.push(sb.id);
      assertPath(sb, "warm", "claim");
      // The first exec in a restored VM costs ~1.5 s under TCG (cold
      // translation cache), so every 10th cycle proves the claim works.
      if (i % 10 === 0) assert.equal(await execOk(sb, ["printenv", "CYCLE"]), `${i}\n`);
      await rt.kill(sb.id);
      assert.equal(sb.state, "stopped");
      await assertNoLeftovers([sb.id]);
    }
    await assertNoLeftovers(ids);
    assert.deepEqual(
      rt.list().filter((sb) => ids.includes(sb.id)),
      [],
      "the runtime still lists finished sandboxes",
    );
    // Every VM the refills started is in the pool (claimable, counted against
    // the pool's target), not stranded in the runtime: once the refills
    // settle, the pool holds its target and this process runs no other VM.
    await waitFor("the refills to settle", () => pool()?.filling === 0, 60_000);
    const waiting = await poolVms(rt);
    const ours = await ourQemuIds();
    assert.equal(pool()?.ready, 2);
    assert.equal(
      waiting.length,
      2,
      `${waiting.length} warm VMs for a pool holding 2: the others were started by refills but never reached the pool`,
    );
    assert.deepEqual(ours, waiting.map((sb) => sb.id).sort(), "QEMU processes other than the pool's VMs");
    // Nor do host file descriptors pile up (sockets, console files).
    const fdsAfter = (await fs.readdir("/proc/self/fd")).length;
    assert.ok(fdsAfter - fdsBefore < 10, `file descriptors grew from ${fdsBefore} to ${fdsAfter}`);
  });

  test("close() kills the pool's VMs", async (t) => {
    const node = await NodeRuntime.open(config);
    t.after(() => node.close());
    await node.fillPool(tpl, 2);
    const waiting = await poolVms(node);
    assert.equal(waiting.length, 2);
    const ids = waiting.map((sb) => sb.id);
    const qemu = await qemuProcesses();
    for (const id of ids) assert.ok(qemu.has(id), `no QEMU for pool VM ${id}`);
    await node.close();
    const after = await qemuProcesses();
    assert.deepEqual(
      ids.filter((id) => after.has(id)),
      [],
      "pool VMs' QEMU processes survived close()",
    );
    await assertNoLeftovers(ids);
    assert.equal(pool(node)?.ready, 0);
    // Nothing refills a closed node's pool.
    await sleep(1000);
    assert.deepEqual(await poolVms(node), []);
    assert.equal(pool(node)?.filling, 0);
  });

  // A claim starts a refill in the background; close() can come at any moment
  // of that VM's start. Each stage below closes the node at a different point
  // (close() may stop the start there, or let it finish and kill the VM: either
  // way nothing of it may remain).
  test("close() while a pool refill is in flight leaves nothing, at any stage of the refill", async (t) => {
    // [what has happened, how to see it, then how long to wait (ms) before close()]
    const cgroupMade = (id: string) => existsSync(`/sys/fs/cgroup/memory/firebreak/fb-${id}`);
    const qemuSpawned = (_: string, dir: string) => existsSync(path.join(dir, "console.log"));
    const stages: [string, (id: string, dir: string) => boolean, number][] = [
      ["owner record written", () => true, 0],
      ["network namespace created", (id) => existsSync(`/run/netns/fb-${id}`), 0],
      // QEMU is launched right after the cgroup: closing here races teardown
      // against the launch, at a few offsets (the window is tens of ms wide).
      ["cgroup created", cgroupMade, 0],
      ["cgroup created", cgroupMade, 10],
      ["cgroup created", cgroupMade, 25],
      ["QEMU spawned", qemuSpawned, 0],
      ["QEMU spawned", qemuSpawned, 20],
      ["state loading", (_, dir) => existsSync(path.join(dir, "migrate-in.sock")), 0],
    ];
    const leaked: string[] = [];
    const problems: string[] = [];
    t.after(async () => {
      // Whatever leaked is ours: stop it so later tests and files start clean.
      for (const id of leaked) {
        const pid = (await qemuProcesses()).get(id);
        if (pid) process.kill(pid, "SIGKILL");
        await fs.rm(path.join(paths.ownersDir(config), `${id}.json`), { force: true });
      }
      if (leaked.length) await rt.reconcile();
    });
    for (const [what, reached, delayMs] of stages) {
      const stage = delayMs ? `${what} +${delayMs} ms` : what;
      const node = await NodeRuntime.open(config);
      try {
        await node.fillPool(tpl, 1);
        const known = new Set(await ourOwnerIds());
        const claimed = await node.create({ template: tpl });
        createdIds.add(claimed.id);
        assertPath(claimed, "warm", "claim");
        // Find the refill's sandbox as soon as its owner record exists, then
        // wait (polling tightly) for the stage.
        const deadline = Date.now() + 30_000;
        let id: string | undefined;
        let hit = false;
        while (Date.now() < deadline) {
          if (!id) {
            id = (await ourOwnerIds()).find((i) => !known.has(i) && i !== claimed.id);
            if (id) createdIds.add(id);
          }
          if (id && reached(id, path.join(paths.sandboxesDir(config), id))) {
            hit = true;
            break;
          }
          if (id && pool(node)?.filling === 0) break; // the refill ended first
          await new Promise((r) => setImmediate(r));
        }
        assert.ok(id, "no refill started after the claim");
        if (hit && delayMs) await sleep(delayMs);
        if (!hit) {
          t.diagnostic(`stage "${stage}" was not observed before the refill finished; closing anyway`);
        }
        await node.close();
        // The refill's start settles (it fails, or finishes and is killed)...
        await waitFor("the refill to settle", () => pool(node)?.filling === 0, 30_000);
        t.diagnostic(
          `close at "${stage}"${hit ? "" : " (not observed)"}: the refill ${pool(node)?.lastError ? `failed: ${pool(node)?.lastError}` : "finished (and its VM was killed)"}`,
        );
        // ...and leaves nothing (teardown of a failed start runs in the background).
        const left = await waitFor(
          "the refill's resources to go",
          async () => {
            const l = await leftovers(id!);
            return l.length === 0 ? "none" : undefined;
          },
          5_000,
        ).catch(async () => leftovers(id!));
        if (left !== "none") {
          leaked.push(id);
          problems.push(`close at "${stage}" left: ${(left as string[]).join("; ")}`);
        }
        await assertNoLeftovers([claimed.id]);
      } finally {
        await node.close();
      }
    }
    assert.deepEqual(problems, [], problems.join("\n"));
  });
});
