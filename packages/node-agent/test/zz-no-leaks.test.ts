// Runs last (files run in name order with --test-concurrency=1): after the
// whole suite, nothing of any test sandbox remains on the host.
//
// Firebreak processes with other state dirs may be running on this host at the
// same time (developers, benchmarks), and a developer may be using the test
// state dir by hand: live sandboxes of live owners are not leaks. What counts:
// anything in or naming the test state dir whose owner is gone. Host-wide
// fb-* resources with no live owner at all are reported as a diagnostic (they
// may be a concurrent network unit test's namespaces, which have no owner
// record).
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { run } from "../src/host/exec.ts";
import { paths } from "../src/index.ts";
import {
  assertNoLeaks,
  config,
  listDir,
  ownerRecords,
  processAlive,
  qemuProcesses,
  STATE_DIR,
  skipUnlessRoot,
} from "./helpers.ts";

test("no leaks: no test VM, namespace, veth, cgroup, owner record or state file remains", {
  skip: skipUnlessRoot,
}, async (t) => {
  await assertNoLeaks([]);

  const records = await ownerRecords();
  const liveOwner = async (id: string) => {
    const r = records.get(id);
    return r !== undefined && (await processAlive(r.ownerPid, r.ownerStartTime));
  };

  // Nothing in the test state dir's per-sandbox area without a live owner.
  const sandboxDirs: string[] = [];
  for (const id of await listDir(paths.sandboxesDir(config)))
    if (!(await liveOwner(id))) sandboxDirs.push(id);
  assert.deepEqual(sandboxDirs, [], `sandbox dirs left in ${STATE_DIR}`);
  const ours: string[] = [];
  for (const [id, r] of records) if (r.stateDir === STATE_DIR && !(await liveOwner(id))) ours.push(id);
  assert.deepEqual(ours, [], "owner records of finished test sandboxes remain");

  // Host-wide fb-* resources and who owns them.
  const ids = new Set<string>();
  for (const id of (await qemuProcesses()).keys()) ids.add(id);
  for (const ns of await listDir("/run/netns")) if (ns.startsWith("fb-")) ids.add(ns.slice(3));
  for (const ctrl of await listDir("/sys/fs/cgroup")) {
    for (const cg of await listDir(path.join("/sys/fs/cgroup", ctrl, "firebreak"))) {
      if (cg.startsWith("fb-")) ids.add(cg.slice(3));
    }
  }
  for (const slot of await listDir(paths.slotsDir(config))) {
    const owner = (
      await fs.readFile(path.join(paths.slotsDir(config), slot, "owner"), "utf8").catch(() => "")
    ).trim();
    if (owner) ids.add(owner);
  }
  const unowned: string[] = [];
  for (const id of ids) if (!(await liveOwner(id))) unowned.push(id);
  const links = (await run("ip", ["-o", "link"])).stdout
    .split("\n")
    .filter((l) => / fbh-\d+[@:]/.test(l))
    .map((l) => /alias fb-(\S+)/.exec(l)?.[1] ?? l);
  const strayLinks: string[] = [];
  for (const id of links) if (!(await liveOwner(id))) strayLinks.push(`veth of ${id}`);
  const others = [...ids].filter((id) => !unowned.includes(id));
  if (others.length) t.diagnostic(`live sandboxes of other processes (not leaks): ${others.join(", ")}`);
  if (unowned.length || strayLinks.length) {
    t.diagnostic(`fb-* resources without a live owner record: ${[...unowned, ...strayLinks].join(", ")}`);
  }

  const nft = await run("nft", ["list", "tables"], { allowFailure: true });
  assert.doesNotMatch(nft.stdout, /\bfirebreak\b/, "a firebreak nftables table is in the root namespace");
});
