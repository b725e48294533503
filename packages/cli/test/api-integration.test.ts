// The CLI against the real control plane: `./bin/firebreak up` as a child on a
// free loopback port (test state dir, FIREBREAK_ADMIN_KEY), then sandbox
// create --json, exec (live output, exit code, stdin), list, kill, and run
// over the server. Root only; boots real microVMs.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { assertNoLeftovers, STATE_DIR, skipUnlessRoot } from "../../node-agent/test/helpers.ts";
import { CLI, runCli } from "./api-helpers.ts";

const ADMIN_KEY = `fb_${randomBytes(32).toString("hex")}`;
const RUN = randomBytes(4).toString("hex");
const ids = new Set<string>();
let server: ChildProcess | undefined;
let url = "";
let serverLog = "";

const cli = (args: string[], input?: string) =>
  runCli(args, {
    env: { FIREBREAK_URL: url, FIREBREAK_API_KEY: ADMIN_KEY, FIREBREAK_STATE_DIR: STATE_DIR },
    ...(input !== undefined ? { input } : {}),
  });

async function createSandbox(): Promise<string> {
  const r = await cli(["sandbox", "create", "--metadata", `suite=${RUN}`, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const { id } = JSON.parse(r.stdout) as { id: string };
  ids.add(id);
  return id;
}

describe("CLI against `firebreak up`", { skip: skipUnlessRoot, timeout: 240_000 }, () => {
  before(async () => {
    server = spawn(CLI, ["up", "--listen", "127.0.0.1:0", "--state-dir", STATE_DIR], {
      env: { ...process.env, FIREBREAK_ADMIN_KEY: ADMIN_KEY, FIREBREAK_LOG_LEVEL: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    server.stderr?.on("data", (d: Buffer) => {
      serverLog += d.toString();
    });
    url = await new Promise<string>((resolve, reject) => {
      let out = "";
      server!.stdout?.on("data", (d: Buffer) => {
        out += d.toString();
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      server!.once("exit", (code) => reject(new Error(`firebreak up exited ${code}:\n${out}\n${serverLog}`)));
    });
  });
  after(async () => {
    for (const id of ids) await cli(["sandbox", "kill", id]);
    if (server && server.exitCode === null) {
      const exited = new Promise((r) => server!.once("exit", r));
      server.kill("SIGTERM");
      await exited;
    }
    await assertNoLeftovers(ids);
  });

  test("up prints where it listens, and no key when FIREBREAK_ADMIN_KEY is set", () => {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
  });

  test("sandbox create --json, exec with output and exit code, list, kill", async () => {
    const id = await createSandbox();
    const ex = await cli(["sandbox", "exec", id, "--", "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert.equal(ex.code, 5, ex.stderr);
    assert.equal(ex.stdout, "out\n");
    assert.equal(ex.stderr, "err\n");
    const py = await cli(["sandbox", "exec", id, "--", "python3", "-c", "print(6*7)"]);
    assert.equal(py.stdout, "42\n", py.stderr);
    assert.equal(py.code, 0);
    const cat = await cli(["sandbox", "exec", id, "--", "cat"], "piped in\n");
    assert.equal(cat.stdout, "piped in\n", cat.stderr);

    const list = await cli(["sandbox", "list", "--metadata", `suite=${RUN}`, "--json"]);
    assert.equal(list.code, 0, list.stderr);
    const listed = JSON.parse(list.stdout) as { id: string; state: string }[];
    assert.deepEqual(
      listed.map((s) => [s.id, s.state]),
      [[id, "running"]],
    );
    const table = await cli(["sandbox", "list", "--metadata", `suite=${RUN}`]);
    assert.match(table.stdout, new RegExp(`^${id}\\s+running\\s+base`, "m"));

    const kill = await cli(["sandbox", "kill", id]);
    assert.equal(kill.code, 0, kill.stderr);
    assert.equal(kill.stdout, `killed sandbox ${id}\n`);
    const got = JSON.parse((await cli(["sandbox", "get", id, "--json"])).stdout) as { state: string };
    assert.notEqual(got.state, "running");
    const gone = await cli(["sandbox", "exec", id, "--", "true"]);
    assert.notEqual(gone.code, 0);
    assert.match(gone.stderr, /^error \[(CONFLICT|NOT_FOUND)\]/m);
  });

  test("run goes through the server when FIREBREAK_URL and FIREBREAK_API_KEY are set, and leaves nothing", async () => {
    const r = await cli(["run", "--timing", "--", "sh", "-c", "echo via-server; exit 3"]);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, "via-server\n");
    const m = /^sandbox (\w+): path=/m.exec(r.stderr);
    assert.ok(m, r.stderr);
    ids.add(m[1]!);
    const info = JSON.parse((await cli(["sandbox", "get", m[1]!, "--json"])).stdout) as { state: string };
    assert.equal(info.state, "killed");
  });

  test("keys and usage over the server", async () => {
    const k = JSON.parse((await cli(["keys", "create", `cli-${RUN}`, "--json"])).stdout) as { id: string };
    assert.match((await cli(["keys", "list"])).stdout, new RegExp(k.id));
    assert.equal((await cli(["keys", "revoke", k.id])).code, 0);
    const u = await cli(["usage", "--group-by", "metadata.suite", "--json"]);
    assert.equal(u.code, 0, u.stderr);
    assert.ok((JSON.parse(u.stdout) as { key: string }[]).some((g) => g.key === RUN));
  });
});
