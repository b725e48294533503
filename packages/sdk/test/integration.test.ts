// The SDK against the real control plane (startServer in this process, the
// local node, real microVMs in the test state dir): build (a cache hit),
// create, stream a command's output, files, list, kill, usage. Root only.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import { assertNoLeftovers, STATE_DIR, skipUnlessRoot, waitFor } from "../../node-agent/test/helpers.ts";
import {
  AuthenticationError,
  type ConnectionOptions,
  Firebreak,
  isFirebreakApiError,
  NotFoundError,
  Sandbox,
} from "../src/index.ts";

const ADMIN_KEY = `fb_${randomBytes(32).toString("hex")}`;
const RUN = randomBytes(4).toString("hex");
const ids = new Set<string>();
let server: { url: string; close(): Promise<void> } | undefined;
let conn: ConnectionOptions;

async function create(opts: Parameters<typeof Sandbox.create>[0] = {}): Promise<Sandbox> {
  const sb = await Sandbox.create({ ...conn, ...opts, metadata: { suite: RUN, ...opts.metadata } });
  ids.add(sb.id);
  return sb;
}

describe("SDK against the real server", { skip: skipUnlessRoot, timeout: 240_000 }, () => {
  before(async () => {
    // Same workaround as `firebreak up` (see packages/cli/src/commands/up.ts):
    // stale keep-alive sockets to reused sandbox addresses reset first commands.
    http.globalAgent = new http.Agent({ keepAlive: false });
    const { startServer } = await import("@firebreak/control-plane");
    server = await startServer({
      listen: "127.0.0.1:0",
      stateDir: STATE_DIR,
      adminKey: ADMIN_KEY,
      logLevel: process.env["FIREBREAK_TEST_LOG"] ? "info" : "warn",
    });
    conn = { baseUrl: server.url, apiKey: ADMIN_KEY };
  });
  after(async () => {
    for (const id of ids) await Sandbox.kill(id, conn).catch(() => {});
    await server?.close();
    await assertNoLeftovers(ids);
  });

  test("health, and base builds over the API (a cache hit) with progress", async () => {
    const fb = new Firebreak(conn);
    assert.equal((await fb.health()).ok, true);
    const steps: string[] = [];
    const t = await fb.templates.build("base", { onProgress: (p) => steps.push(p.step) });
    assert.equal(t.name, "base");
    assert.ok(steps.length > 0, "progress lines arrive before the result");
    assert.ok((await fb.templates.list()).some((x) => x.name === "base" && x.key === t.key));
  });

  test("create, stream a command's output live, exit codes, stdin, env", async () => {
    const sb = await create({ envVars: { FROM_CREATE: "yes" } });
    assert.equal(sb.info.state, "running");
    assert.ok(sb.info.startPath);

    // Live: "first" must reach onStdout while the command still waits for a file we write after seeing it.
    const seen: string[] = [];
    let sawFirst: () => void = () => {};
    const first = new Promise<void>((r) => {
      sawFirst = r;
    });
    const h = await sb.commands.run(
      "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second; echo to-stderr >&2; exit 4",
      {
        background: true,
        onStdout: (s) => {
          seen.push(s);
          if (seen.join("").includes("first")) sawFirst();
        },
      },
    );
    assert.ok(h.pid > 0);
    await first;
    assert.equal(seen.join(""), "first\n", "the rest waits for /tmp/go");
    await sb.files.write("/tmp/go", "");
    const r = await h.wait();
    assert.equal(r.exitCode, 4);
    assert.equal(r.stdout, "first\nsecond\n");
    assert.equal(r.stderr, "to-stderr\n");

    const cat = await sb.commands.run(["cat"], { stdin: "héllo via stdin" });
    assert.deepEqual(cat, { exitCode: 0, stdout: "héllo via stdin", stderr: "" });
    const env = await sb.commands.run('echo "$FROM_CREATE $FROM_CMD $(id -un) $(pwd)"', {
      envVars: { FROM_CMD: "too" },
      user: "root",
      cwd: "/tmp",
    });
    assert.equal(env.stdout, "yes too root /tmp\n");
  });

  test("a background command: listed while it runs, kill() ends it", async () => {
    const sb = await create();
    const h = await sb.commands.run(["sleep", "600"], { background: true });
    assert.ok((await sb.commands.list()).some((p) => p.pid === h.pid));
    assert.equal(await h.kill(), true);
    const r = await h.wait();
    assert.equal(r.exitCode, 137, JSON.stringify(r));
    assert.equal(await sb.kill(), true);
  });

  test("files: write and read (text and binary), list, stat, move, remove, makeDir", async () => {
    const sb = await create();
    await sb.files.write("/home/user/hello.txt", "hello from the SDK\n");
    assert.equal(await sb.files.read("/home/user/hello.txt", { format: "text" }), "hello from the SDK\n");
    assert.equal((await sb.commands.run("cat /home/user/hello.txt")).stdout, "hello from the SDK\n");
    const bin = new Uint8Array(300_000).map((_, i) => (i * 31 + 7) % 256);
    assert.equal((await sb.files.write("/tmp/blob.bin", bin)).bytes, bin.length);
    assert.deepEqual(await sb.files.read("/tmp/blob.bin"), bin);
    assert.equal((await sb.files.makeDir("/tmp/d/e")).type, "dir");
    await sb.files.write("/tmp/d/e/f.txt", "f");
    const entries = await sb.files.list("/tmp/d", { depth: 2 });
    assert.deepEqual(entries.map((e) => e.path).sort(), ["/tmp/d/e", "/tmp/d/e/f.txt"]);
    assert.equal((await sb.files.stat("/tmp/d/e/f.txt")).size, 1);
    assert.equal((await sb.files.move("/tmp/d/e/f.txt", "/tmp/d/g.txt")).path, "/tmp/d/g.txt");
    assert.equal(await sb.files.exists("/tmp/d/e/f.txt"), false);
    await sb.files.remove("/tmp/d");
    assert.equal(await sb.files.exists("/tmp/d"), false);
    await assert.rejects(sb.files.read("/tmp/nope"), NotFoundError);
  });

  test("list finds our sandboxes by metadata; kill; unknown ids and bad keys are typed errors", async () => {
    const sb = await create({ metadata: { role: "listed" } });
    const found = await Sandbox.list({ ...conn, metadata: { suite: RUN, role: "listed" } }).all();
    assert.deepEqual(
      found.map((s) => s.id),
      [sb.id],
    );
    const running = await Sandbox.list({
      ...conn,
      state: "running",
      metadata: { suite: RUN },
      limit: 1,
    }).all();
    assert.ok(
      running.some((s) => s.id === sb.id),
      "paging with limit 1 still reaches every sandbox",
    );
    assert.equal(await sb.kill(), true);
    assert.notEqual((await sb.getInfo()).state, "running");
    assert.equal(await Sandbox.kill("nosuchsandbox0000000", conn), false);
    await assert.rejects(Sandbox.connect("nosuchsandbox0000000", conn), NotFoundError);
    await assert.rejects(Sandbox.create({ ...conn, apiKey: `fb_${"0".repeat(64)}` }), AuthenticationError);
    await assert.rejects(Sandbox.create({ ...conn, template: "no-such-template" }), (e: unknown) =>
      isFirebreakApiError(e, "TEMPLATE_NOT_FOUND"),
    );
    const final = await waitFor("a final usage record", async () => {
      const recs = await new Firebreak(conn).usage.records({ sandboxId: sb.id });
      return recs.find((r) => r.final);
    });
    assert.equal(final.sandboxId, sb.id);
    assert.equal(final.metadata["role"], "listed");
  });
});
