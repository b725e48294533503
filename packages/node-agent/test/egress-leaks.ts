// Leak check for the egress tests: nothing named after a test tag remains
// (namespaces, links, root-namespace routes, nft tables in the root namespace).
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { run } from "../src/host/exec.ts";

export async function assertNoEgressLeaks(tag: string): Promise<void> {
  const ns = (await readdir("/run/netns").catch(() => [] as string[])).filter((n) => n.includes(tag));
  assert.deepEqual(ns, [], "namespaces of this test remain");
  const links = (await run("ip", ["-o", "link"])).stdout
    .split("\n")
    .filter((l) => l.includes(tag) || new RegExp(`alias fb-e${tag}`).test(l));
  assert.deepEqual(links, [], "links of this test remain");
  const routes = (await run("ip", ["-4", "route", "show"])).stdout
    .split("\n")
    .filter((l) => l.includes(`fbtw${tag}`.slice(0, 15)));
  assert.deepEqual(routes, [], "routes of this test remain");
  const tables = (await run("nft", ["list", "tables"])).stdout;
  assert.doesNotMatch(tables, /firebreak/, "a firebreak table is in the root namespace");
}
