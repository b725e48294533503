// The real E2B SDK (e2b@2.51.0), unmodified, against the control plane's real
// listener in-process over a fake node (no VMs, no root): every E2B route this
// package serves beyond the basics (fork, network, snapshots, template
// aliases, list filters, metrics, auto-pause, 501s, E2B's error shapes, signed
// file URLs, E2B port semantics, in-flight requests closed on kill).
import assert from "node:assert/strict";

import { after, before, describe, test } from "node:test";
import { endOfStream, startEvent } from "../src/testing/fake-guest.ts";
import { DOMAIN, type Harness, listenerHarness } from "../src/testing/listener-harness.ts";

type E2b = Awaited<ReturnType<typeof loadE2b>>;
const loadE2b = () => import("e2b");

describe("E2B SDK against the in-process control plane", () => {
  let h: Harness;
  let e2b: E2b;
  let key: string;
  let tenantId: string;

  before(async () => {
    h = await listenerHarness();
    const t = await h.tenant();
    key = t.key.replace(/^fb_/, "e2b_");
    tenantId = t.id;
    process.env["E2B_API_KEY"] = key;
    process.env["E2B_API_URL"] = h.url;
    process.env["E2B_SANDBOX_URL"] = h.url;
    e2b = await loadE2b();
  });
  after(() => h.close());

  const native = (id: string) => h.sandboxes.get(tenantId, id);

  test("E2B's defaults: the internet and public ports; allow_internet_access and allowOut/denyOut map onto the egress policy", async () => {
    const { Sandbox } = e2b;
    const open = await Sandbox.create("base");
    assert.equal((await native(open.sandboxId)).networkPolicy?.internet, true);
    assert.equal((await open.getInfo()).allowInternetAccess, true);

    const closed = await Sandbox.create("base", { allowInternetAccess: false });
    assert.equal((await native(closed.sandboxId)).networkPolicy?.internet, false);

    const listed = await Sandbox.create("base", {
      network: { denyOut: ({ allTraffic }) => [allTraffic], allowOut: ["1.1.1.1", "pypi.org"] },
    });
    const p = (await native(listed.sandboxId)).networkPolicy!;
    assert.equal(p.internet, false);
    assert.deepEqual(
      p.allow.map((r) => r.cidr),
      ["1.1.1.1/32"],
    );
    assert.deepEqual(p.allowDomains, ["pypi.org"]);

    // The walls hold: a tenant cannot allow a private range through E2B's lists.
    await assert.rejects(
      Sandbox.create("base", { network: { denyOut: ["0.0.0.0/0"], allowOut: ["10.0.0.0/8"] } }),
      /overlaps 10\.0\.0\.0\/8/,
    );
    // Denying one address with the rest open has no Firebreak policy: 501, named.
    await assert.rejects(
      Sandbox.create("base", { network: { denyOut: ["8.8.8.8"] } }),
      /501.*denying single addresses/,
    );

    // updateNetwork replaces the lists; omitted fields clear them (back to E2B's default).
    await open.updateNetwork({ denyOut: ["0.0.0.0/0"] });
    assert.equal((await native(open.sandboxId)).networkPolicy?.internet, false);
    await open.updateNetwork({});
    assert.equal((await native(open.sandboxId)).networkPolicy?.internet, true);
    for (const s of [open, closed, listed]) await s.kill();
  });

  test("fork onto the native fork: children of the parent, independent ids; a killed sandbox is not found", async () => {
    const { Sandbox, SandboxNotFoundError } = e2b;
    const parent = await Sandbox.create("base");
    const forks = await parent.fork({ count: 2, timeoutMs: 60_000 });
    assert.equal(forks.length, 2);
    const ids = forks.map((f) => (f as InstanceType<typeof Sandbox>).sandboxId);
    assert.equal(new Set(ids).size, 2);
    for (const id of ids) {
      const child = await native(id);
      assert.equal(child.parentId, parent.sandboxId);
      assert.equal(child.state, "running");
      assert.ok(Date.parse(child.timeoutAt!) <= Date.now() + 61_000);
    }
    const [byStatic] = await Sandbox.fork(parent.sandboxId);
    assert.ok(byStatic instanceof Sandbox);
    await parent.kill();
    await assert.rejects(parent.fork(), (e: unknown) => e instanceof SandboxNotFoundError);
  });

  test("snapshots: saved once on the node, sandboxes start from the id or the name, listed per tenant, deleted once", async () => {
    const { Sandbox } = e2b;
    const source = await Sandbox.create("base");
    const snap = await source.createSnapshot({ name: "my-snap" });
    assert.match(snap.snapshotId, /^snap-[a-z0-9]{16}$/);
    assert.ok(snap.names.some((n) => n.includes("my-snap")));
    assert.equal(h.node.snapshots.size, 1);

    const a = await Sandbox.create(snap.snapshotId);
    const b = await Sandbox.create("my-snap");
    for (const s of [a, b]) {
      const rec = await native(s.sandboxId);
      assert.equal(rec.template, "base");
      assert.equal(h.node.startedFrom.get(rec.nodeSandboxId!), [...h.node.snapshots.keys()][0]);
    }
    const all = await Sandbox.listSnapshots().nextItems();
    assert.deepEqual(
      all.map((s) => s.snapshotId),
      [snap.snapshotId],
    );
    assert.equal((await source.listSnapshots().nextItems()).length, 1);
    assert.equal((await Sandbox.listSnapshots({ name: "my-snap" }).nextItems()).length, 1);
    assert.equal((await Sandbox.listSnapshots({ name: "other" }).nextItems()).length, 0);

    // Another tenant sees nothing of it.
    const other = (await h.tenant()).key.replace(/^fb_/, "e2b_");
    assert.equal((await Sandbox.listSnapshots({ apiKey: other }).nextItems()).length, 0);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, { apiKey: other }), false);
    await assert.rejects(Sandbox.create(snap.snapshotId, { apiKey: other }), /404|not found/i);

    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false);
    assert.equal(h.node.snapshots.size, 0);
    for (const s of [source, a, b]) await s.kill();
  });

  test("Template.exists answers for built templates and snapshots", async () => {
    const { Template } = e2b;
    assert.equal(await Template.exists("base"), true);
    assert.equal(await Template.exists("no-such-template"), false);
  });

  test("list: state, template, startedAfter and order", async () => {
    const { Sandbox } = e2b;
    const t = await h.tenant();
    const apiKey = t.key.replace(/^fb_/, "e2b_");
    h.node.templates.add("other");
    const first = await Sandbox.create("base", { apiKey });
    await new Promise((r) => setTimeout(r, 20));
    const mid = new Date();
    await new Promise((r) => setTimeout(r, 20));
    const second = await Sandbox.create("other", { apiKey });
    const third = await Sandbox.create("base", { apiKey });
    const ids = async (opts: Parameters<typeof Sandbox.list>[0]) =>
      (await Sandbox.list({ apiKey, ...opts }).nextItems()).map((s) => s.sandboxId);
    assert.deepEqual(await ids({}), [third.sandboxId, second.sandboxId, first.sandboxId]);
    assert.deepEqual(await ids({ order: "asc" }), [first.sandboxId, second.sandboxId, third.sandboxId]);
    assert.deepEqual(await ids({ query: { template: "base" } }), [third.sandboxId, first.sandboxId]);
    assert.deepEqual(await ids({ query: { startedAfter: mid } }), [third.sandboxId, second.sandboxId]);
    // Pages follow the order.
    const pager = Sandbox.list({ apiKey, order: "asc", limit: 2 });
    assert.deepEqual(
      (await pager.nextItems()).map((s) => s.sandboxId),
      [first.sandboxId, second.sandboxId],
    );
    assert.deepEqual(
      (await pager.nextItems()).map((s) => s.sandboxId),
      [third.sandboxId],
    );
    assert.equal(pager.hasNext, false);
    for (const s of [first, second, third]) await s.kill();
  });

  test("metrics: points from the usage samples, within the range asked, also on the native route", async () => {
    const { Sandbox } = e2b;
    const sb = await Sandbox.create("base");
    const start = new Date();
    await new Promise((r) => setTimeout(r, 1100));
    await h.sandboxes.sampleAll();
    const metrics = await sb.getMetrics();
    assert.ok(metrics.length >= 1, JSON.stringify(metrics));
    const m = metrics.at(-1)!;
    assert.equal(m.cpuCount, 1);
    assert.equal(m.memTotal, 256 * 2 ** 20);
    assert.equal(m.memUsed, 100 * 2 ** 20);
    // The fake node's sandbox uses 10 % of a CPU.
    assert.ok(m.cpuUsedPct > 5 && m.cpuUsedPct < 15, String(m.cpuUsedPct));
    assert.ok(m.timestamp.getTime() >= start.getTime() - 1000);
    assert.equal(
      (await sb.getMetrics({ start: new Date(0), end: new Date(Date.now() - 3600_000) })).length,
      0,
    );
    const nat = await h.http
      .withKey(key.replace(/^e2b_/, "fb_"))
      .get(`/v1/sandboxes/${sb.sandboxId}/metrics`);
    assert.equal(nat.status, 200);
    assert.equal(nat.json.points.at(-1).cpuUsedPct, m.cpuUsedPct);
    await sb.kill();
  });

  test("lifecycle onTimeout pause: the reaper pauses instead of killing; connect resumes", async () => {
    const { Sandbox } = e2b;
    const sb = await Sandbox.create("base", { timeoutMs: 1_000, lifecycle: { onTimeout: "pause" } });
    await new Promise((r) => setTimeout(r, 1_100));
    await h.sandboxes.reap();
    assert.equal((await sb.getInfo()).state, "paused");
    assert.equal((await native(sb.sandboxId)).state, "paused");
    await sb.connect({ timeoutMs: 60_000 });
    assert.equal((await native(sb.sandboxId)).state, "running");
    // With autoResume, a request through ingress wakes it.
    let hits = 0;
    const appPort = await h.guest.http((_req, res) => {
      hits++;
      res.writeHead(200).end("awake");
    });
    h.node.guest = { address: h.guest.address, envdPort: 1 };
    try {
      const auto = await Sandbox.create("base", {
        timeoutMs: 1_000,
        lifecycle: { onTimeout: "pause", autoResume: true },
      });
      assert.equal((await auto.getInfo()).lifecycle?.autoResume, true);
      await new Promise((r) => setTimeout(r, 1_100));
      await h.sandboxes.reap();
      assert.equal((await native(auto.sandboxId)).state, "paused");
      const r = await h.request("/", { host: auto.getHost(appPort) });
      assert.equal(r.status, 200);
      assert.equal(hits, 1);
      assert.equal((await native(auto.sandboxId)).state, "running");
      await auto.kill();
    } finally {
      h.node.guest = undefined;
    }
    // A paused sandbox without autoResume stays paused: 409.
    await sb.pause();
    const r = await h.request("/", { host: sb.getHost(appPort) });
    assert.equal(r.status, 409);
    await sb.connect();
    // Without it, the timeout kills.
    const plain = await Sandbox.create("base", { timeoutMs: 1_000 });
    await new Promise((r) => setTimeout(r, 1_100));
    await h.sandboxes.reap();
    assert.equal((await native(plain.sandboxId)).state, "killed");
    await sb.kill();
  });

  test("what Firebreak does not serve is 501 naming it; unknown E2B routes are E2B's 404 shape", async () => {
    const { Sandbox } = e2b;
    await assert.rejects(
      Sandbox.create("base", { volumeMounts: { "/data": "vol" } }),
      /501.*volume mounts is not served/,
    );
    const get = (path: string) => fetch(`${h.url}${path}`, { headers: { "x-api-key": key } });
    const vol = await get("/volumes");
    assert.equal(vol.status, 501);
    assert.deepEqual(await vol.json(), {
      code: 501,
      message: "volumes is not served by Firebreak (docs/E2B.md lists what is)",
    });
    const unknown = await get("/sandboxes/x/nothing-here");
    assert.equal(unknown.status, 404);
    const body = (await unknown.json()) as { code: number; message: string };
    assert.equal(body.code, 404);
    assert.match(body.message, /no E2B route GET \/sandboxes\/x\/nothing-here/);
    // Native routes keep their own shape.
    const nat = await fetch(`${h.url}/v1/nothing`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(nat.status, 404);
    assert.equal(((await nat.json()) as { error: { code: string } }).error.code, "NOT_FOUND");
  });

  test("signed file URLs are routed by their signature: valid ones reach the sandbox, expired and forged ones are 401", async () => {
    const { Sandbox } = e2b;
    let seen: string | undefined;
    const port = await h.guest.http((req, res) => {
      seen = req.url;
      res.writeHead(200, { "content-type": "application/octet-stream" }).end("hello world");
    });
    h.node.guest = { address: h.guest.address, envdPort: port };
    try {
      const other = await Sandbox.create("base"); // a second running sandbox: the signature picks ours
      const sb = await Sandbox.create("base");
      const url = await sb.downloadUrl("hello.txt", { useSignatureExpiration: 10_000 });
      assert.ok(!url.includes(sb.sandboxId), url);
      const ok = await fetch(url);
      assert.equal(ok.status, 200);
      assert.equal(await ok.text(), "hello world");
      assert.match(seen!, /^\/files\?/);
      // A signature stands for the agent's token on the agent's port only.
      const other49999 = await fetch(url, { headers: { "e2b-sandbox-port": "49999" } });
      assert.equal(other49999.status, 401);
      const expired = await fetch(await sb.downloadUrl("hello.txt", { useSignatureExpiration: -10_000 }));
      assert.equal(expired.status, 401);
      assert.deepEqual(await expired.json(), { code: 401, message: "signature is already expired" });
      // Forged: well formed but not the sandbox's, and malformed (still a signed URL).
      const forged = new URL(url);
      forged.searchParams.set("signature", `v1_${"A".repeat(43)}`);
      assert.equal((await fetch(forged)).status, 401);
      forged.searchParams.set("signature", "v1_+/not-base64");
      const malformed = await fetch(forged);
      assert.equal(malformed.status, 401);
      assert.deepEqual(await malformed.json(), { code: 401, message: "invalid signature" });
      // An upload URL signs the write operation; used for a read it is refused.
      const upload = await sb.uploadUrl("hello.txt", { useSignatureExpiration: 10_000 });
      assert.equal((await fetch(upload)).status, 401);
      for (const s of [sb, other]) await s.kill();
    } finally {
      h.node.guest = undefined;
    }
  });

  test("E2B ports: public unless allowPublicTraffic is false (then the traffic token), maskRequestHost, 502 once ended", async () => {
    const { Sandbox } = e2b;
    let host: string | undefined;
    const appPort = await h.guest.http((req, res) => {
      host = req.headers.host;
      res.writeHead(200).end("app");
    });
    h.node.guest = { address: h.guest.address, envdPort: 1 };
    const get = (hostName: string, headers: Record<string, string> = {}) =>
      h.request("/", { host: hostName, headers });
    try {
      const open = await Sandbox.create("base", {
        // biome-ignore lint/suspicious/noTemplateCurlyInString: E2B's literal placeholder
        network: { maskRequestHost: "custom-host.example.com:${PORT}" },
      });
      const openHost = open.getHost(appPort);
      assert.equal(openHost, `${appPort}-${open.sandboxId}.${DOMAIN}`);
      const r = await get(openHost);
      assert.equal(r.status, 200);
      assert.equal(host, `custom-host.example.com:${appPort}`);
      // It becomes a header: anything but host characters is refused at create.
      await assert.rejects(
        Sandbox.create("base", { network: { maskRequestHost: "a.example.com\r\nx-injected: 1" } }),
        (e: Error) => /maskRequestHost/.test(e.message),
      );

      const closed = await Sandbox.create("base", { network: { allowPublicTraffic: false } });
      const refused = await get(closed.getHost(appPort));
      assert.equal(refused.status, 403);
      assert.equal(refused.json.code, 403);
      const admitted = await get(closed.getHost(appPort), {
        "e2b-traffic-access-token": closed.trafficAccessToken!,
      });
      assert.equal(admitted.status, 200);

      await open.kill();
      const ended = await get(openHost);
      assert.equal(ended.status, 502);
      assert.deepEqual(ended.json, {
        code: 502,
        message: "The sandbox was not found",
        sandboxId: open.sandboxId,
      });
      await closed.kill();
    } finally {
      h.node.guest = undefined;
    }
  });

  test("killing a sandbox closes a command stream that is still open through the envd proxy", async () => {
    const { Sandbox } = e2b;
    // An agent that starts the command and then never ends the stream.
    const port = await h.guest.raw((sock) => {
      sock.write(
        "HTTP/1.1 200 OK\r\ncontent-type: application/connect+json\r\ntransfer-encoding: chunked\r\n\r\n",
      );
      const f = startEvent(42);
      sock.write(`${f.length.toString(16)}\r\n`);
      sock.write(f);
      sock.write("\r\n");
      void endOfStream; // never sent
    });
    h.node.guest = { address: h.guest.address, envdPort: port };
    try {
      const sb = await Sandbox.create("base");
      const { res } = await h.open("/process.Process/Start", {
        method: "POST",
        headers: {
          "e2b-sandbox-id": sb.sandboxId,
          "x-access-token": sb["envdAccessToken" as keyof typeof sb] as string,
          "content-type": "application/connect+json",
        },
        body: Buffer.concat([Buffer.from([0, 0, 0, 0, 2]), Buffer.from("{}")]),
      });
      assert.equal(res.statusCode, 200);
      const ended = new Promise<string>((resolve) => {
        res.on("error", () => resolve("error"));
        res.on("close", () => resolve("close"));
        res.resume();
      });
      await sb.kill();
      const how = await Promise.race([ended, new Promise((r) => setTimeout(() => r("still open"), 5_000))]);
      assert.notEqual(how, "still open");
    } finally {
      h.node.guest = undefined;
    }
  });

  test("a sandbox that crashes (its VM gone, seen by the sampler) has its open command stream closed too", async () => {
    const { Sandbox } = e2b;
    const port = await h.guest.raw((sock) => {
      sock.write(
        "HTTP/1.1 200 OK\r\ncontent-type: application/connect+json\r\ntransfer-encoding: chunked\r\n\r\n",
      );
      const f = startEvent(43);
      sock.write(`${f.length.toString(16)}\r\n`);
      sock.write(f);
      sock.write("\r\n");
    });
    h.node.guest = { address: h.guest.address, envdPort: port };
    try {
      const sb = await Sandbox.create("base");
      const { res } = await h.open("/process.Process/Start", {
        method: "POST",
        headers: {
          "e2b-sandbox-id": sb.sandboxId,
          "x-access-token": sb["envdAccessToken" as keyof typeof sb] as string,
          "content-type": "application/connect+json",
        },
        body: Buffer.concat([Buffer.from([0, 0, 0, 0, 2]), Buffer.from("{}")]),
      });
      assert.equal(res.statusCode, 200);
      const ended = new Promise<string>((resolve) => {
        res.on("error", () => resolve("error"));
        res.on("close", () => resolve("close"));
        res.resume();
      });
      const rec = await native(sb.sandboxId);
      h.node.sandboxes.get(rec.nodeSandboxId!)!.state = "gone";
      await h.sandboxes.sampleAll();
      assert.equal((await native(sb.sandboxId)).state, "crashed");
      const how = await Promise.race([ended, new Promise((r) => setTimeout(() => r("still open"), 5_000))]);
      assert.notEqual(how, "still open");
    } finally {
      h.node.guest = undefined;
    }
  });
});
