// firebreak admin-key: root mints an admin key straight into the state dir's
// database, with the database open elsewhere (a running server), and prints
// only the key on stdout.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { hashApiKey } from "../../control-plane/src/auth/keys.ts";
import { SqliteStore } from "../../control-plane/src/store/sqlite-store.ts";
import { runCli, skipUnlessRoot } from "../../node-agent/test/helpers.ts";

describe("firebreak admin-key", { skip: skipUnlessRoot }, () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-admin-key-"));
  });
  after(() => fs.rm(dir, { recursive: true, force: true }));

  test("prints only a new admin key, stored as its hash, while another process holds the database", async () => {
    const stateDir = path.join(dir, "state");
    // The server's view: the database open in this process the whole time.
    const store = new SqliteStore(path.join(stateDir, "control-plane.db"));
    try {
      const r = await runCli(["admin-key", "--state-dir", stateDir, "--name", "ops-recovery"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^fb_[0-9a-f]{64}\n$/, "stdout is the key and nothing else");
      assert.match(r.stderr, /minted admin key key\w+ \(tenant default\)/);
      const rec = await store.findKeyByHash(hashApiKey(r.stdout.trim())!);
      assert.equal(rec?.name, "ops-recovery");
      assert.deepEqual(rec?.scopes, ["admin"]);
      assert.equal(rec?.tenantId, "default");
      assert.ok(await store.getTenant("default"));
    } finally {
      store.close();
    }
  });

  test("a state dir without a database: exit 1, says how to fix it, creates nothing", async () => {
    const empty = path.join(dir, "empty");
    await fs.mkdir(empty);
    const r = await runCli(["admin-key", "--state-dir", empty]);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /no control plane database at .*control-plane\.db.*firebreak up/);
    assert.deepEqual(await fs.readdir(empty), []);
  });

  test("not root: NOT_ROOT, nothing printed on stdout", async () => {
    const r = await runCli(["admin-key", "--state-dir", path.join(dir, "state")], {
      prefix: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /NOT_ROOT.*sudo firebreak admin-key/s);
    assert.equal(r.stdout, "");
  });
});
