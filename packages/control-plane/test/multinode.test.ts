// Many nodes on one machine (issue "Many nodes"): PostgreSQL, two control-plane
// replicas and three node daemons, each node in its own network namespace with
// its own state dir and address range. Placement by activation cost, template
// distribution, a node killed mid-create, its lost sandboxes and its return,
// and the reaper lease moving to the surviving replica.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { qemuProcesses } from "../../node-agent/test/helpers.ts";
import { PgStore } from "../src/store/pg-store.ts";
import { ApiClient } from "../src/testing/api-client.ts";
import { skipUnlessRoot, tenant, waitFor } from "./helpers.ts";
import { type Fleet, startFleet } from "./multinode-harness.ts";

interface EventLine {
  type: string;
  detail: Record<string, unknown>;
}

let fleet: Fleet;
let store: PgStore;
let api: ApiClient;
let api2: ApiClient;
const created: string[] = [];

async function events(id: string): Promise<EventLine[]> {
  // The tenant's own key: another tenant's admin key sees no such sandbox (404).
  const r = await api.get(`/v1/sandboxes/${id}/events`);
  assert.equal(r.status, 200, r.text);
  return r.json.events as EventLine[];
}

async function scheduled(id: string): Promise<{ node: string; path: string; reason: string }> {
  const e = (await events(id)).filter((x) => x.type === "scheduled" || x.type === "rescheduled").at(-1)!;
  const d = (e.type === "rescheduled" ? e.detail["to"] : e.detail) as {
    node: string;
    path: string;
    reason: string;
  };
  return d;
}

async function nodeReport(id: string) {
  const nodes = (await fleet.replicas[0]!.api.get("/v1/nodes")).json.nodes as {
    id: string;
    state: string;
    templates?: { name: string; snapshotShapes: string[]; warm: Record<string, number> }[];
  }[];
  return nodes.find((n) => n.id === id)!;
}

/** Only `keep` takes creates (undefined: every node does again). */
async function drainAllBut(keep: string | undefined): Promise<void> {
  for (const n of fleet.nodes) {
    const draining = keep !== undefined && n.id !== keep;
    const r = await fleet.replicas[0]!.api.post(`/v1/nodes/${n.id}/drain`, { draining });
    assert.equal(r.status, 200, r.text);
  }
}

describe("many nodes: PostgreSQL, two replicas, three node daemons", { skip: skipUnlessRoot }, () => {
  before(async () => {
    fleet = await startFleet({ nodes: 3, replicas: 2, seeded: 2 });
    store = await PgStore.open(fleet.database);
    const t = await tenant(fleet.replicas[0]!.api);
    api = t.api;
    api2 = await new ApiClient(fleet.replicas[1]!.url, fetch, t.key).init();
  });
  after(async () => {
    for (const id of created) await fleet.replicas[0]!.api.delete(`/v1/sandboxes/${id}`).catch(() => {});
    await store?.close();
    await fleet?.close();
  });

  test("a template reaches the node that lacks it by content address, and that node prepares its snapshot", async () => {
    const n3 = fleet.nodes[2]!;
    assert.equal(
      (await nodeReport(n3.id)).templates?.some((t) => t.name === "base"),
      false,
    );
    await waitFor(
      "base to be copied to the third node and its snapshot made there",
      async () =>
        (await nodeReport(n3.id)).templates?.find((t) => t.name === "base")?.snapshotShapes.includes("1x256"),
      600_000,
    );
    const image = path.join(n3.stateDir, "templates", "base.json");
    const key = (JSON.parse(await fs.readFile(image, "utf8")) as { key: string }).key;
    const ref = JSON.parse(
      await fs.readFile(path.join(fleet.nodes[0]!.stateDir, "templates", "base.json"), "utf8"),
    );
    assert.equal(key, ref.key, "the same content address");
  });

  test("with no warm slot anywhere, creates through either replica restore a snapshot, and say so", async () => {
    for (const client of [api, api2]) {
      const r = await client.post("/v1/sandboxes", {});
      assert.equal(r.status, 201, r.text);
      created.push(r.json.id);
      const s = await scheduled(r.json.id);
      assert.equal(s.path, "snapshot");
      assert.match(s.reason, /^snapshot: snapshot for 1x256/);
      assert.equal(r.json.startPath, "snapshot");
    }
  });

  test("a node with warm slots for the template wins, and the reason says so; twenty creates mostly go warm", async () => {
    const warmNode = fleet.nodes[1]!;
    const pool = await fleet.replicas[0]!.api.post(`/v1/nodes/${warmNode.id}/pools`, {
      template: "base",
      // 14 ready: after the first create, 13 for the next twenty, so most go warm.
      size: 14,
    });
    assert.equal(pool.status, 204, pool.text);
    await waitFor(
      "14 warm VMs on the second node",
      async () =>
        ((await nodeReport(warmNode.id)).templates?.find((t) => t.name === "base")?.warm["1x256"] ?? 0) >= 14,
      900_000,
    );
    // No refills from here, so what the twenty find is the 13 ready VMs and
    // nothing that depends on how fast a loaded machine refills (a smaller
    // target does not shrink a pool). (Refills used to fill the node's
    // capacity and push creates elsewhere, 9 of 20 warm twice: placement now
    // lets a warm claim through a full node, scheduler/placement.ts.)
    const stop = await fleet.replicas[0]!.api.post(`/v1/nodes/${warmNode.id}/pools`, {
      template: "base",
      size: 0,
    });
    assert.equal(stop.status, 204, stop.text);
    const one = await api2.post("/v1/sandboxes", {});
    assert.equal(one.status, 201, one.text);
    created.push(one.json.id);
    const s = await scheduled(one.json.id);
    assert.equal(s.node, warmNode.id);
    assert.equal(s.path, "warm");
    assert.match(s.reason, /^warm: \d+ warm VM\(s\) ready/);

    const paths: string[] = [];
    for (let batch = 0; batch < 5; batch++) {
      const rs = await Promise.all(
        Array.from({ length: 4 }, (_, i) => ((batch + i) % 2 ? api : api2).post("/v1/sandboxes", {})),
      );
      for (const r of rs) {
        assert.equal(r.status, 201, r.text);
        created.push(r.json.id);
        paths.push(r.json.startPath);
      }
    }
    const warm = paths.filter((p) => p === "warm").length;
    assert.ok(warm > paths.length / 2, `most of twenty creates went warm: ${paths.join(", ")}`);
    await fleet.replicas[0]!.api.post(`/v1/nodes/${warmNode.id}/pools`, { template: "base", size: 0 });
    for (const id of created.splice(0)) assert.equal((await api.delete(`/v1/sandboxes/${id}`)).status, 204);
  });

  test("a node killed with SIGKILL mid-create: the create fails or moves, nothing is billed twice, its sandboxes end once, and back it leaves no orphan", async () => {
    const victim = fleet.nodes[0]!;
    await drainAllBut(victim.id);
    const before = await api.post("/v1/sandboxes", {});
    assert.equal(before.status, 201, before.text);
    const lost = before.json.id as string;
    const lostNodeId = (await store.getSandbox(lost))!.nodeSandboxId!;
    // Every node takes creates again; the next one is steered to the victim by load.
    await drainAllBut(victim.id);
    const creating = api.post("/v1/sandboxes", {});
    await waitFor(
      "a create to be in flight on the victim",
      async () => (await store.listLiveSandboxesOnNode(victim.id)).some((r) => r.state === "starting"),
      60_000,
    );
    const inFlight = (await store.listLiveSandboxesOnNode(victim.id)).find((r) => r.state === "starting")!.id;
    await drainAllBut(undefined); // the others take creates again, so the create may move
    await victim.kill();
    const outcome = await creating;
    assert.ok(outcome.status === 201 || outcome.status >= 500, `${outcome.status} ${outcome.text}`);
    // The create fails, or moves to another node, or had finished on the
    // victim just before the kill (then it is one more sandbox the lost node
    // takes down with it, ended once below).
    const endsWithVictim: string[] = [lost];
    if (outcome.status === 201) {
      created.push(outcome.json.id);
      if ((await store.getSandbox(inFlight))!.nodeId === victim.id) endsWithVictim.push(inFlight);
    }

    // The running sandbox on the lost node ends once, billed, when the node's lease runs out.
    await waitFor(
      "the lost node's sandboxes to end",
      async () => {
        for (const id of endsWithVictim) if ((await store.getSandbox(id))?.state !== "crashed") return false;
        return true;
      },
      60_000,
    );
    for (const id of endsWithVictim) assert.equal((await store.getSandbox(id))!.endReason, "node_lost");
    for (const id of [lost, inFlight]) {
      const usage = await store.listUsage({ tenantId: null, sandboxId: id, limit: 10 });
      assert.equal(usage.length, 1, `one usage record for ${id}`);
    }
    assert.equal((await store.listUsage({ tenantId: null, sandboxId: lost, limit: 10 }))[0]!.final, true);
    assert.equal((await nodeReport(victim.id)).state, "lost");

    // Back: it reconciles its host (its VMs died with it) and is active again.
    await victim.start();
    await waitFor(
      "the node to be active again",
      async () => (await nodeReport(victim.id)).state === "active",
      60_000,
    );
    assert.equal((await qemuProcesses()).has(lostNodeId), false, "no QEMU of the lost sandbox");
    assert.equal(existsSync(`/run/netns/fb-${lostNodeId}`), false, "no namespace");
    assert.equal(existsSync(path.join(victim.stateDir, "sandboxes", lostNodeId)), false, "no files");
    for (const ctrl of ["memory", "cpu", "pids"]) {
      assert.equal(
        existsSync(`/sys/fs/cgroup/${ctrl}/firebreak/fb-${lostNodeId}`),
        false,
        `no ${ctrl} cgroup`,
      );
    }
    // And it takes creates again.
    await drainAllBut(victim.id);
    const again = await api.post("/v1/sandboxes", {});
    assert.equal(again.status, 201, again.text);
    created.push(again.json.id);
    assert.equal((await scheduled(again.json.id)).node, victim.id);
    await drainAllBut(undefined);
  });

  test("killing the replica that holds the reaper lease: the other takes it within the lease time and reaps", async (t) => {
    await drainAllBut(undefined);
    const holder = (await store.getLease("reaper"))!.holder;
    const [dead, alive] = holder.includes(`/${fleet.replicas[0]!.proc.pid}/`)
      ? [fleet.replicas[0]!, fleet.replicas[1]!]
      : [fleet.replicas[1]!, fleet.replicas[0]!];
    await dead.kill("SIGKILL");
    const t0 = Date.now();
    await waitFor(
      "the other replica to hold the reaper lease",
      async () => {
        const l = await store.getLease("reaper");
        return l?.holder.includes(`/${alive.proc.pid}/`) && Date.parse(l.expiresAt) > Date.now();
      },
      30_000,
    );
    const tookMs = Date.now() - t0;
    const client = alive === fleet.replicas[0] ? api : api2;
    const short = await client.post("/v1/sandboxes", { timeoutMs: 2000 });
    assert.equal(short.status, 201, short.text);
    await waitFor(
      "the surviving replica's reaper to end the sandbox",
      async () => (await store.getSandbox(short.json.id))?.endedBy === "reaper",
      60_000,
    );
    t.diagnostic(`reaper lease taken over ${tookMs} ms after the SIGKILL (ttl 3000 ms)`);
  });
});
