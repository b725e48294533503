// The reconciler judges only QEMUs of its own PID namespace: a Firebreak in a
// container or chroot on the same host (its own PID namespace and run dir, as
// in scripts/fresh-root/run.sh) keeps its VMs while the host's runs.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { reconcile } from "../src/sandbox/reconciler.ts";
import { SlotRegistry } from "../src/sandbox/slots.ts";
import { config, processAlive, qemuProcesses, skipUnlessRoot, waitFor } from "./helpers.ts";

const newId = () =>
  randomBytes(8)
    .toString("hex")
    .replace(/[^a-z0-9]/g, "")
    .slice(0, 16);

/** A process whose command line reads like a sandbox's QEMU (`qemu-system-x86_64 ... -name fb-<id>,...`). */
function fakeQemu(id: string, ownPidNamespace: boolean): ChildProcess {
  const args = ["-c", "sleep 600; :", "-name", `fb-${id},debug-threads=on`];
  return ownPidNamespace
    ? spawn(
        "unshare",
        [
          "--pid",
          "--fork",
          "--kill-child",
          "--",
          "bash",
          "-c",
          `exec -a qemu-system-x86_64 bash ${args.map((a) => `'${a}'`).join(" ")}`,
        ],
        { detached: true, stdio: "ignore" },
      )
    : spawn("bash", args, { argv0: "qemu-system-x86_64", detached: true, stdio: "ignore" });
}

test("a QEMU in another PID namespace is left alone; one in ours without an owner is removed", {
  skip: skipUnlessRoot,
}, async (t) => {
  const inOurs = newId();
  const inOther = newId();
  const children = [fakeQemu(inOurs, false), fakeQemu(inOther, true)];
  t.after(async () => {
    for (const c of children) {
      try {
        process.kill(-c.pid!, "SIGKILL");
      } catch {
        // gone
      }
    }
    for (const id of [inOurs, inOther]) {
      await fs.rm(path.join(config.runDir, "owners", `${id}.json`), { force: true });
    }
  });
  const pids = await waitFor("both fake QEMUs to show up", async () => {
    const q = await qemuProcesses();
    const ours = q.get(inOurs);
    const other = q.get(inOther);
    return ours && other ? ([ours, other] as const) : undefined;
  });

  const report = await reconcile(config, new SlotRegistry(path.join(config.runDir, "slots")), new Set());

  assert.ok(
    report.removed.some((r) => r.includes(inOurs)),
    `the ownerless QEMU of our namespace was not removed: ${report.removed.join(", ")}`,
  );
  assert.equal(await processAlive(pids[0]), false, "the ownerless QEMU of our namespace still runs");
  assert.ok(
    !report.removed.some((r) => r.includes(inOther)),
    `a QEMU of another PID namespace was removed: ${report.removed.join(", ")}`,
  );
  assert.equal(await processAlive(pids[1]), true, "a QEMU of another PID namespace was killed");
});
