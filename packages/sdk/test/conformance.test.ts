// The SDK against the control plane's real routes and schemas, in-process over
// its fake node (no VMs, no root): lifecycle, paging, filters, validation and
// tenant errors, keys, templates, usage. Commands and files need a guest agent
// and are covered by integration.test.ts.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inProcess } from "../../control-plane/src/testing/in-process.ts";
import {
  AuthenticationError,
  ConflictError,
  type ConnectionOptions,
  Firebreak,
  isFirebreakApiError,
  NotFoundError,
  PermissionError,
  Sandbox,
  ValidationError,
} from "../src/index.ts";

type World = Awaited<ReturnType<typeof inProcess>>;
let world: World;
let a: ConnectionOptions;
let b: ConnectionOptions;
let admin: ConnectionOptions;

const over = (w: World, apiKey: string): ConnectionOptions => ({
  baseUrl: "http://in-process",
  apiKey,
  fetch: (url, init) => Promise.resolve(w.app.fetch(new Request(url as string, init))),
});

describe("SDK conformance with the control plane's routes", { timeout: 60_000 }, () => {
  before(async () => {
    world = await inProcess();
    a = over(world, (await world.tenant()).key);
    b = over(world, (await world.tenant()).key);
    admin = over(world, (await world.tenant({}, ["admin"])).key);
  });
  after(() => world.close());

  test("create, get, pause, resume, fork, setTimeout, events, kill", async () => {
    const sb = await Sandbox.create({ ...a, metadata: { app: "x" }, timeoutMs: 60_000 });
    assert.equal(sb.info.state, "running");
    assert.equal(sb.info.timeoutMs, 60_000);
    assert.ok(sb.envdAccessToken);
    assert.equal((await Sandbox.connect(sb.id, a)).info.metadata["app"], "x");
    assert.equal((await sb.pause()).state, "paused");
    await assert.rejects(sb.pause(), ConflictError);
    assert.equal((await sb.resume({ timeoutMs: 30_000 })).state, "running");
    const kids = await sb.fork(2);
    assert.equal(kids.length, 2);
    for (const k of kids) assert.equal(k.info.rootId, sb.info.rootId);
    await sb.setTimeout(120_000);
    assert.ok((await sb.events()).length > 0);
    assert.equal(await sb.kill(), true);
    for (const k of kids) assert.equal(await k.kill(), true);
    assert.notEqual((await sb.getInfo()).state, "running");
  });

  test("list pages with the server's cursor and filters by state and metadata", async () => {
    const made: string[] = [];
    for (let i = 0; i < 5; i++) made.push((await Sandbox.create({ ...a, metadata: { page: "yes" } })).id);
    const pages: number[] = [];
    const seen: string[] = [];
    for await (const page of Sandbox.list({ ...a, metadata: { page: "yes" }, limit: 2 })) {
      pages.push(page.length);
      seen.push(...page.map((s) => s.id));
    }
    assert.deepEqual(pages, [2, 2, 1]);
    assert.deepEqual(seen.sort(), [...made].sort());
    await Sandbox.kill(made[0]!, a);
    const running = await Sandbox.list({ ...a, metadata: { page: "yes" }, state: "running" }).all();
    assert.equal(running.length, 4);
    const both = await Sandbox.list({ ...a, metadata: { page: "yes" }, state: ["running", "killed"] }).all();
    assert.equal(both.length, 5);
    for (const id of made) await Sandbox.kill(id, a);
  });

  test("another tenant's id: NOT_FOUND everywhere, kill() false", async () => {
    const sb = await Sandbox.create(a);
    await assert.rejects(Sandbox.connect(sb.id, b), NotFoundError);
    assert.equal(await Sandbox.kill(sb.id, b), false);
    assert.equal(await sb.isRunning(), true);
    assert.deepEqual(await Sandbox.list({ ...b, metadata: { page: "yes" } }).all(), []);
    await sb.kill();
  });

  test("validation, auth and scope errors carry the server's codes and request ids", async () => {
    await assert.rejects(Sandbox.create({ ...a, vcpus: 0 }), (e: unknown) => {
      assert.ok(e instanceof ValidationError, String(e));
      assert.equal(e.code, "VALIDATION_FAILED");
      assert.equal(e.status, 400);
      assert.ok(e.requestId);
      return true;
    });
    await assert.rejects(Sandbox.create({ ...a, template: "nope" }), (e: unknown) =>
      isFirebreakApiError(e, "TEMPLATE_NOT_FOUND"),
    );
    await assert.rejects(Sandbox.create({ ...a, apiKey: `fb_${"0".repeat(64)}` }), AuthenticationError);
    await assert.rejects(new Firebreak(a).templates.build("base"), PermissionError);
    await assert.rejects(
      Sandbox.create({ ...a, timeoutMs: 1 }),
      (e: unknown) => e instanceof ValidationError && /timeoutMs/.test(e.message),
    );
  });

  test("keys, templates, usage and health through the admin namespaces", async () => {
    const fb = new Firebreak(admin);
    const k = await fb.keys.create("sdk-conformance", { scopes: ["sandboxes"] });
    assert.match(k.key, /^fb_[0-9a-f]{64}$/);
    assert.ok((await fb.keys.list()).some((x) => x.id === k.id));
    const user = over(world, k.key);
    const sb = await Sandbox.create({ ...user, metadata: { team: "blue" } });
    assert.equal(await fb.keys.revoke(k.id), true);
    assert.equal(await fb.keys.revoke("key_nope"), false);
    await assert.rejects(Sandbox.connect(sb.id, user), AuthenticationError);

    const progress: number[] = [];
    // A spec (a name alone builds only built-in templates, and py is none).
    const t = await fb.templates.build({ name: "py" }, { onProgress: (p) => progress.push(p.index) });
    assert.equal(t.name, "py");
    assert.ok(progress.length > 0);
    assert.ok((await fb.templates.list()).some((x) => x.name === "py"));
    assert.equal(await fb.templates.delete("py"), true);
    assert.equal(await fb.templates.delete("py"), false);

    await Sandbox.kill(sb.id, admin);
    const groups = await fb.usage.query({ groupBy: "metadata.team", from: new Date(Date.now() - 3600_000) });
    assert.ok(Array.isArray(groups));
    assert.ok(Array.isArray(await fb.usage.records({ limit: 10 })));
    assert.equal((await fb.health()).ok, true);
  });
  test("network: create with a policy, get, update; services create/list/delete; traffic in usage", async () => {
    const fb = new Firebreak(admin);
    const svc = await fb.services.create({
      name: "pg.internal",
      address: "10.20.0.5",
      port: 5432,
      protocol: "tcp",
    });
    assert.equal(svc.name, "pg.internal");
    assert.deepEqual(
      (await new Firebreak(a).services.list()).map((s) => s.name),
      ["pg.internal"],
    );
    await assert.rejects(new Firebreak(a).services.create({ ...svc, name: "x.internal" }), PermissionError);

    const sb = await Sandbox.create({
      ...a,
      network: { policy: { allowDomains: ["api.good.test"], services: ["pg.internal"] }, networks: ["team"] },
    });
    const p = await sb.network.get();
    assert.deepEqual(p.allowDomains, ["api.good.test"]);
    assert.deepEqual(p.networks, ["team"]);
    assert.equal((await sb.network.update({ internet: true })).internet, true);
    assert.equal((await sb.network.get()).internet, true);
    await assert.rejects(sb.network.update({ allow: [{ cidr: "nope" }] }), ValidationError);
    await assert.rejects(
      Sandbox.create({ ...a, network: { policy: { services: ["missing.internal"] } } }),
      (e: unknown) =>
        isFirebreakApiError(e) && e.code === "VALIDATION_FAILED" && /missing\.internal/.test(e.message),
    );
    await sb.pause();
    await assert.rejects(sb.network.update({}), ConflictError);
    await sb.kill();
    const [rec] = await new Firebreak(a).usage.records({ sandboxId: sb.id });
    assert.ok(rec && rec.final && rec.traffic.internet.rx >= 0 && "ingress" in rec.traffic);
    assert.equal(await fb.services.delete("pg.internal"), true);
    assert.equal(await fb.services.delete("pg.internal"), false);
  });
});
