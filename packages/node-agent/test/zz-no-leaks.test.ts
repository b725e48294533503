// Runs last (files run in name order with --test-concurrency=1): after the
// whole suite, nothing of any test sandbox remains on the host.
//
// Firebreak processes with other state dirs may be running on this host at the
// same time (developers, benchmarks): their live sandboxes are not leaks. Only
// resources attributable to the test state dir, or owned by nobody, count; the
// latter are reported as a diagnostic (they may be a concurrent network unit
// test's namespaces) and fail the test only when they are named after a
// sandbox whose record says it was ours.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import { run } from "../src/host/exec.ts";
import { paths } from "../src/index.ts";
import { assertNoLeaks, config, listDir, qemuProcesses, STATE_DIR, skipUnlessRoot } from "./helpers.ts";

interface OwnerRecord {
  id: string;
  ownerPid: number;
  ownerStartTime?: number;
  stateDir?: string;
}

async function ownerAlive(r: OwnerRecord): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${r.ownerPid}/stat`, "utf8").catch(() => "");
  if (!stat) return false;
  const start = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
  return r.ownerStartTime === undefined || start === r.ownerStartTime;
}

test("no leaks: no test VM, namespace, veth, cgroup, owner record or state file remains", {
  skip: skipUnlessRoot,
}, async (t) => {
  await assertNoLeaks([]);

  // Nothing in the test state dir's per-sandbox areas.
  assert.deepEqual(await listDir(paths.sandboxesDir(config)), [], `sandbox dirs left in ${STATE_DIR}`);
  const staging = (await listDir(paths.imagesDir(config))).filter((e) => e.startsWith("."));
  assert.deepEqual(staging, [], "build staging dirs left");

  // Host-wide: every fb-* resource must have a live owner; the ones whose
  // record names the test state dir must not exist at all.
  const records = new Map<string, OwnerRecord>();
  for (const f of await listDir(paths.ownersDir(config))) {
    if (!f.endsWith(".json")) continue;
    const r = JSON.parse(
      await fs.readFile(path.join(paths.ownersDir(config), f), "utf8").catch(() => "null"),
    ) as OwnerRecord | null;
    if (r) records.set(f.slice(0, -5), r);
  }
  const ours = [...records.values()].filter((r) => r.stateDir === STATE_DIR).map((r) => r.id);
  assert.deepEqual(ours, [], "owner records of test sandboxes remain");

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
  for (const id of ids) {
    const r = records.get(id);
    if (!r || !(await ownerAlive(r))) unowned.push(id);
  }
  const links = (await run("ip", ["-o", "link"])).stdout
    .split("\n")
    .filter((l) => / fbh-\d+[@:]/.test(l))
    .map((l) => /alias (fb-\S+)/.exec(l)?.[1] ?? l);
  const strayLinks = links.filter(
    (alias) => !ids.has(alias.replace(/^fb-/, "")) || unowned.includes(alias.slice(3)),
  );
  if (unowned.length || strayLinks.length) {
    t.diagnostic(
      `fb-* resources without a live owner (not from this suite's state dir): ${[...unowned, ...strayLinks].join(", ")}`,
    );
  }
  const nft = await run("nft", ["list", "tables"], { allowFailure: true });
  assert.doesNotMatch(nft.stdout, /\bfirebreak\b/, "a firebreak nftables table is in the root namespace");
});
