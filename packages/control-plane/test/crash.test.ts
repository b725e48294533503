// kill -9 of the control plane during a create, then restart: nothing is
// orphaned on the host, every sandbox is ended-and-billed (or paused and
// adopted), every usage record exists exactly once, and keys survive.
import assert from "node:assert/strict";
import { after, afterEach, describe, test } from "node:test";
import { ApiClient } from "../src/testing/api-client.ts";
import {
  ADMIN_KEY,
  commandOutput,
  orphans,
  ServerProcess,
  skipUnlessRoot,
  tenant,
  waitFor,
} from "./helpers.ts";

describe("crash safety", { skip: skipUnlessRoot }, () => {
  const procs: ServerProcess[] = [];
  after(async () => {
    for (const p of procs) await p.stop();
  });
  afterEach((t) => {
    // biome-ignore lint/suspicious/noExplicitAny: node:test's context
    if ((t as any).passed === false || process.env["FIREBREAK_TEST_LOG"]) {
      for (const [i, p] of procs.entries()) t.diagnostic(`server ${i} output:\n${p.output.slice(-3000)}`);
    }
  });

  test("kill -9 during a create, restart: no orphans, everything billed once, paused adopted, keys kept", async () => {
    const first = new ServerProcess();
    procs.push(first);
    await first.start();
    const admin = await new ApiClient(first.url, fetch, ADMIN_KEY).init();
    const t = await tenant(admin);

    const running = await t.api.post("/v1/sandboxes", { metadata: { role: "running" } });
    assert.equal(running.status, 201, running.text);
    const paused = await t.api.post("/v1/sandboxes", { metadata: { role: "paused" } });
    assert.equal(paused.status, 201, paused.text);
    await t.api.post(`/v1/sandboxes/${paused.json.id}/commands`, { cmd: "echo before-crash > /tmp/mark" });
    assert.equal((await t.api.post(`/v1/sandboxes/${paused.json.id}/pause`)).status, 200);
    // Let the sampler write interim usage for the running one.
    await waitFor("an interim usage sample", async () => {
      const r = (await t.api.get(`/v1/usage/records?sandboxId=${running.json.id}`)).json.records[0];
      return r && r.cpuSeconds > 0;
    });

    // A create in flight when the server dies.
    const inflight = t.api.post("/v1/sandboxes", { metadata: { role: "inflight" } }).catch((e: Error) => e);
    await waitFor("the create to reach the node", async () => {
      const s = (await t.api.get("/v1/sandboxes?state=starting")).json.sandboxes;
      return s.length > 0;
    });
    await first.kill9();
    assert.ok((await inflight) instanceof Error, "the in-flight create saw the connection drop");

    const second = new ServerProcess();
    procs.push(second);
    await second.start();
    const api2 = new ApiClient(second.url, fetch, t.key);
    api2.validator = admin.validator;

    // Keys survived (the tenant's key was created through the API).
    const all = (await api2.get("/v1/sandboxes?limit=100")).json.sandboxes as {
      id: string;
      state: string;
      endReason?: string;
      metadata: { role: string };
    }[];
    const byRole = Object.fromEntries(all.map((s) => [s.metadata.role, s]));
    assert.deepEqual(Object.keys(byRole).sort(), ["inflight", "paused", "running"]);
    assert.equal(byRole["running"]!.state, "crashed");
    assert.equal(byRole["running"]!.endReason, "control_plane_restart");
    assert.equal(byRole["inflight"]!.state, "failed");
    assert.equal(byRole["paused"]!.state, "paused");

    // No VM, namespace, veth, cgroup or owner record without a live owner.
    assert.deepEqual(await orphans(), []);

    // Exactly one usage record per sandbox; final for the ended ones.
    const recs = (await api2.get("/v1/usage/records?limit=1000")).json.records as {
      sandboxId: string;
      final: boolean;
      cpuSeconds: number;
      lifetimeSeconds: number;
    }[];
    for (const s of all) {
      const mine = recs.filter((r) => r.sandboxId === s.id);
      assert.equal(mine.length, 1, `one usage record for ${s.metadata.role}`);
      assert.equal(mine[0]!.final, s.state !== "paused", `${s.metadata.role} final`);
    }
    const runRec = recs.find((r) => r.sandboxId === byRole["running"]!.id)!;
    assert.ok(runRec.cpuSeconds > 0, "usage up to the last interim sample is kept");

    // The paused sandbox was adopted: it resumes with its files.
    const resumed = await api2.post(`/v1/sandboxes/${byRole["paused"]!.id}/resume`);
    assert.equal(resumed.status, 200, resumed.text);
    const mark = await api2.post(`/v1/sandboxes/${byRole["paused"]!.id}/commands`, { cmd: "cat /tmp/mark" });
    assert.equal(commandOutput(mark.json).stdout, "before-crash\n");
    assert.equal((await api2.delete(`/v1/sandboxes/${byRole["paused"]!.id}`)).status, 204);
    const after = (await api2.get(`/v1/usage/records?sandboxId=${byRole["paused"]!.id}`)).json.records;
    assert.equal(after.length, 1);
    assert.equal(after[0].final, true);

    // A restart with nothing to recover changes nothing.
    await second.stop();
    const third = new ServerProcess();
    procs.push(third);
    await third.start();
    const api3 = new ApiClient(third.url, fetch, t.key);
    const recs3 = (await api3.get("/v1/usage/records?limit=1000")).json.records as { sandboxId: string }[];
    assert.deepEqual(recs3.map((r) => r.sandboxId).sort(), recs.map((r) => r.sandboxId).sort());
    const keys = (await new ApiClient(third.url, fetch, ADMIN_KEY).get("/v1/keys")).json.keys as {
      id: string;
    }[];
    assert.ok(keys.length >= 2, "the admin key and the tenant's key survived restarts");
    await third.stop();
    assert.deepEqual(await orphans(), []);
  });
});
