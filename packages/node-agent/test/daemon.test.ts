// The node daemon over its wire (unix socket and TLS-PSK on loopback), with a
// real runtime: typed actions, errors with the node's codes, the sandbox port
// tunnels (ended by the node with their sandbox), and the credential.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, test } from "node:test";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { nodePb } from "@firebreak/protocol";
import { NodeDaemonClient } from "../src/daemon/client.ts";
import { NodeService } from "../src/daemon/node-service.ts";
import { type RunningDaemon, startDaemon } from "../src/daemon/server.ts";
import { FirebreakError } from "../src/errors.ts";
import { assertNoLeftovers, config, createdIds, runtime, skipUnlessRoot, template } from "./helpers.ts";

const SECRET = "ab".repeat(32);
let unixDaemon: RunningDaemon;
let tlsDaemon: RunningDaemon;
let client: NodeDaemonClient;
let tlsClient: NodeDaemonClient;
let service: NodeService;

before(async () => {
  if (skipUnlessRoot) return;
  await template("base");
  service = new NodeService(await runtime(), "n-test");
  const sock = `${config.runDir}/test-node-${process.pid}.sock`;
  unixDaemon = await startDaemon({ service, listen: { unix: sock }, secret: SECRET });
  tlsDaemon = await startDaemon({ service, listen: { host: "127.0.0.1", port: 0 }, secret: SECRET });
  client = new NodeDaemonClient({ address: unixDaemon.address, secret: SECRET });
  tlsClient = new NodeDaemonClient({ address: tlsDaemon.address, secret: SECRET });
});

after(async () => {
  if (skipUnlessRoot) return;
  client.close();
  tlsClient.close();
  await unixDaemon.close();
  await tlsDaemon.close();
  await (await runtime()).close();
  await assertNoLeftovers(createdIds);
});

test("create, status, envd through the node's proxy, usage, kill: over the unix socket and over TLS-PSK", {
  skip: skipUnlessRoot,
}, async () => {
  for (const c of [client, tlsClient]) {
    const report = await c.report();
    assert.equal(report.nodeId, "n-test");
    assert.ok(report.templates.some((t) => t.name === "base" && t.image));
    const sb = await c.create({ template: "base", envVars: { GREETING: "hi" } });
    createdIds.add(sb.id);
    assert.match(sb.accessToken, /^[0-9a-f]{64}$/);
    assert.deepEqual(await c.status([sb.id]), [{ id: sb.id, state: "running" }]);
    // A command over a tunnel through the node to the guest agent.
    const envd = c.envd(sb.id, async () => sb.accessToken, "user");
    let out = "";
    for await (const r of envd.process.start({
      process: { cmd: "/bin/sh", args: ["-c", "echo $GREETING $(id -un)"], envs: {} },
    })) {
      const ev = r.event?.event;
      if (ev?.case === "data" && ev.value.output.case === "stdout")
        out += Buffer.from(ev.value.output.value).toString();
    }
    assert.equal(out.trim(), "hi user");
    const health = await envd.fetch("/health");
    assert.ok(health.status < 300, `health ${health.status}`);
    const usage = await c.usage([sb.id]);
    assert.ok((usage.get(sb.id)?.cpuNanos ?? 0) > 0);
    assert.equal(await c.accessToken(sb.id), sb.accessToken);
    const last = await c.kill(sb.id, "test");
    assert.ok(last && last.cpuNanos > 0, "kill returns the last sample");
    const [gone] = await c.status([sb.id]);
    assert.equal(gone?.state, "gone");
  }
});

test("a tunnel its client never closes ends when the sandbox is killed (the node ends it, not the client)", {
  skip: skipUnlessRoot,
}, async () => {
  const sb = await client.create({ template: "base" });
  createdIds.add(sb.id);
  // Raw tunnels, outside any agent the client would destroy at a kill.
  const tunnels = [await client.openTunnel(sb.id, 49983), await client.openTunnel(sb.id, 49983)];
  const closed = tunnels.map((t) => new Promise<void>((resolve) => t.once("close", () => resolve())));
  for (const t of tunnels) t.on("error", () => {});
  // One is mid-request: the agent has answered nothing yet.
  tunnels[0]!.write("GET /health HTTP/1.1\r\nhost: sandbox\r\n");
  const bare = new NodeDaemonClient({ address: unixDaemon.address, secret: SECRET });
  try {
    await bare.kill(sb.id, "test");
  } finally {
    bare.close();
  }
  await Promise.all(closed);
  for (const t of tunnels) assert.equal(t.destroyed, true);
});

test("node errors keep their code across the wire", { skip: skipUnlessRoot }, async () => {
  await assert.rejects(
    client.create({ template: "no-such-template" }),
    (e: unknown) => e instanceof FirebreakError && e.code === "TEMPLATE_NOT_FOUND",
  );
  await assert.rejects(
    client.create({ template: "base", shape: { vcpus: 99 } }),
    (e: unknown) => e instanceof FirebreakError && e.code === "SHAPE_INVALID",
  );
  await assert.rejects(
    client.pause("nosuchsandbox"),
    (e: unknown) => e instanceof FirebreakError && e.code === "SANDBOX_NOT_FOUND",
  );
});

test("named snapshots over the wire: SnapshotSandbox, Create from_snapshot, DeleteSnapshot", {
  skip: skipUnlessRoot,
}, async () => {
  const sb = await client.create({ template: "base", envVars: { KEPT: "yes" } });
  createdIds.add(sb.id);
  const { snapshotId } = await client.snapshot(sb.id);
  assert.match(snapshotId, /^l[a-z0-9]+$/);
  const again = await client.create({ template: "base", fromSnapshot: snapshotId });
  createdIds.add(again.id);
  assert.equal(again.path, "snapshot");
  const envd = client.envd(again.id, async () => again.accessToken, "user");
  let out = "";
  for await (const r of envd.process.start({
    process: { cmd: "/bin/sh", args: ["-c", "echo $KEPT"], envs: {} },
  })) {
    const ev = r.event?.event;
    if (ev?.case === "data" && ev.value.output.case === "stdout")
      out += Buffer.from(ev.value.output.value).toString();
  }
  assert.equal(out.trim(), "yes", "the snapshot's env came along");
  await client.deleteSnapshot(snapshotId);
  await assert.rejects(
    client.deleteSnapshot(snapshotId),
    (e: unknown) => e instanceof FirebreakError && e.code === "SNAPSHOT_NOT_FOUND",
  );
  await assert.rejects(
    client.create({ template: "base", fromSnapshot: snapshotId }),
    (e: unknown) => e instanceof FirebreakError && e.code === "SNAPSHOT_NOT_FOUND",
  );
  await client.kill(again.id, "test");
  await client.kill(sb.id, "test");
});

test("closing the daemon ends its tunnels, also one to a sandbox that went away mid-tunnel", {
  skip: skipUnlessRoot,
}, async () => {
  const sock = `${config.runDir}/test-node-${process.pid}-tunnels.sock`;
  const daemon = await startDaemon({ service, listen: { unix: sock }, secret: SECRET });
  let closed = false;
  try {
    const sb = await client.create({ template: "base" });
    createdIds.add(sb.id);
    // A tunnel to the guest agent's port, as the control plane opens one.
    const tunnelSocket = await new Promise<import("node:net").Socket>((resolve, reject) => {
      http
        .request({
          socketPath: sock,
          path: `/sandboxes/${sb.id}/ports/49983`,
          headers: { authorization: `Bearer ${SECRET}`, connection: "Upgrade", upgrade: "firebreak-tunnel" },
        })
        .on("upgrade", (_res, s) => resolve(s))
        .on("response", (res) => reject(new Error(`no upgrade: ${res.statusCode}`)))
        .on("error", reject)
        .end();
    });
    tunnelSocket.on("error", () => {});
    const gone = new Promise<void>((r) => tunnelSocket.once("close", () => r()));
    // The sandbox goes away under the tunnel; then the client half-closes it:
    // the node's FIN to the vanished guest is never answered.
    await client.kill(sb.id, "test");
    tunnelSocket.end();
    await daemon.close();
    closed = true;
    await gone;
  } finally {
    if (!closed) await daemon.close();
  }
});

test("a wrong credential gets nothing: 401 on the unix socket, no TLS session on TCP", {
  skip: skipUnlessRoot,
}, async () => {
  const wrong = new NodeDaemonClient({ address: unixDaemon.address, secret: "cd".repeat(32) });
  await assert.rejects(wrong.report(), /401|credential|Unauthenticated|unauthenticated/i);
  wrong.close();
  const status = await new Promise<number>((resolve, reject) => {
    http
      .get({ socketPath: unixDaemon.address.slice(5), path: "/sandboxes/x/ports/49983/health" }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
      .on("error", reject);
  });
  assert.equal(status, 401);
  const wrongTls = new NodeDaemonClient({ address: tlsDaemon.address, secret: "cd".repeat(32) });
  await assert.rejects(wrongTls.report());
  wrongTls.close();
  // A plain (non-PSK) client cannot even talk to the TLS listener.
  const plain = createClient(
    nodePb.Node,
    createConnectTransport({ baseUrl: tlsDaemon.address, httpVersion: "1.1" }),
  );
  await assert.rejects(plain.report({}));
});
