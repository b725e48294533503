// Sandbox, commands, files and the admin namespaces against the contract
// fixture: request shapes on the wire, streaming, handles, paging.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { ConflictError, Firebreak, isFirebreakApiError, NotFoundError, Sandbox } from "../src/index.ts";
import { ADMIN_KEY, type Fixture, OTHER_TENANT_KEY, startFixture } from "./fixture-server.ts";

let fx: Fixture;
const conn = () => ({ baseUrl: fx.url, apiKey: ADMIN_KEY });
const lastRequest = () => fx.requests[fx.requests.length - 1]!;

describe("Sandbox", { timeout: 20_000 }, () => {
  before(async () => {
    fx = await startFixture();
  });
  after(() => fx.close());

  test("create sends only the given options, with the key as a bearer token", async () => {
    const sb = await Sandbox.create({
      ...conn(),
      template: "base",
      vcpus: 2,
      memoryMib: 512,
      timeoutMs: 60_000,
      envVars: { A: "1" },
      metadata: { team: "x" },
    });
    const req = lastRequest();
    assert.equal(req.method, "POST");
    assert.equal(req.url, "/v1/sandboxes");
    assert.equal(req.headers.authorization, `Bearer ${ADMIN_KEY}`);
    assert.deepEqual(JSON.parse(req.body), {
      template: "base",
      vcpus: 2,
      memoryMib: 512,
      timeoutMs: 60_000,
      envVars: { A: "1" },
      metadata: { team: "x" },
    });
    assert.match(sb.id, /^sb/);
    assert.equal(sb.info.state, "running");
    assert.equal(sb.info.vcpus, 2);
    assert.equal(sb.envdAccessToken, `tok_${sb.id}`);
    await Sandbox.create(conn());
    assert.deepEqual(JSON.parse(lastRequest().body), {});
    assert.equal(await sb.kill(), true);
    assert.equal(await sb.kill(), false, "a second kill is an expected outcome, not an error");
  });

  test("the environment supplies URL and key; a sandbox token marks the parent", async () => {
    process.env["FIREBREAK_URL"] = fx.url;
    process.env["FIREBREAK_API_KEY"] = ADMIN_KEY;
    try {
      const parent = await Sandbox.create();
      const child = await Sandbox.create({ sandboxToken: parent.envdAccessToken! });
      assert.equal(lastRequest().headers["x-firebreak-sandbox-token"], parent.envdAccessToken);
      assert.equal(child.info.parentId, parent.id);
      assert.equal(child.info.rootId, parent.id);
    } finally {
      delete process.env["FIREBREAK_URL"];
      delete process.env["FIREBREAK_API_KEY"];
    }
  });

  test("list pages through every sandbox with the cursor; filters go on the query", async () => {
    for (let i = 0; i < 5; i++)
      await Sandbox.create({ ...conn(), metadata: { batch: "paging", i: String(i) } });
    const pages: string[][] = [];
    for await (const page of Sandbox.list({ ...conn(), metadata: { batch: "paging" }, limit: 2 })) {
      pages.push(page.map((s) => s.metadata["i"]!));
    }
    assert.deepEqual(
      pages.map((p) => p.length),
      [2, 2, 1],
    );
    assert.deepEqual(pages.flat().sort(), ["0", "1", "2", "3", "4"]);
    const urls = fx.requests.filter((r) => r.url.startsWith("/v1/sandboxes?")).map((r) => r.url);
    assert.match(urls[0]!, /metadata=batch%3Apaging/);
    assert.match(urls[0]!, /limit=2/);
    assert.doesNotMatch(urls[0]!, /cursor=/);
    assert.match(urls[1]!, /cursor=2/);

    const paginator = Sandbox.list({ ...conn(), state: "running", metadata: { batch: "paging", i: "3" } });
    assert.equal(paginator.hasNext, true);
    const only = await paginator.nextItems();
    assert.equal(paginator.hasNext, false);
    assert.deepEqual(
      only.map((s) => s.metadata["i"]),
      ["3"],
    );
    assert.match(lastRequest().url, /state=running/);
    assert.deepEqual(await paginator.nextItems(), []);
    assert.equal((await Sandbox.list({ ...conn(), metadata: { batch: "paging" } }).all()).length, 5);
  });

  test("another tenant's sandbox is NOT_FOUND, and kill() is false", async () => {
    const sb = await Sandbox.create(conn());
    const other = { baseUrl: fx.url, apiKey: OTHER_TENANT_KEY };
    await assert.rejects(Sandbox.connect(sb.id, other), NotFoundError);
    assert.equal(await Sandbox.kill(sb.id, other), false);
    assert.equal((await Sandbox.connect(sb.id, conn())).id, sb.id);
  });

  test("setTimeout, pause, resume, fork, events", async () => {
    const sb = await Sandbox.create(conn());
    await sb.setTimeout(5_000);
    assert.deepEqual(JSON.parse(lastRequest().body), { timeoutMs: 5_000 });
    assert.equal((await sb.pause()).state, "paused");
    assert.equal(sb.info.state, "paused");
    await assert.rejects(sb.pause(), (e: unknown) => e instanceof ConflictError && e.code === "CONFLICT");
    assert.equal((await sb.resume()).state, "running");
    const kids = await sb.fork(3);
    assert.equal(kids.length, 3);
    assert.equal(new Set(kids.map((k) => k.id)).size, 3);
    for (const k of kids) assert.equal(k.info.parentId, sb.id);
    await assert.rejects(sb.fork(0), (e: unknown) => isFirebreakApiError(e, "VALIDATION_FAILED"));
    const events = await sb.events();
    assert.equal(events[0]?.type, "created");
    const text = async (it: AsyncIterable<Uint8Array>) => {
      let out = "";
      for await (const c of it) out += new TextDecoder().decode(c);
      return out;
    };
    assert.equal(await text(sb.logs()), "booted\nagent ready\n");
    assert.equal(lastRequest().url, `/v1/sandboxes/${sb.id}/logs?source=console&offset=0&follow=false`);
    assert.equal(await text(sb.logs({ source: "start", offset: 7, follow: true })), "up\n");
    assert.equal(lastRequest().url, `/v1/sandboxes/${sb.id}/logs?source=start&offset=7&follow=true`);
    assert.equal(await sb.isRunning(), true);
    await sb.kill();
    assert.equal((await sb.getInfo()).state, "killed");
  });
});

describe("sandbox.commands", { timeout: 20_000 }, () => {
  let sb: Sandbox;
  before(async () => {
    fx = await startFixture();
    sb = await Sandbox.create({ ...conn(), envVars: { FROM_SANDBOX: "sbv" } });
  });
  after(() => fx.close());

  test("run streams stdout and stderr live and resolves with the exit code", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const r = await sb.commands.run("echo hello world", {
      onStdout: (s) => out.push(s),
      onStderr: (s) => err.push(s),
    });
    assert.deepEqual(r, { exitCode: 0, stdout: "hello world\n", stderr: "" });
    assert.deepEqual(out, ["hello world\n"]);
    assert.deepEqual(JSON.parse(lastRequest().body), { cmd: "echo hello world" });

    const f = await sb.commands.run(["fail", "7"], { onStderr: (s) => err.push(s) });
    assert.equal(f.exitCode, 7, "a non-zero exit is a value");
    assert.equal(f.stderr, "failing\n");
    assert.deepEqual(err, ["failing\n"]);
    assert.deepEqual(JSON.parse(lastRequest().body), { argv: ["fail", "7"] });
  });

  test("output split inside multi-byte characters decodes whole; bytes are passed raw", async () => {
    const bytes: Uint8Array[] = [];
    const r = await sb.commands.run("utf8", { onStdout: (_s, b) => bytes.push(b) });
    assert.equal(r.stdout, "héllo ✓ wörld\n");
    assert.equal(bytes.length, 3);
    assert.equal(Buffer.concat(bytes).toString(), "héllo ✓ wörld\n");
  });

  test("options reach the wire: envVars, cwd, user, stdin, timeoutMs", async () => {
    const r = await sb.commands.run("cat", {
      stdin: "piped in",
      envVars: { X: "1" },
      cwd: "/tmp",
      user: "root",
      timeoutMs: 9_000,
    });
    assert.equal(r.stdout, "piped in");
    assert.deepEqual(JSON.parse(lastRequest().body), {
      cmd: "cat",
      stdin: "piped in",
      envVars: { X: "1" },
      cwd: "/tmp",
      user: "root",
      timeoutMs: 9_000,
    });
    assert.equal((await sb.commands.run("env FROM_SANDBOX")).stdout, "sbv\n");
    assert.equal((await sb.commands.run("env X", { envVars: { X: "cmd" } })).stdout, "cmd\n");
  });

  test("background: a handle with pid; list, sendStdin, wait", async () => {
    const chunks: string[] = [];
    const h = await sb.commands.run("cat", { background: true, onStdout: (s) => chunks.push(s) });
    assert.ok(h.pid >= 100);
    const listed = await sb.commands.list();
    assert.ok(listed.some((p) => p.pid === h.pid && p.cmd === "cat"));
    await h.sendStdin("abc ");
    await h.sendStdin(new TextEncoder().encode("déf"), { eof: true });
    const r = await h.wait();
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "abc déf");
    assert.equal(h.stdout, "abc déf");
    assert.deepEqual(chunks, ["abc déf"]);
    const stdinBodies = fx.requests
      .filter((q) => q.url.endsWith(`/commands/${h.pid}/stdin`))
      .map((q) => q.body);
    assert.deepEqual(JSON.parse(stdinBodies[0]!), { data: Buffer.from("abc ").toString("base64") });
  });

  test("background kill: true while running, the result says why, false afterwards", async () => {
    const h = await sb.commands.run("sleep", { background: true });
    assert.equal(await h.kill(), true);
    assert.deepEqual(JSON.parse(lastRequest().body), { signal: "SIGKILL" });
    const r = await h.wait();
    assert.equal(r.exitCode, 137);
    assert.equal(r.error, "killed");
    assert.equal(await h.kill(), false);
  });

  test("disconnect stops waiting: wait() rejects with ABORTED", async () => {
    const h = await sb.commands.run("sleep", { background: true });
    h.disconnect();
    await assert.rejects(h.wait(), (e: unknown) => isFirebreakApiError(e, "ABORTED"));
    await h.kill();
  });

  test("an empty argv is refused before sending", async () => {
    const n = fx.requests.length;
    await assert.rejects(sb.commands.run([]), (e: unknown) => isFirebreakApiError(e, "VALIDATION_FAILED"));
    assert.equal(fx.requests.length, n);
  });
});

describe("sandbox.files", { timeout: 20_000 }, () => {
  let sb: Sandbox;
  before(async () => {
    fx = await startFixture();
    sb = await Sandbox.create(conn());
  });
  after(() => fx.close());

  test("write then read as bytes, text and stream; binary survives", async () => {
    const bin = new Uint8Array(70_000).map((_, i) => (i * 7) % 256);
    assert.deepEqual(await sb.files.write("/home/user/a.bin", bin), {
      path: "/home/user/a.bin",
      bytes: 70_000,
    });
    assert.match(lastRequest().url, /\/files\?path=%2Fhome%2Fuser%2Fa\.bin$/);
    assert.equal(lastRequest().headers["content-type"], "application/octet-stream");
    assert.deepEqual(await sb.files.read("/home/user/a.bin"), bin);
    await sb.files.write("/home/user/t.txt", "héllo");
    assert.equal(await sb.files.read("/home/user/t.txt", { format: "text" }), "héllo");
    const stream = await sb.files.read("/home/user/t.txt", { format: "stream" });
    assert.equal(await new Response(stream).text(), "héllo");
    await sb.files.write("/home/user/s.txt", new Blob(["from a stream"]).stream());
    assert.equal(await sb.files.read("/home/user/s.txt", { format: "text" }), "from a stream");
  });

  test("list, stat, exists, move, remove, makeDir", async () => {
    await sb.files.write("/d/one", "1");
    await sb.files.write("/d/two", "22");
    const entries = await sb.files.list("/d", { depth: 2 });
    assert.match(lastRequest().url, /depth=2/);
    assert.deepEqual(entries.map((e) => e.name).sort(), ["one", "two"]);
    assert.equal((await sb.files.stat("/d/two")).size, 2);
    assert.equal(await sb.files.exists("/d/two"), true);
    assert.equal(await sb.files.exists("/d/none"), false);
    assert.equal((await sb.files.move("/d/two", "/d/three")).path, "/d/three");
    await sb.files.remove("/d/three");
    await assert.rejects(sb.files.stat("/d/three"), NotFoundError);
    await assert.rejects(sb.files.read("/d/three"), NotFoundError);
    assert.equal((await sb.files.makeDir("/d/sub")).type, "dir");
  });
});

describe("Firebreak admin namespaces", { timeout: 20_000 }, () => {
  let fb: Firebreak;
  before(async () => {
    fx = await startFixture();
    fb = new Firebreak(conn());
  });
  after(() => fx.close());

  test("templates: build streams progress and returns the template; list; delete", async () => {
    const progress: string[] = [];
    const t = await fb.templates.build("base", {
      onProgress: (p) => progress.push(`${p.index}/${p.total} ${p.step}${p.detail ? ` ${p.detail}` : ""}`),
    });
    assert.equal(t.name, "base");
    assert.deepEqual(JSON.parse(lastRequest().body), { name: "base" });
    assert.deepEqual(progress.slice(0, 2), ["1/3 step 1", "1/3 step 1 working"]);
    assert.equal(progress.length, 6);
    await fb.templates.build({ name: "mine", debian: { packages: ["jq"] } });
    assert.deepEqual(JSON.parse(lastRequest().body), {
      spec: { name: "mine", debian: { packages: ["jq"] } },
    });
    assert.deepEqual(
      (await fb.templates.list()).map((x) => x.name),
      ["base"],
    );
    assert.equal(await fb.templates.delete("base"), true);
    assert.equal(await fb.templates.delete("nope"), false);
  });

  test("templates: an error line in the stream becomes a typed error", async () => {
    const e = await fb.templates.build("broken").catch((e: unknown) => e);
    assert.ok(isFirebreakApiError(e, "TEMPLATE_BUILD_FAILED"), String(e));
    assert.match(e.message, /step 1 exited 3/);
  });

  test("keys: create shows the secret once; list; revoke; a revoked key is refused", async () => {
    const k = await fb.keys.create("ci", { scopes: ["sandboxes"] });
    assert.match(k.key, /^fb_[0-9a-f]{64}$/);
    assert.deepEqual(JSON.parse(lastRequest().body), { name: "ci", scopes: ["sandboxes"] });
    const listed = await fb.keys.list();
    assert.ok(listed.some((x) => x.id === k.id && !("key" in x)));
    await Sandbox.create({ baseUrl: fx.url, apiKey: k.key });
    assert.equal(await fb.keys.revoke(k.id), true);
    assert.equal(await fb.keys.revoke(k.id), false);
    await assert.rejects(Sandbox.create({ baseUrl: fx.url, apiKey: k.key }), (e: unknown) =>
      isFirebreakApiError(e, "UNAUTHENTICATED"),
    );
  });

  test("usage: query with groupBy and a time range; records", async () => {
    await Sandbox.create({ ...conn(), metadata: { project: "p1" } });
    const groups = await fb.usage.query({
      groupBy: "metadata.project",
      from: new Date(0),
      to: "2100-01-01T00:00:00Z",
    });
    assert.match(lastRequest().url, /groupBy=metadata\.project&from=1970-01-01T00%3A00%3A00\.000Z&to=2100/);
    assert.ok(groups.some((g) => g.key === "p1" && g.sandboxes >= 1));
    assert.deepEqual(await fb.usage.records({ limit: 5 }), []);
    assert.match(lastRequest().url, /\/v1\/usage\/records\?limit=5$/);
  });

  test("health", async () => {
    assert.equal((await fb.health()).ok, true);
  });
});
