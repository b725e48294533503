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
    for (let i = 0; i < CYCLES; i++) {
      const sb = await newSandbox();
      ids.push(sb.id);
      const r = await exec(sb, ["/bin/sh", "-c", `echo cycle ${i}; echo err ${i} >&2`]);
      assert.deepEqual(r, { exitCode: 0, stdout: `cycle ${i}\n`, stderr: `err ${i}\n` });
      await rt.kill(sb.id);
      assert.equal(sb.state, "stopped");
      // Checked after every cycle, so a leak names the cycle that made it.
      await assertNoLeftovers([sb.id]);
    }
    await assertNoLeftovers(ids);
    assert.equal(rt.list().length, 0, "the runtime still lists finished sandboxes");
    // No host file descriptors (sockets, console files, tap fds) pile up either.
    const fdsAfter = (await fs.readdir("/proc/self/fd")).length;
    assert.ok(fdsAfter - fdsBefore < 10, `file descriptors grew from ${fdsBefore} to ${fdsAfter}`);
  });

  test("a QEMU killed with SIGKILL from outside is noticed: crashed, and everything reclaimed", async (t) => {
    const rt = await runtime();
    const sb = await createSandbox(t);
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
    await waitFor("its resources to be reclaimed", async () => (await leftovers(sb.id)).length === 0, 15_000);
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

    // The owner dies without any cleanup.
    child.kill("SIGKILL");
    await exited;
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
