// The API commands of the CLI (sandbox, keys, usage, template, run over the
// server) against the SDK's contract fixture: output, --json, exit codes and
// errors that say how to fix them. No VMs, no root.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { ADMIN_KEY, type Fixture, startFixture } from "../../sdk/test/fixture-server.ts";
import { runCli } from "./api-helpers.ts";

let fx: Fixture;
const env = () => ({ FIREBREAK_URL: fx.url, FIREBREAK_API_KEY: ADMIN_KEY });
const cli = (args: string[], input?: string) =>
  runCli(args, { env: env(), ...(input !== undefined ? { input } : {}) });
const bodyOf = (re: RegExp) => {
  const r = fx.requests.filter((q) => re.test(`${q.method} ${q.url}`)).at(-1);
  assert.ok(r, `no request matching ${re}`);
  return JSON.parse(r.body) as Record<string, unknown>;
};

describe("CLI over the API (fixture server)", { timeout: 300_000 }, () => {
  before(async () => {
    fx = await startFixture();
  });
  after(() => fx.close());

  test("sandbox create --json prints the sandbox; flags reach the request", async () => {
    const r = await cli([
      "sandbox",
      "create",
      "--cpus",
      "2",
      "--memory",
      "512",
      "--timeout-ms",
      "60000",
      "-e",
      "A=1",
      "--metadata",
      "team=x",
      "--metadata",
      "run=7",
      "--json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const sb = JSON.parse(r.stdout);
    assert.match(sb.id, /^sb/);
    assert.equal(sb.state, "running");
    assert.deepEqual(bodyOf(/^POST \/v1\/sandboxes$/), {
      vcpus: 2,
      memoryMib: 512,
      timeoutMs: 60000,
      envVars: { A: "1" },
      metadata: { team: "x", run: "7" },
    });
    const plain = await cli(["sandbox", "create"]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(
      plain.stdout,
      /^sandbox sb[0-9a-f]+ running \(template base, 1 vCPU, 256 MiB; snapshot start in 512 ms/,
    );
  });

  test("sandbox list / get, with filters and --json", async () => {
    const a = JSON.parse((await cli(["sandbox", "create", "--metadata", "pick=me", "--json"])).stdout);
    const table = await cli(["sandbox", "list", "--metadata", "pick=me"]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^ID\s+STATE\s+TEMPLATE/);
    assert.match(table.stdout, new RegExp(`${a.id}\\s+running\\s+base\\s+1\\s+256 MiB`));
    assert.equal(table.stdout.trim().split("\n").length, 2);
    const json = JSON.parse((await cli(["sandbox", "list", "--state", "running", "--json"])).stdout);
    assert.ok(json.length >= 2);
    assert.ok(json.some((s: { id: string }) => s.id === a.id));
    assert.match(fx.requests.at(-1)!.url, /state=running/);
    const none = await cli(["sandbox", "list", "--metadata", "pick=nobody"]);
    assert.equal(none.stdout, "no sandboxes match\n");
    const got = await cli(["sandbox", "get", a.id]);
    assert.match(got.stdout, new RegExp(`^id\\s+${a.id}$`, "m"));
    assert.match(got.stdout, /^metadata\s+pick=me$/m);
    assert.equal(JSON.parse((await cli(["sandbox", "get", a.id, "--json"])).stdout).id, a.id);
  });

  test("sandbox exec streams output and exits with the command's code; stdin is piped", async () => {
    const { id } = JSON.parse((await cli(["sandbox", "create", "--json"])).stdout);
    const ok = await cli(["sandbox", "exec", id, "--", "echo", "hi", "there"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, "hi there\n");
    assert.deepEqual(bodyOf(/^POST \/v1\/sandboxes\/\w+\/commands$/).argv, ["echo", "hi", "there"]);
    const bad = await cli(["sandbox", "exec", id, "--", "fail", "7"]);
    assert.equal(bad.code, 7);
    assert.equal(bad.stderr, "failing\n");
    const cat = await cli(["sandbox", "exec", id, "-u", "root", "-w", "/tmp", "--", "cat"], "from stdin");
    assert.equal(cat.stdout, "from stdin");
    const body = bodyOf(/^POST \/v1\/sandboxes\/\w+\/commands$/);
    assert.equal(body.user, "root");
    assert.equal(body.cwd, "/tmp");
    const gone = await cli(["sandbox", "exec", "sbnope", "--", "true"]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /^error \[NOT_FOUND\]: no sandbox sbnope.*\(request req_\d+\)$/m);
  });

  test("sandbox kill, pause, resume, fork, timeout, events", async () => {
    const { id } = JSON.parse((await cli(["sandbox", "create", "--json"])).stdout);
    assert.equal(JSON.parse((await cli(["sandbox", "pause", id, "--json"])).stdout).state, "paused");
    const again = await cli(["sandbox", "pause", id]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /error \[CONFLICT\]/);
    assert.match((await cli(["sandbox", "resume", id])).stdout, new RegExp(`^sandbox ${id} running`));
    const kids = JSON.parse((await cli(["sandbox", "fork", id, "--count", "2", "--json"])).stdout);
    assert.equal(kids.length, 2);
    assert.deepEqual(bodyOf(/\/fork$/), { count: 2 });
    assert.equal((await cli(["sandbox", "timeout", id, "5000"])).code, 0);
    assert.deepEqual(bodyOf(/\/timeout$/), { timeoutMs: 5000 });
    assert.match((await cli(["sandbox", "events", id])).stdout, /created/);
    const k = await cli(["sandbox", "kill", id]);
    assert.equal(k.code, 0, k.stderr);
    assert.equal(k.stdout, `killed sandbox ${id}\n`);
    const k2 = await cli(["sandbox", "kill", id, "--json"]);
    assert.equal(k2.code, 1);
    assert.deepEqual(JSON.parse(k2.stdout), { id, killed: false });
    for (const kid of kids) await cli(["sandbox", "kill", kid.id]);
  });

  test("run uses the server when FIREBREAK_URL and FIREBREAK_API_KEY are set, and kills the sandbox", async () => {
    const before = fx.sandboxes.size;
    const r = await cli(["run", "--cpus", "2", "-e", "K=v", "--", "echo", "via", "server"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "via server\n");
    assert.equal(fx.sandboxes.size, before + 1);
    const created = [...fx.sandboxes.values()].at(-1)!;
    assert.equal(created.state, "killed", "run kills its sandbox");
    // --memory not given: the server applies the template's default shape.
    assert.deepEqual(bodyOf(/^POST \/v1\/sandboxes$/), {
      template: "base",
      vcpus: 2,
      envVars: { K: "v" },
    });
    const failing = await cli(["run", "--", "fail", "3"]);
    assert.equal(failing.code, 3);
    assert.equal([...fx.sandboxes.values()].at(-1)!.state, "killed");
    const timing = await cli(["run", "--timing", "--", "echo", "x"]);
    assert.match(timing.stderr, /path=snapshot total=512ms restore=400ms ready=112ms/);
  });

  test("template build shows progress and the result; list; delete; errors from the stream", async () => {
    const b = await cli(["template", "build", "base"]);
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stderr, /\[1\/3\] step 1\n\[2\/3\] step 2\n\[3\/3\] step 3\n/);
    assert.match(b.stdout, /^built template base \(image kkkkkkkkkkkk, 1 packages locked\)/);
    const v = await cli(["template", "build", "base", "--verbose", "--json"]);
    assert.match(v.stderr, /^ {4}working$/m);
    assert.equal(JSON.parse(v.stdout).name, "base");
    const broken = await cli(["template", "build", "broken"]);
    assert.equal(broken.code, 1);
    assert.match(broken.stderr, /error \[TEMPLATE_BUILD_FAILED\]: step 1 exited 3/);
    assert.match(
      (await cli(["template", "list"])).stdout,
      /^NAME\s+IMAGE\s+BUILT\s+SIZE\s+PACKAGES\nbase\s+kkkk/,
    );
    assert.equal(JSON.parse((await cli(["template", "list", "--json"])).stdout)[0].name, "base");
    assert.equal((await cli(["template", "delete", "base"])).stdout, "deleted template base\n");
    const missing = await cli(["template", "delete", "nope"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no built template named nope/);
    const noFile = await cli(["template", "build", "./does-not-exist.json"]);
    assert.equal(noFile.code, 1);
    assert.match(noFile.stderr, /TEMPLATE_NOT_FOUND.*does-not-exist\.json/);
  });

  test("template build of a spec with files over a server: refused before anything is sent (exit 2)", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "fb-cli-spec-"));
    try {
      const spec = path.join(dir, "t.json");
      await writeFile(spec, JSON.stringify({ name: "withfiles", files: [{ src: "a.txt", dest: "/a.txt" }] }));
      const before = fx.requests.length;
      const r = await cli(["template", "build", spec]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /TEMPLATE_SPEC_INVALID.*files\[\] cannot be sent to a server/);
      assert.equal(fx.requests.length, before, "nothing was sent");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("keys create / list / revoke", async () => {
    const c = await cli(["keys", "create", "ci", "--scope", "sandboxes,templates", "--json"]);
    assert.equal(c.code, 0, c.stderr);
    const k = JSON.parse(c.stdout);
    assert.match(k.key, /^fb_[0-9a-f]{64}$/);
    assert.deepEqual(bodyOf(/^POST \/v1\/keys$/), { name: "ci", scopes: ["sandboxes", "templates"] });
    const plain = await cli(["keys", "create", "other"]);
    assert.match(
      plain.stdout,
      /^created key key_\w+ "other" \(tenant t_default, scopes sandboxes\)\nfb_[0-9a-f]{64}\n$/,
    );
    assert.match(plain.stderr, /only time the key is shown/);
    const l = await cli(["keys", "list"]);
    assert.match(l.stdout, new RegExp(`^${k.id}\\s+ci\\s+t_default\\s+sandboxes,templates`, "m"));
    assert.doesNotMatch(l.stdout, /fb_[0-9a-f]{64}/);
    assert.equal((await cli(["keys", "revoke", k.id])).stdout, `revoked key ${k.id}\n`);
    const again = await cli(["keys", "revoke", k.id]);
    assert.equal(again.code, 1);
    const revoked = await runCli(["sandbox", "list"], { env: { ...env(), FIREBREAK_API_KEY: k.key } });
    assert.equal(revoked.code, 1);
    assert.match(revoked.stderr, /error \[UNAUTHENTICATED\]/);
  });

  test("usage groups and --json", async () => {
    await cli(["sandbox", "create", "--metadata", "project=alpha"]);
    const t = await cli(["usage", "--group-by", "metadata.project"]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^METADATA\.PROJECT\s+SANDBOXES\s+LIFETIME/);
    assert.match(t.stdout, /^alpha\s+1\s+10\.0 s\s+1\.50 s\s+2\.50\s+200 MiB$/m);
    const j = JSON.parse(
      (await cli(["usage", "--group-by", "template", "--from", "2020-01-01", "--json"])).stdout,
    );
    assert.ok(j.some((g: { key: string }) => g.key === "base"));
    assert.match(fx.requests.at(-1)!.url, /groupBy=template&from=2020-01-01T00%3A00%3A00\.000Z/);
    const bad = await cli(["usage", "--group-by", "colour"]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /expected tenant, template, root or metadata\.KEY/);
    assert.equal((await cli(["usage", "--records"])).stdout, "no usage records\n");
  });

  test("configuration errors say how to fix them", async () => {
    const noUrl = await runCli(["sandbox", "list"], { env: { FIREBREAK_URL: "", FIREBREAK_API_KEY: "" } });
    assert.equal(noUrl.code, 2);
    assert.match(noUrl.stderr, /error \[CONFIG_MISSING\]: .*set FIREBREAK_URL.*firebreak up/);
    const noKey = await runCli(["keys", "list"], { env: { FIREBREAK_URL: fx.url, FIREBREAK_API_KEY: "" } });
    assert.equal(noKey.code, 2);
    assert.match(noKey.stderr, /set FIREBREAK_API_KEY/);
    const down = await runCli(["sandbox", "list"], {
      env: { FIREBREAK_URL: "http://127.0.0.1:9", FIREBREAK_API_KEY: ADMIN_KEY },
    });
    assert.equal(down.code, 1);
    assert.match(
      down.stderr,
      /error \[CONNECTION_FAILED\]: cannot reach the Firebreak server at http:\/\/127\.0\.0\.1:9.*firebreak up/,
    );
  });
});
