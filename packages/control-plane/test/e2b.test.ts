// The real E2B SDK (e2b@2.51.0), unmodified, against the control plane: the
// SDK's API calls hit the E2B-compatible routes and its envd traffic goes
// through the server's proxy to the sandbox's guest agent.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import { assertNoLeftovers, nodeIds, server, skipUnlessRoot, tenant } from "./helpers.ts";

describe("E2B SDK against the control plane", { skip: skipUnlessRoot }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  const ours: string[] = [];

  before(async () => {
    ({ srv, admin } = await server());
  });
  after(async () => {
    const ids = await nodeIds(srv, ours);
    await srv.close();
    await assertNoLeftovers(ids);
  });

  test("Sandbox.create, commands.run, files.write/read, Sandbox.list, kill", async () => {
    const t = await tenant(admin);
    process.env["E2B_API_KEY"] = t.key.replace(/^fb_/, "e2b_");
    process.env["E2B_API_URL"] = srv.url;
    process.env["E2B_SANDBOX_URL"] = srv.url;
    const { Sandbox, CommandExitError } = await import("e2b");

    const sandbox = await Sandbox.create({ metadata: { via: "e2b" }, timeoutMs: 120_000 });
    ours.push(sandbox.sandboxId);
    const hi = await sandbox.commands.run("echo hi");
    assert.equal(hi.stdout, "hi\n");
    assert.equal(hi.exitCode, 0);

    const chunks: string[] = [];
    const streamed = await sandbox.commands.run("for i in 1 2 3; do echo line $i; done; whoami", {
      onStdout: (d) => {
        chunks.push(d);
      },
    });
    assert.equal(streamed.stdout, "line 1\nline 2\nline 3\nuser\n");
    assert.ok(chunks.join("").includes("line 2"));
    await assert.rejects(
      sandbox.commands.run("exit 3"),
      (e: unknown) => e instanceof CommandExitError && e.exitCode === 3,
    );

    await sandbox.files.write("/home/user/hello.txt", "hello from e2b");
    assert.equal(await sandbox.files.read("/home/user/hello.txt"), "hello from e2b");
    const entries = await sandbox.files.list("/home/user");
    assert.ok(entries.some((e) => e.name === "hello.txt"));

    const paginator = Sandbox.list({ query: { metadata: { via: "e2b" } } });
    const listed = await paginator.nextItems();
    assert.deepEqual(
      listed.map((s) => s.sandboxId),
      [sandbox.sandboxId],
    );
    assert.equal(listed[0]!.state, "running");

    // The same sandbox through the native API.
    const native = await t.api.get(`/v1/sandboxes/${sandbox.sandboxId}`);
    assert.equal(native.json.metadata.via, "e2b");

    assert.equal(await sandbox.isRunning(), true);
    await sandbox.setTimeout(90_000);
    const info = await sandbox.getInfo();
    assert.ok(Date.parse(info.endAt.toString()) > Date.now() + 60_000);

    // pause, then connect resumes it with its files
    assert.equal(await sandbox.pause(), true);
    assert.equal((await t.api.get(`/v1/sandboxes/${sandbox.sandboxId}`)).json.state, "paused");
    const again = await Sandbox.connect(sandbox.sandboxId, { timeoutMs: 60_000 });
    assert.equal(await again.files.read("/home/user/hello.txt"), "hello from e2b");
    assert.equal((await again.commands.run("echo back")).stdout, "back\n");

    await sandbox.kill();
    assert.equal(await Sandbox.kill(sandbox.sandboxId), false, "killing again answers false, not an error");
    assert.equal((await t.api.get(`/v1/sandboxes/${sandbox.sandboxId}`)).json.state, "killed");
    const recs = (await t.api.get(`/v1/usage/records?sandboxId=${sandbox.sandboxId}`)).json.records;
    assert.equal(recs.length, 1);
    assert.equal(recs[0].final, true);
  });

  test("base has E2B's tools; fork, snapshots, metrics and signed URLs work on real VMs; killing ends a running command at once", async () => {
    const t = await tenant(admin);
    process.env["E2B_API_KEY"] = t.key.replace(/^fb_/, "e2b_");
    process.env["E2B_API_URL"] = srv.url;
    process.env["E2B_SANDBOX_URL"] = srv.url;
    const { Sandbox, TimeoutError } = await import("e2b");

    const sandbox = await Sandbox.create({ timeoutMs: 300_000 });
    ours.push(sandbox.sandboxId);
    // What E2B's base template has and code relies on.
    const tools = await sandbox.commands.run(
      "git --version && curl --version | head -1 && pip --version && python -c 'print(6*7)' && sudo -n whoami",
      { timeoutMs: 0 }, // pip starts slowly under TCG
    );
    assert.match(tools.stdout, /^git version /m);
    assert.match(tools.stdout, /^curl /m);
    assert.match(tools.stdout, /^pip /m);
    assert.match(tools.stdout, /^42$/m);
    assert.match(tools.stdout, /^root$/m, "sudo without a password for the default user");
    // E2B's default for its sandboxes: the public internet (as a policy; the test host has none).
    assert.equal((await t.api.get(`/v1/sandboxes/${sandbox.sandboxId}/network`)).json.policy.internet, true);

    await sandbox.files.write("/home/user/state.txt", "before fork");
    const [fork] = await sandbox.fork();
    assert.ok(fork instanceof Sandbox);
    ours.push(fork.sandboxId);
    assert.equal(await fork.files.read("/home/user/state.txt"), "before fork");
    await fork.files.write("/home/user/state.txt", "in fork");
    assert.equal(await sandbox.files.read("/home/user/state.txt"), "before fork");
    await fork.kill();

    // A named snapshot on the real node: a new sandbox starts from it with its files.
    const snap = await sandbox.createSnapshot({ name: "e2b-vm-snap" });
    const restored = await Sandbox.create(snap.snapshotId, { timeoutMs: 120_000 });
    ours.push(restored.sandboxId);
    assert.equal(await restored.files.read("/home/user/state.txt"), "before fork");
    await restored.kill();
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false);

    // A signed URL carries neither the sandbox's id nor its token.
    const url = await sandbox.downloadUrl("/home/user/state.txt", { useSignatureExpiration: 600 });
    assert.ok(!url.includes(sandbox.sandboxId));
    const got = await fetch(url);
    assert.equal(got.status, 200);
    assert.equal(await got.text(), "before fork");

    // The sampler takes a point every 5 s.
    let metrics: Awaited<ReturnType<typeof sandbox.getMetrics>> = [];
    for (let i = 0; i < 60 && metrics.length === 0; i++) {
      metrics = await sandbox.getMetrics();
      if (!metrics.length) await new Promise((r) => setTimeout(r, 1000));
    }
    assert.ok(metrics.length > 0);
    assert.equal(metrics[0]!.cpuCount, 1);
    assert.ok(metrics[0]!.memUsed > 0 && metrics[0]!.memTotal === 256 * 2 ** 20);

    // Killing the sandbox ends a running command's stream: the SDK sees the sandbox gone.
    const cmd = await sandbox.commands.run("sleep 600", { background: true });
    await sandbox.kill();
    const err = await cmd.wait().catch((e: unknown) => e);
    assert.ok(err instanceof TimeoutError, String(err));
    assert.match((err as Error).message, /sandbox was killed or reached its end of life/);
  });

  test("the envd proxy refuses a wrong access token and unknown sandboxes", async () => {
    const t = await tenant(admin);
    const sb = (await t.api.post("/v1/sandboxes", {})).json;
    ours.push(sb.id);
    const health = (headers: Record<string, string>) => fetch(`${srv.url}/health`, { headers });
    assert.equal(
      (await health({ "e2b-sandbox-id": sb.id, "x-access-token": sb.envdAccessToken })).status,
      204,
    );
    assert.equal((await health({ "e2b-sandbox-id": sb.id, "x-access-token": "wrong" })).status, 401);
    assert.equal((await health({ "e2b-sandbox-id": "nosuchsandbox", "x-access-token": "x" })).status, 401);
    // SDK 2.7-2.14 REST calls carry only the token.
    assert.equal((await health({ "x-access-token": sb.envdAccessToken })).status, 204);
    await t.api.delete(`/v1/sandboxes/${sb.id}`);
    assert.equal(
      (await health({ "e2b-sandbox-id": sb.id, "x-access-token": sb.envdAccessToken })).status,
      502,
    );
  });
});
