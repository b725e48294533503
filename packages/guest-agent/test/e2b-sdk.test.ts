/**
 * Compatibility: the unmodified E2B SDK (e2b@2.51.0) drives the agent. A tiny
 * in-test control plane answers create/connect with the agent's access token;
 * E2B_SANDBOX_URL points the SDK's envd traffic at the agent.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { ENVD_VERSION } from "@firebreak/protocol";
import { type Agent, startAgent, USER_UID } from "./harness.ts";

const SANDBOX_ID = "sbx-e2b-compat";

function controlPlane(agent: Agent): { server: Server; calls: string[] } {
  const calls: string[] = [];
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    calls.push(`${req.method} ${path}`);
    req.resume();
    const info = {
      sandboxID: SANDBOX_ID,
      templateID: "base",
      clientID: "local",
      envdVersion: ENVD_VERSION,
      envdAccessToken: agent.token,
      domain: "localhost",
    };
    const send = (status: number, body?: unknown) => {
      if (body === undefined) return void res.writeHead(status).end();
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    };
    if (req.method === "POST" && (path === "/sandboxes" || path === "/v2/sandboxes")) return send(201, info);
    if (req.method === "POST" && /^(\/v2)?\/sandboxes\/[^/]+\/connect$/.test(path)) return send(200, info);
    if (req.method === "DELETE" && path === `/sandboxes/${SANDBOX_ID}`) return send(204);
    send(404, { code: 404, message: `fixture has no route ${req.method} ${path}` });
  });
  return { server, calls };
}

describe("E2B SDK compatibility (e2b@2.51.0)", () => {
  let agent: Agent;
  let api: { server: Server; calls: string[] };
  // biome-ignore lint/suspicious/noExplicitAny: the SDK module is imported dynamically after env set-up
  let e2b: any;

  before(async () => {
    agent = await startAgent();
    assert.equal((await agent.init()).type, "ack");
    api = controlPlane(agent);
    await new Promise<void>((r) => api.server.listen(0, "127.0.0.1", r));
    process.env["E2B_API_KEY"] = `e2b_${"0".repeat(40)}`;
    process.env["E2B_API_URL"] = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}`;
    process.env["E2B_SANDBOX_URL"] = agent.baseUrl;
    e2b = await import("e2b");
  });
  after(async () => {
    api.server.closeAllConnections();
    api.server.close();
    await agent.stop();
  });

  test("Sandbox.create + commands.run: stdout, stderr, exit code, user", async () => {
    const sbx = await e2b.Sandbox.create("base");
    assert.equal(sbx.sandboxId, SANDBOX_ID);
    const r = await sbx.commands.run("echo hello; echo oops >&2; id -u");
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, `hello\n${USER_UID}\n`);
    assert.equal(r.stderr, "oops\n");

    const root = await sbx.commands.run("id -u", { user: "root" });
    assert.equal(root.stdout, "0\n");

    await assert.rejects(sbx.commands.run("exit 3"), (e: { exitCode: number }) => e.exitCode === 3);

    const lines: string[] = [];
    const streamed = await sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.2; done", {
      onStdout: (d: string) => lines.push(d),
      envs: { GREETING: "hi" },
    });
    assert.deepEqual(lines, ["1\n", "2\n", "3\n"]);
    assert.equal(streamed.stdout, "1\n2\n3\n");
    assert.equal((await sbx.commands.run("echo $GREETING", { envs: { GREETING: "hi" } })).stdout, "hi\n");
    assert.equal((await sbx.commands.run("pwd", { cwd: "/tmp" })).stdout, "/tmp\n");
  });

  test("background command: list, stdin, kill", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    const handle = await sbx.commands.run("cat", { background: true, stdin: true });
    const listed = await sbx.commands.list();
    assert.ok(listed.some((p: { pid: number }) => p.pid === handle.pid));
    await sbx.commands.sendStdin(handle.pid, "typed\n");
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(handle.stdout, "typed\n");
    assert.equal(await sbx.commands.kill(handle.pid), true);
    await assert.rejects(handle.wait());
    assert.equal(await sbx.commands.kill(999_999), false);
  });

  test("files: write/read text and bytes, list, exists, makeDir, rename, remove", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    const info = await sbx.files.write("notes/hello.txt", "hello from the sdk");
    assert.equal(info.path, `${agent.home}/notes/hello.txt`);
    assert.equal(await sbx.files.read("notes/hello.txt"), "hello from the sdk");
    const bytes = new Uint8Array([0, 1, 2, 250, 255]);
    await sbx.files.write("/tmp/sdk-bytes.bin", bytes.buffer);
    assert.deepEqual(new Uint8Array(await sbx.files.read("/tmp/sdk-bytes.bin", { format: "bytes" })), bytes);
    await sbx.files.remove("/tmp/sdk-bytes.bin");
    // Octet-stream and gzip transfer paths (envd >= 0.5.7).
    await sbx.files.write("notes/raw.txt", "raw body", { useOctetStream: true });
    await sbx.files.write("notes/gz.txt", "zipped body", { gzip: true });
    assert.equal(await sbx.files.read("notes/raw.txt"), "raw body");
    assert.equal(await sbx.files.read("notes/gz.txt", { gzip: true }), "zipped body");
    await sbx.files.remove("notes/raw.txt");
    await sbx.files.remove("notes/gz.txt");

    assert.equal(await sbx.files.exists("notes/hello.txt"), true);
    assert.equal(await sbx.files.exists("notes/missing.txt"), false);
    assert.equal(await sbx.files.makeDir("notes/sub"), true);
    assert.equal(await sbx.files.makeDir("notes/sub"), false);
    const entries = await sbx.files.list("notes");
    assert.deepEqual(entries.map((e: { name: string; type: string }) => `${e.name}:${e.type}`).sort(), [
      "hello.txt:file",
      "sub:dir",
    ]);
    await sbx.files.rename("notes/hello.txt", "notes/sub/moved.txt");
    assert.equal(await sbx.files.read("notes/sub/moved.txt"), "hello from the sdk");
    await assert.rejects(
      sbx.files.read("notes/hello.txt"),
      (e: Error) => e.name === "FileNotFoundError" || /not/.test(e.message),
    );
    await sbx.files.remove("notes");
    assert.equal(await sbx.files.exists("notes"), false);
  });

  test("pty.create: interactive shell output, resize, exit", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    let out = "";
    const term = await sbx.pty.create({
      cols: 90,
      rows: 20,
      onData: (d: Uint8Array) => (out += Buffer.from(d)),
    });
    await sbx.pty.resize(term.pid, { cols: 111, rows: 33 });
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("stty size; exit 4\n"));
    const result = await term.wait().catch((e: { exitCode: number }) => e);
    assert.equal(result.exitCode, 4);
    assert.match(out, /33 111/);
  });

  test("the SDK hit both control-plane route families it uses", () => {
    assert.ok(
      api.calls.some((c) => /^POST (\/v2)?\/sandboxes$/.test(c)),
      api.calls.join(", "),
    );
    assert.ok(
      api.calls.some((c) => /\/connect$/.test(c)),
      api.calls.join(", "),
    );
  });
});
