// Teardown leaves nothing behind: sequential create/exec/kill cycles, a QEMU
// killed from outside, and a dead owner's sandbox removed by the reconciler.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { NodeRuntime } from "../src/index.ts";
import { reconcile } from "../src/sandbox/reconciler.ts";
import { SlotRegistry } from "../src/sandbox/slots.ts";
import {
  assertNoLeaks,
  assertNoLeftovers,
  config,
  createdIds,
  createSandbox,
  exec,
  leftovers,
  newSandbox,
  qemuProcesses,
  runtime,
  skipUnlessRoot,
  template,
  waitFor,
} from "./helpers.ts";

const CYCLES = Number(process.env["FIREBREAK_TEST_CYCLES"] ?? 50);
const ORPHAN_OWNER = fileURLToPath(new URL("./fixtures/orphan-owner.ts", import.meta.url));

describe("teardown leaves nothing behind", { skip: skipUnlessRoot }, () => {
  after(async () => {
    await (await runtime()).close();
    await assertNoLeaks();
  });

  test(`${CYCLES} sequential create, exec, kill cycles leave nothing`, async (t) => {
    const rt = await runtime();
    const ids: string[] = [];
    t.after(async () => {
      for (const id of ids) await rt.kill(id);
    });
    const fdsBefore = (await fs.readdir("/proc/self/fd")).length;
    const startPaths: Record<string, number> = {};
    for (let i = 0; i < CYCLES; i++) {
      const sb = await newSandbox();
      ids.push(sb.id);
      const p = sb.timings?.path ?? "unknown";
      startPaths[p] = (startPaths[p] ?? 0) + 1;
      const r = await exec(sb, ["/bin/sh", "-c", `echo cycle ${i}; echo err ${i} >&2`]);
      assert.deepEqual(r, { exitCode: 0, stdout: `cycle ${i}\n`, stderr: `err ${i}\n` });
      await rt.kill(sb.id);
      assert.equal(sb.state, "stopped");
      // Checked after every cycle, so a leak names the cycle that made it.
      await assertNoLeftovers([sb.id]);
    }
    await assertNoLeftovers(ids);
    t.diagnostic(`start paths: ${JSON.stringify(startPaths)}`);
    assert.equal(rt.list().length, 0, "the runtime still lists finished sandboxes");
    // No host file descriptors (sockets, console files, tap fds) pile up either.
    const fdsAfter = (await fs.readdir("/proc/self/fd")).length;
    assert.ok(fdsAfter - fdsBefore < 10, `file descriptors grew from ${fdsBefore} to ${fdsAfter}`);
  });

  test("every start path (cold, snapshot restore, warm pool) tears down completely", async (t) => {
    const base = await template("base");
    // A runtime of its own: closing it (pool VMs included) must leave nothing.
    const rt = await NodeRuntime.open(config);
    let closed = false;
    t.after(async () => {
      if (!closed) await rt.close();
    });
    const ids: string[] = [];
    const track = (sb: { id: string }) => {
      ids.push(sb.id);
      createdIds.add(sb.id);
    };
    const once = async (opts: { forceCold?: boolean }, want: string) => {
      const sb = await rt.create({ template: base, envVars: { FB_PATH: want }, ...opts });
      track(sb);
      assert.equal(sb.timings?.path, want);
      assert.equal((await exec(sb, ["printenv", "FB_PATH"])).stdout, `${want}\n`);
      await rt.kill(sb.id);
      await assertNoLeftovers([sb.id]);
    };

    await once({ forceCold: true }, "cold");
    await rt.prepareSnapshot(base); // made now, or found from an earlier build
    await once({}, "snapshot");

    await rt.fillPool(base, 1);
    const warm = await rt.create({ template: base, envVars: { FB_PATH: "warm" } });
    track(warm);
    assert.equal(warm.timings?.path, "warm");
    // Personalized after the claim: the env given at create is there.
    assert.equal((await exec(warm, ["printenv", "FB_PATH"])).stdout, "warm\n");
    await rt.kill(warm.id);
    await assertNoLeftovers([warm.id]);
    // The claim started a refill in the background; close while it may still
    // be starting, and nothing of it may remain.
    closed = true;
    await rt.close();
    await waitFor(
      "pool VMs of the closed runtime to be gone",
      async () => {
        try {
          await assertNoLeaks(ids);
          return true;
        } catch {
          return false;
        }
      },
      15_000,
    ).catch(() => {});
    await assertNoLeaks(ids);
  });

  test("a kill while a create is in flight (network, QEMU launch, boot) leaves nothing", async () => {
    const rt = await runtime();
    const base = await template("base");
    const points: Array<[string, (id: string) => Promise<boolean>]> = [
      ["as soon as it is listed", async () => true],
      ["once its QEMU process exists", async (id) => (await qemuProcesses()).has(id)],
      ["while the guest boots", async (id) => (await qemuProcesses()).has(id) && rt.get(id).vm !== undefined],
    ];
    for (const [when, ready] of points) {
      const known = new Set(rt.list().map((s) => s.id));
      const creating = rt.create({ template: base, forceCold: true }).then(
        (sb) => ({ ok: true as const, sb }),
        (e: Error) => ({ ok: false as const, e }),
      );
      const id = await waitFor(
        `the new sandbox to be listed (${when})`,
        () => rt.list().find((s) => !known.has(s.id))?.id,
      );
      createdIds.add(id);
      let reached = false;
      await waitFor(
        `the kill point: ${when}`,
        async () => {
          reached = await ready(id).catch(() => false);
          return reached || rt.list().every((s) => s.id !== id) || rt.get(id).state !== "starting";
        },
        60_000,
      );
      await rt.kill(id, `killed ${when}`);
      const outcome = await creating;
      // A create that won the race is killed like any sandbox; one that lost fails.
      if (outcome.ok) await rt.kill(outcome.sb.id);
      await assertNoLeftovers([id]);
    }
    // Nothing held in this process either (listeners, slot bookkeeping): the
    // next sandbox, which reuses the lowest free slot, starts and works.
    const next = await rt.create({ template: base });
    createdIds.add(next.id);
    try {
      assert.equal((await exec(next, ["echo", "next"])).stdout, "next\n");
    } finally {
      await rt.kill(next.id);
    }
    await assertNoLeftovers([next.id]);
  });

  for (const forceCold of [true, false]) {
    const how = forceCold ? "booted cold" : "started by the default path (snapshot when there is one)";
    test(`a QEMU killed with SIGKILL from outside is noticed: crashed, everything reclaimed (${how})`, async (t) => {
      const rt = await runtime();
      const sb = await createSandbox(t, { forceCold });
      if (forceCold) assert.equal(sb.timings?.path, "cold");
      assert.equal((await exec(sb, ["echo", "alive"])).stdout, "alive\n");
      // A command is running in the guest when its VM dies.
      const inFlight = sb.exec(["sleep", "600"]).then(
        (r) => ({ ok: true as const, r }),
        (e: Error) => ({ ok: false as const, e }),
      );
      await waitFor("sleep to run in the guest", async () => {
        const { processes } = await sb.envd().process.list({});
        return processes.some((p) => p.config?.cmd === "sleep");
      });
      // Found the way an operator would: by its -name in the process table.
      const pid = (await qemuProcesses()).get(sb.id);
      assert.ok(pid, "no QEMU process named after the sandbox");
      process.kill(pid, "SIGKILL");

      await waitFor("the sandbox to be marked crashed", () => sb.state === "crashed", 15_000);
      assert.match(sb.endReason ?? "", /SIGKILL/);
      await waitFor(
        "its resources to be reclaimed",
        async () => (await leftovers(sb.id)).length === 0,
        15_000,
      );
      assert.throws(() => rt.get(sb.id), { code: "SANDBOX_NOT_FOUND" });

      // The command that was running does not hang: it fails.
      const outcome = await waitFor("the in-flight exec to settle", () =>
        Promise.race([inFlight, new Promise<undefined>((r) => setTimeout(r, 200, undefined))]),
      );
      assert.equal(outcome.ok, false, "an exec in a crashed sandbox reported success");
      // New work is refused with a state error; kill is a harmless no-op.
      await assert.rejects(sb.exec(["true"]), { code: "SANDBOX_STATE_INVALID" });
      await rt.kill(sb.id);
      await assertNoLeftovers([sb.id]);
    });
  }

  test("a dead owner's sandbox is removed by NodeRuntime.open (the reconciler)", async (t) => {
    await template("base");
    const child = spawn(process.execPath, [ORPHAN_OWNER], {
      env: process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (b: Buffer) => {
      stderr += b.toString();
    });
    const exited = once(child, "exit");
    t.after(() => {
      child.kill("SIGKILL");
    });
    const [line] = (await Promise.race([
      once(createInterface({ input: child.stdout }), "line"),
      exited.then(() => {
        throw new Error(`the owner process exited before creating its sandbox:\n${stderr}`);
      }),
    ])) as [string];
    const info = JSON.parse(line) as { id: string; qemuPid: number; slot: number; ownerPid: number };
    createdIds.add(info.id);
    t.after(async () => {
      // Whatever happens above, leave nothing of it behind.
      await reconcile(config, new SlotRegistry(path.join(config.runDir, "slots")), new Set());
    });

    const present = await leftovers(info.id);
    for (const kind of [
      "qemu process",
      "network namespace",
      "veth",
      "cgroup",
      "state dir",
      "owner record",
      "slot claim",
    ]) {
      assert.ok(
        present.some((p) => p.startsWith(kind)),
        `expected a ${kind} while the owner lives: ${present.join(", ")}`,
      );
    }

    // While its owner lives, reconcilers leave the sandbox alone: one opening
    // this state dir, and one with another state dir on the same host.
    const live = await NodeRuntime.open(config);
    await live.close();
    const otherStateDir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-other-state-"));
    t.after(() => fs.rm(otherStateDir, { recursive: true, force: true }));
    const other = { ...config, stateDir: otherStateDir };
    const report = await reconcile(other, new SlotRegistry(path.join(config.runDir, "slots")), new Set());
    assert.ok(!report.removed.some((r) => r.includes(info.id)), `removed a live sandbox: ${report.removed}`);
    assert.deepEqual(
      await leftovers(info.id),
      present,
      "a reconciler touched a sandbox whose owner is alive",
    );

    // The owner dies without any cleanup. Its VM dies with it (the jailer set
    // PR_SET_PDEATHSIG): nothing runs on unsupervised; the rest is the
    // reconciler's.
    child.kill("SIGKILL");
    await exited;
    await waitFor(
      "the QEMU of a dead owner to die with it",
      async () => !(await leftovers(info.id)).some((p) => p.startsWith("qemu process")),
      10_000,
    );
    assert.ok((await leftovers(info.id)).length > 0, "the resources vanished with their owner");

    const rt = await NodeRuntime.open(config);
    t.after(() => rt.close());
    assert.deepEqual(await leftovers(info.id), [], "NodeRuntime.open left the orphan's resources");

    // And the node works normally afterwards (the reclaimed slot is reusable).
    const sb = await rt.create({ template: await template("base") });
    createdIds.add(sb.id);
    t.after(() => rt.kill(sb.id));
    assert.equal((await exec(sb, ["echo", "after reconcile"])).stdout, "after reconcile\n");
  });
});
