/**
 * The guest files API acts as the requesting user: every file operation a
 * non-root request makes runs in that user's file worker, with its uid, gid and
 * groups, so the kernel's permission checks and symlink resolution are the
 * user's. Root requests run as root. The agent runs as root on loopback; "user"
 * is uid 65534. Root-owned fixtures live in the test's temp dir: `rootonly/`
 * (0700, like /root) and `etc/` (0755, like /etc).
 */
import assert from "node:assert/strict";
import { chmod, lstat, mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { filesystemPb } from "@firebreak/protocol";
import { type Agent, fileWorkerPids, startAgent, USER_UID } from "./harness.ts";

const isCode = (code: Code, pattern?: RegExp) => (e: unknown) =>
  e instanceof ConnectError && e.code === code && (!pattern || pattern.test(e.rawMessage));

describe("file operations act as the requesting user", () => {
  let agent: Agent;
  let rootOnly: string;
  let etc: string;
  const SECRET = "top secret";
  const CONF = "root's config\n";

  before(async () => {
    agent = await startAgent();
    assert.equal((await agent.init()).type, "ack");
    rootOnly = join(agent.dir, "rootonly");
    etc = join(agent.dir, "etc");
    await mkdir(rootOnly, { mode: 0o700 });
    await chmod(rootOnly, 0o700);
    await writeFile(join(rootOnly, "secret"), SECRET, { mode: 0o600 });
    await mkdir(join(rootOnly, "open"), { mode: 0o755 });
    await writeFile(join(rootOnly, "open", "readable"), "world-readable, behind a 0700 dir", { mode: 0o644 });
    await mkdir(etc, { mode: 0o755 });
    await writeFile(join(etc, "conf"), CONF, { mode: 0o644 });
  });
  after(() => agent.stop());

  const rest = (path: string, init: RequestInit & { user?: string } = {}) => {
    const url = new URL("/files", agent.baseUrl);
    url.searchParams.set("path", path);
    if (init.user) url.searchParams.set("username", init.user);
    return fetch(url, {
      ...init,
      headers: { "X-Access-Token": agent.token, ...(init.headers as Record<string, string>) },
    });
  };
  const upload = (path: string, body: string, user?: string) =>
    rest(path, {
      method: "POST",
      body,
      headers: { "content-type": "application/octet-stream" },
      ...(user ? { user } : {}),
    });
  const errorOf = async (res: Response) => ((await res.json()) as { code: number; message: string }).message;

  test("as user, writing /etc/x or into a root-owned directory is refused; as root it works", async () => {
    const hostEtc = `/etc/fb-guest-agent-test-${process.pid}`;
    try {
      const res = await upload(hostEtc, "nope");
      assert.equal(res.status, 403);
      assert.match(await errorOf(res), /permission denied: user 'user' may not access/);
      await assert.rejects(stat(hostEtc), { code: "ENOENT" });
    } finally {
      await rm(hostEtc, { force: true });
    }
    const res = await upload(join(etc, "x"), "nope");
    assert.equal(res.status, 403);
    await assert.rejects(stat(join(etc, "x")), { code: "ENOENT" });
    const fs = agent.filesystem();
    await assert.rejects(
      fs.makeDir({ path: join(etc, "sub") }),
      isCode(Code.PermissionDenied, /user 'user'/),
    );

    const asRoot = await upload(join(etc, "x"), "root wrote this", "root");
    assert.equal(asRoot.status, 200);
    assert.equal(await readFile(join(etc, "x"), "utf8"), "root wrote this");
    assert.equal((await stat(join(etc, "x"))).uid, 0);
    const made = await agent.filesystem({ user: "root" }).makeDir({ path: join(etc, "sub") });
    assert.equal(made.entry?.owner, "root");
  });

  test("as user, reading /root-like secrets, listing or stat-ing them is refused; as root it works", async () => {
    const res = await rest(join(rootOnly, "secret"));
    assert.equal(res.status, 403);
    assert.doesNotMatch(await res.text(), /top secret/);
    // Readable file, but behind a directory the user cannot enter.
    assert.equal((await rest(join(rootOnly, "open", "readable"))).status, 403);
    const fs = agent.filesystem();
    await assert.rejects(fs.listDir({ path: rootOnly, depth: 1 }), isCode(Code.PermissionDenied));
    await assert.rejects(fs.stat({ path: join(rootOnly, "secret") }), isCode(Code.PermissionDenied));
    await assert.rejects(
      fs.watchDir({ path: rootOnly })[Symbol.asyncIterator]().next(),
      isCode(Code.PermissionDenied),
    );
    await assert.rejects(
      fs.createWatcher({ path: rootOnly, recursive: false }),
      isCode(Code.PermissionDenied),
    );

    const asRoot = await rest(join(rootOnly, "secret"), { user: "root" });
    assert.equal(asRoot.status, 200);
    assert.equal(await asRoot.text(), SECRET);
    const listed = await agent.filesystem({ user: "root" }).listDir({ path: rootOnly, depth: 2 });
    assert.deepEqual(
      listed.entries.map((e) => e.name),
      ["open", "readable", "secret"],
    );
  });

  test("as user, moving into /root-like dirs, out of /etc-like dirs, or removing a root file is refused", async () => {
    const fs = agent.filesystem();
    await writeFile(join(agent.home, "mine"), "mine");
    await assert.rejects(
      fs.move({ source: "mine", destination: join(rootOnly, "stolen") }),
      isCode(Code.PermissionDenied),
    );
    assert.equal(await readFile(join(agent.home, "mine"), "utf8"), "mine");
    await assert.rejects(
      fs.move({ source: join(etc, "conf"), destination: "conf" }),
      isCode(Code.PermissionDenied),
    );
    await assert.rejects(fs.remove({ path: join(etc, "conf") }), isCode(Code.PermissionDenied));
    await assert.rejects(fs.remove({ path: rootOnly }), isCode(Code.PermissionDenied));
    assert.equal(await readFile(join(etc, "conf"), "utf8"), CONF);
    assert.equal(await readFile(join(rootOnly, "secret"), "utf8"), SECRET);

    const root = agent.filesystem({ user: "root" });
    const moved = await root.move({ source: join(agent.home, "mine"), destination: join(rootOnly, "moved") });
    assert.equal(moved.entry?.path, join(rootOnly, "moved"));
    await root.remove({ path: join(rootOnly, "moved") });
    await assert.rejects(stat(join(rootOnly, "moved")), { code: "ENOENT" });
  });

  test("a symlink planted by the user is followed with the user's rights, never root's", async () => {
    await symlink(join(rootOnly, "secret"), join(agent.home, "to-secret"));
    await symlink(join(etc, "conf"), join(agent.home, "to-conf"));
    await symlink(etc, join(agent.home, "to-etc"));
    await symlink(rootOnly, join(agent.home, "to-rootonly"));

    assert.equal((await rest("to-secret")).status, 403);
    // The target is world-readable: reading through the link is what the user could do anyway.
    assert.equal(await (await rest("to-conf")).text(), CONF);
    // Writing through a link to a root-owned file (the classic escalation) is refused...
    assert.equal((await upload("to-conf", "pwned")).status, 403);
    assert.equal((await upload("to-etc/new", "pwned")).status, 403);
    assert.equal(await readFile(join(etc, "conf"), "utf8"), CONF);
    await assert.rejects(stat(join(etc, "new")), { code: "ENOENT" });
    const fs = agent.filesystem();
    await assert.rejects(fs.listDir({ path: "to-rootonly", depth: 1 }), isCode(Code.PermissionDenied));
    await assert.rejects(fs.makeDir({ path: "to-etc/made" }), isCode(Code.PermissionDenied));
    await assert.rejects(
      fs.move({ source: "to-conf", destination: "to-rootonly/x" }),
      isCode(Code.PermissionDenied),
    );
    // The link itself can be described (lstat), not its unreachable target.
    const st = await fs.stat({ path: "to-secret" });
    assert.equal(st.entry?.type, filesystemPb.FileType.UNSPECIFIED);
    assert.equal(st.entry?.permissions, "Lrwxrwxrwx");
    // A command may not start in a directory the user cannot enter, even through a link.
    for (const cwd of [rootOnly, "to-rootonly"]) {
      await assert.rejects(
        agent
          .process()
          .start({ process: { cmd: "/bin/pwd", args: [], envs: {}, cwd } })
          [Symbol.asyncIterator]()
          .next(),
        isCode(Code.PermissionDenied, /may not enter/),
      );
    }
    // Root, asking for the same link, gets the target.
    assert.equal(await (await rest(join(agent.home, "to-secret"), { user: "root" })).text(), SECRET);
  });

  test("what a user creates is owned by the user, parents included; root's by root", async () => {
    const fs = agent.filesystem();
    const made = await fs.makeDir({ path: "a/b/c" });
    assert.equal(made.entry?.owner, "user");
    assert.equal(made.entry?.group, "usergroup");
    assert.equal((await upload("up/one/file.txt", "x")).status, 200);
    for (const p of ["a", "a/b", "a/b/c", "up", "up/one", "up/one/file.txt"]) {
      const st = await lstat(join(agent.home, p));
      assert.equal(st.uid, USER_UID, p);
      assert.equal(st.gid, USER_UID, p);
    }
    assert.equal((await stat(join(agent.home, "up/one/file.txt"))).mode & 0o777, 0o644);
    assert.equal((await stat(join(agent.home, "a/b/c"))).mode & 0o777, 0o755);
  });

  test("the default user's worker runs before ready with only the user's credentials and cannot be traced", async () => {
    const pids = await fileWorkerPids(agent);
    assert.equal(pids.length, 1, `workers: ${pids.join(",")}`);
    const status = await readFile(`/proc/${pids[0]}/status`, "utf8");
    const field = (name: string) =>
      new RegExp(`^${name}:\\s*(.*)$`, "m").exec(status)?.[1]?.trim().split(/\s+/);
    assert.deepEqual(field("Uid"), [String(USER_UID), String(USER_UID), String(USER_UID), String(USER_UID)]);
    assert.deepEqual(field("Gid"), [String(USER_UID), String(USER_UID), String(USER_UID), String(USER_UID)]);
    assert.deepEqual(field("Groups"), [String(USER_UID)]);
    assert.deepEqual(field("CapEff"), ["0000000000000000"]);
    // A uid change from root makes the process undumpable: its /proc entries stay
    // root's, so the user's own processes cannot ptrace it or read its memory.
    assert.equal((await stat(`/proc/${pids[0]}/mem`)).uid, 0);
  });

  test("a killed worker fails its calls instead of hanging, and the next request starts a new one", async () => {
    const [pid] = await fileWorkerPids(agent);
    assert.ok(pid);
    const fs = agent.filesystem();
    await mkdir(join(agent.home, "watched"), { recursive: true });
    const stream = fs.watchDir({ path: "watched" })[Symbol.asyncIterator]();
    assert.equal((await stream.next()).value?.event.case, "start");
    const next = stream.next();
    process.kill(pid, "SIGKILL");
    await assert.rejects(next, isCode(Code.Internal, /file worker of user 'user' was killed by SIGKILL/));
    const st = await fs.stat({ path: "watched" });
    assert.equal(st.entry?.type, filesystemPb.FileType.DIRECTORY);
    const now = await fileWorkerPids(agent);
    assert.equal(now.length, 1);
    assert.notEqual(now[0], pid);
  });
});
