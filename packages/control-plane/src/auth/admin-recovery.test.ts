// Root's way back in: an admin key minted straight into the database, while
// the API is serving from it, after every other admin key was revoked.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { inProcess } from "../testing/in-process.ts";
import { recoverAdminKey } from "./admin-recovery.ts";
import { hashApiKey } from "./keys.ts";

test("recoverAdminKey mints a working admin key while the server has the database open, after every admin key was revoked", async (t) => {
  const env = await inProcess();
  t.after(() => env.close());
  const admin = await env.tenant({}, ["admin"]);
  // The operator's only admin key is revoked (by itself): locked out.
  assert.equal((await admin.api.delete(`/v1/keys/${admin.keyId}`)).status, 204);
  assert.equal((await admin.api.get("/v1/tenants")).status, 401);

  const made = await recoverAdminKey({ dbFile: env.dbFile, name: "recovered" });
  assert.match(made.key, /^fb_[0-9a-f]{64}$/);
  assert.equal(made.tenantId, "default");
  const back = env.api.withKey(made.key);
  assert.equal((await back.get("/v1/tenants")).status, 200, "works at once, no restart");
  const rec = await env.store.findKeyByHash(hashApiKey(made.key)!);
  assert.deepEqual(
    { scopes: rec?.scopes, name: rec?.name, createdByKey: rec?.createdByKey, revokedAt: rec?.revokedAt },
    { scopes: ["admin"], name: "recovered", createdByKey: null, revokedAt: null },
  );
  // Only the hash is stored.
  assert.ok(!fs.readFileSync(env.dbFile).includes(made.key.slice(3)));
  // A second recovery is another key; both work.
  const again = await recoverAdminKey({ dbFile: env.dbFile, name: "recovered" });
  assert.notEqual(again.key, made.key);
  assert.equal((await env.api.withKey(again.key).get("/v1/keys")).status, 200);
});

test("recoverAdminKey refuses a database that does not exist, and creates nothing", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-recover-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dbFile = path.join(dir, "control-plane.db");
  await assert.rejects(recoverAdminKey({ dbFile, name: "x" }), /no control plane database at .*firebreak up/);
  assert.deepEqual(fs.readdirSync(dir), []);
});
