// The state dir files of `firebreak up`: the admin key is used only when it is
// root's alone, and a pid file counts only while it names a live server (a
// stale one, or one naming a reused pid, is removed).
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { isServerProcess, readAdminKey, runningServer, serverFiles, writeAdminKey } from "./server-files.ts";

let dir: string;
const children: ChildProcess[] = [];
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-server-files-"));
});
after(() => {
  for (const c of children) c.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A process whose command line is `node -e ... <argv>`; resolves once it runs. */
async function process_(argv: string[]): Promise<number> {
  const c = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)", ...argv], { stdio: "ignore" });
  children.push(c);
  await new Promise((r) => c.once("spawn", r));
  return c.pid!;
}

test("admin key: none stored is undefined; a stored one reads back; the file is 0600", {
  skip: process.getuid?.() === 0 ? false : "the key file must be root's",
}, () => {
  const files = serverFiles(path.join(dir, "keys"));
  assert.equal(readAdminKey(files), undefined);
  writeAdminKey(files, "fb_0123");
  assert.equal(readAdminKey(files), "fb_0123");
  assert.equal(fs.statSync(files.adminKeyFile).mode & 0o777, 0o600);
});

test("admin key: a file others can read is refused, not used", {
  skip: process.getuid?.() === 0 ? false : "the key file must be root's",
}, () => {
  const files = serverFiles(path.join(dir, "leaky"));
  writeAdminKey(files, "fb_0123");
  fs.chmodSync(files.adminKeyFile, 0o644);
  assert.throws(() => readAdminKey(files), /must be a root-owned file only root can read.*leaked/);
});

test("running server: a pid file naming a dead pid or another program is stale and removed", async () => {
  const files = serverFiles(path.join(dir, "stale"));
  fs.mkdirSync(files.stateDir);
  const dead = spawn("true");
  await new Promise((r) => dead.once("exit", r));
  for (const pid of [dead.pid!, await process_(["not-a-server"])]) {
    fs.writeFileSync(files.pidFile, `${pid}\n`);
    assert.equal(runningServer(files), undefined, `pid ${pid}`);
    assert.equal(fs.existsSync(files.pidFile), false, "the stale pid file remains");
  }
});

test("running server: found through the pid file, or the database lock without one", async () => {
  const files = serverFiles(path.join(dir, "live"));
  fs.mkdirSync(files.stateDir);
  const up = await process_(["/opt/x/packages/cli/src/main.ts", "up", "--listen", "127.0.0.1:0"]);
  assert.equal(isServerProcess(up), true);
  fs.writeFileSync(files.pidFile, `${up}\n`);
  assert.equal(runningServer(files), up);
  fs.rmSync(files.pidFile);
  assert.equal(runningServer(files), undefined);
  fs.writeFileSync(files.dbLockFile, String(up));
  assert.equal(runningServer(files), up);
  // The CLI's other commands are not servers.
  const exec = await process_([
    "/opt/x/packages/cli/src/main.ts",
    "sandbox",
    "exec",
    "x",
    "--",
    "echo",
    "up",
  ]);
  assert.equal(isServerProcess(exec), false);
});
