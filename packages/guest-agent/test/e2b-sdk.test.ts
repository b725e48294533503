/**
 * Compatibility: the unmodified E2B SDK (e2b@2.51.0) drives the agent. A tiny
 * in-test control plane answers create/connect with the agent's access token;
 * E2B_SANDBOX_URL points the SDK's envd traffic at the agent.
 */
import assert from "node:assert/strict";
import { chmod, mkdir, readFile, symlink, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ENVD_VERSION } from "@firebreak/protocol";
import { loadXattr } from "../src/filesystem/xattr-metadata.ts";
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

  test("envd 0.6.2 file metadata: write (multipart and octet-stream), getInfo, list, rename, overwrite, xattrs", async () => {
    assert.equal(ENVD_VERSION, "0.6.4");
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    const metadata = { author: "mish", purpose: "upload" };
    const info = await sbx.files.write("meta/a.txt", "with metadata", { metadata });
    assert.deepEqual(info.metadata, metadata);
    assert.deepEqual((await sbx.files.getInfo("meta/a.txt")).metadata, metadata);
    const octet = await sbx.files.write("meta/b.txt", "octet", { metadata, useOctetStream: true });
    assert.deepEqual(octet.metadata, metadata);
    assert.deepEqual((await sbx.files.getInfo("meta/b.txt")).metadata, metadata);
    // Keys are lowercased by the sandbox.
    const upper = await sbx.files.write("meta/c.txt", "x", { metadata: { Tag: "Listed" } });
    assert.deepEqual(upper.metadata, { tag: "Listed" });
    const many = await sbx.files.writeFiles(
      [
        { path: "meta/m1.txt", data: "1" },
        { path: "meta/m2.txt", data: "2" },
      ],
      { metadata: { source: "suite" } },
    );
    assert.deepEqual(
      many.map((i: { metadata?: unknown }) => i.metadata),
      [{ source: "suite" }, { source: "suite" }],
    );
    const listed = await sbx.files.list("meta");
    assert.deepEqual(listed.find((e: { name: string }) => e.name === "c.txt")?.metadata, { tag: "Listed" });
    const renamed = await sbx.files.rename("meta/a.txt", "meta/renamed.txt");
    assert.deepEqual(renamed.metadata, metadata);
    // Overwriting without metadata clears it.
    const plain = await sbx.files.write("meta/renamed.txt", "again");
    assert.equal(plain.metadata, undefined);
    assert.equal((await sbx.files.getInfo("meta/renamed.txt")).metadata, undefined);
    // An xattr set out of band in the user.e2b. namespace is metadata too.
    const x = (await loadXattr())!;
    await x.setAttribute(join(agent.home, "meta/renamed.txt"), "user.e2b.author", "outside");
    assert.deepEqual((await sbx.files.getInfo("meta/renamed.txt")).metadata, { author: "outside" });
    // Invalid metadata: the SDK refuses bad header tokens, the agent refuses what passes them.
    await assert.rejects(
      sbx.files.write("meta/bad.txt", "x", { metadata: { "bad key": "v" } }),
      (e: Error) => e instanceof e2b.InvalidArgumentError,
    );
    await assert.rejects(
      sbx.files.write("meta/bad.txt", "x", { metadata: { ["k".repeat(300)]: "v" } }),
      (e: Error) => e instanceof e2b.InvalidArgumentError && /longer than 246 bytes/.test(e.message),
    );
    assert.equal(await sbx.files.exists("meta/bad.txt"), false);
    await sbx.files.remove("meta");
  });

  test("entry info as envd reports it: mode, permissions with the d, owner, resolved symlink targets", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    await sbx.files.makeDir("info/subdir");
    await sbx.files.write("info/test.txt", "Hello, World!");
    await sbx.commands.run(
      "ln -s test.txt info/link.txt && ln -s subdir info/dirlink && ln -s nowhere info/dangling",
    );
    const file = await sbx.files.getInfo("info/test.txt");
    assert.equal(file.name, "test.txt");
    assert.equal(file.type, "file");
    assert.equal(file.path, `${agent.home}/info/test.txt`);
    assert.equal(file.size, 13);
    assert.equal(file.mode, 0o644);
    assert.equal(file.permissions, "-rw-r--r--");
    assert.equal(file.owner, "user");
    assert.equal(file.group, "usergroup");
    assert.ok(file.modifiedTime instanceof Date);
    assert.equal(file.symlinkTarget, undefined);
    const dir = await sbx.files.getInfo("info/subdir");
    assert.equal(dir.type, "dir");
    assert.equal(dir.mode, 0o755);
    assert.equal(dir.permissions, "drwxr-xr-x");
    assert.ok(dir.size > 0);
    const link = await sbx.files.getInfo("info/link.txt");
    assert.equal(link.name, "link.txt");
    assert.equal(link.type, "file");
    assert.equal(link.symlinkTarget, `${agent.home}/info/test.txt`);
    assert.equal(link.permissions, "Lrwxrwxrwx");
    const entries = await sbx.files.list("info");
    // The SDK skips entries of unknown type: the dangling link is not listed.
    assert.deepEqual(
      entries.map((e: { name: string; type: string }) => `${e.name}:${e.type}`),
      ["dirlink:dir", "link.txt:file", "subdir:dir", "test.txt:file"],
    );
    await assert.rejects(sbx.files.getInfo("info/missing"), (e: Error) => e instanceof e2b.FileNotFoundError);
    await sbx.files.remove("info");
  });

  test("list: depth-first in name order at every depth, as envd's WalkDir", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    for (const d of ["subdir1/subdir1_1", "subdir1/subdir1_2", "subdir2/subdir2_1", "subdir2/subdir2_2"]) {
      await sbx.files.makeDir(`walk/${d}`);
    }
    await sbx.files.write("walk/file1.txt", "Hello, world!");
    const names = async (depth?: number) =>
      (await sbx.files.list("walk", depth === undefined ? undefined : { depth })).map(
        (e: { path: string; type: string }) => `${e.path.slice(agent.home.length + 6)}:${e.type}`,
      );
    const shallow = ["file1.txt:file", "subdir1:dir", "subdir2:dir"];
    const deep = [
      "file1.txt:file",
      "subdir1:dir",
      "subdir1/subdir1_1:dir",
      "subdir1/subdir1_2:dir",
      "subdir2:dir",
      "subdir2/subdir2_1:dir",
      "subdir2/subdir2_2:dir",
    ];
    assert.deepEqual(await names(), shallow);
    assert.deepEqual(await names(1), shallow);
    assert.deepEqual(await names(2), deep);
    assert.deepEqual(await names(3), deep);
    await assert.rejects(sbx.files.list("walk", { depth: -1 }), /depth should be at least one/);
    await sbx.files.remove("walk");
  });

  test("remove of a missing path succeeds; rename of one is FileNotFoundError; makeDir on a file is invalid", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    await sbx.files.remove("non_existing_file.txt");
    await assert.rejects(
      sbx.files.rename("non_existing_file.txt", "new_name.txt"),
      (e: Error) => e instanceof e2b.FileNotFoundError,
    );
    await sbx.files.write("plain.txt", "x");
    await assert.rejects(sbx.files.makeDir("plain.txt"), (e: Error) => e instanceof e2b.InvalidArgumentError);
    await sbx.files.remove("plain.txt");
  });

  test("watchDir: writes, recursive with a new nested dir, includeEntry (0.6.3), allowNetworkMounts (0.6.4)", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    await sbx.files.makeDir("watch");
    await sbx.files.write("watch/w.txt", "first");
    const waitFor = (
      pred: (ev: { type: string; name: string; entry?: { path: string; type: string } }) => boolean,
    ) => {
      let resolve!: (ev: unknown) => void;
      const seen = new Promise((r) => {
        resolve = r;
      });
      return { seen, onEvent: (ev: never) => pred(ev) && resolve(ev) };
    };
    const write = waitFor((ev) => ev.type === e2b.FilesystemEventType.WRITE && ev.name === "w.txt");
    const withEntry = waitFor((ev) => ev.type === e2b.FilesystemEventType.WRITE && ev.name === "w.txt");
    const h1 = await sbx.files.watchDir("watch", write.onEvent);
    const h2 = await sbx.files.watchDir("watch", withEntry.onEvent, {
      includeEntry: true,
      allowNetworkMounts: true,
    });
    await sbx.files.write("watch/w.txt", "second");
    await write.seen;
    const ev = (await withEntry.seen) as { entry?: { name: string; path: string; type: string } };
    assert.equal(ev.entry?.name, "w.txt");
    assert.equal(ev.entry?.path, `${agent.home}/watch/w.txt`);
    assert.equal(ev.entry?.type, "file");
    await h1.stop();
    await h2.stop();

    const created = waitFor((e) => e.type === e2b.FilesystemEventType.CREATE && e.name === "nested");
    const nested = waitFor((e) => e.type === e2b.FilesystemEventType.WRITE && e.name === "nested/n.txt");
    const h3 = await sbx.files.watchDir(
      "watch",
      (e: never) => {
        created.onEvent(e);
        nested.onEvent(e);
      },
      { recursive: true },
    );
    await sbx.files.makeDir("watch/nested");
    await created.seen;
    await sbx.files.write("watch/nested/n.txt", "deep");
    await nested.seen;
    await h3.stop();

    await assert.rejects(
      sbx.files.watchDir("watch/missing", () => {}),
      (e: Error) => e instanceof e2b.FileNotFoundError,
    );
    await assert.rejects(
      sbx.files.watchDir("watch/w.txt", () => {}),
      (e: Error) => e instanceof e2b.SandboxError,
    );
    await sbx.files.remove("watch");
  });

  test("a failed command's CommandExitError carries envd's message", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    const err = await sbx.commands.run("exit 3").catch((e: Error) => e);
    assert.ok(err instanceof e2b.CommandExitError);
    assert.equal(err.exitCode, 3);
    assert.equal(err.message, "exit status 3");
    assert.equal(err.error, "exit status 3");
    const ok = await sbx.commands.run("true");
    assert.equal(ok.error, undefined);
    const handle = await sbx.commands.run("sleep 30", { background: true });
    await sbx.commands.kill(handle.pid);
    const killed = await handle.wait().catch((e: Error) => e);
    assert.ok(killed instanceof e2b.CommandExitError);
    assert.equal(killed.message, "signal: killed");
  });

  test("the SDK's file calls act as the user: root-only files and links to them are refused, root gets them", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    const vault = join(agent.dir, "vault");
    await mkdir(vault);
    await chmod(vault, 0o700);
    await writeFile(join(vault, "secret"), "root only", { mode: 0o600 });
    await writeFile(join(agent.dir, "rootfile"), "root's", { mode: 0o644 });
    await symlink(join(agent.dir, "rootfile"), join(agent.home, "planted"));
    const denied = (e: Error) =>
      e instanceof e2b.SandboxError && /permission denied: user 'user'/.test(e.message);
    await assert.rejects(sbx.files.read(join(vault, "secret")), denied);
    await assert.rejects(sbx.files.list(vault), denied);
    await assert.rejects(sbx.files.write("planted", "overwritten"), denied);
    await assert.rejects(sbx.files.write(join(vault, "new"), "x"), denied);
    await assert.rejects(sbx.files.remove(join(agent.dir, "rootfile")), denied);
    assert.equal(await readFile(join(agent.dir, "rootfile"), "utf8"), "root's");
    assert.equal(await sbx.files.read(join(vault, "secret"), { user: "root" }), "root only");
    assert.equal((await sbx.files.list(vault, { user: "root" })).length, 1);
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

  // Last: it stops the agent. A sandbox kill destroys the VM without the agent's
  // help; what the agent can do is end every stream at once when it is stopped.
  test("stopping the agent ends a running command's stream at once, not at the SDK's 60 s timeout", async () => {
    const sbx = await e2b.Sandbox.connect(SANDBOX_ID);
    const handle = await sbx.commands.run("sleep 60", { background: true });
    const waited = handle.wait().catch((e: Error) => e);
    await agent.stop();
    const err = (await waited) as Error;
    assert.ok(err instanceof e2b.SandboxError, String(err));
    // The connection was cut ("terminated"), not timed out by the SDK.
    assert.match(err.message, /terminated/);
    assert.doesNotMatch(err.message, /timeoutMs/);
  });
});
