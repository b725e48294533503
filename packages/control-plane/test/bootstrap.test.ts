// `firebreak up` semantics: the first start creates the default tenant and an
// admin key and prints it once; later starts print nothing and keep the key;
// a second control plane on the same database is refused.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { startServer } from "../src/index.ts";
import { STATE_DIR, skipUnlessRoot } from "./helpers.ts";

describe("first start", { skip: skipUnlessRoot }, () => {
  test("prints an admin key once, keeps it across restarts, refuses a second server on the same db", async () => {
    const dbFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "fb-cp-boot-")), "cp.db");
    const printed: string[] = [];
    const opts = {
      listen: "127.0.0.1:0",
      stateDir: STATE_DIR,
      dbFile,
      logLevel: "warn",
      printAdminKey: (k: string) => printed.push(k),
    };
    const saved = process.env["FIREBREAK_ADMIN_KEY"];
    delete process.env["FIREBREAK_ADMIN_KEY"];
    try {
      const first = await startServer(opts);
      assert.equal(printed.length, 1);
      assert.match(printed[0]!, /^fb_[0-9a-f]{64}$/);
      assert.equal(first.createdAdminKey, printed[0]);
      const keys = await fetch(`${first.url}/v1/keys`, {
        headers: { authorization: `Bearer ${printed[0]}` },
      });
      assert.equal(keys.status, 200);
      const body = (await keys.json()) as { keys: { tenantId: string; scopes: string[] }[] };
      assert.deepEqual(
        body.keys.map((k) => [k.tenantId, k.scopes]),
        [["default", ["admin"]]],
      );
      assert.ok(!fs.readFileSync(dbFile).includes(printed[0]!.slice(3)), "only the hash is stored");

      await assert.rejects(startServer(opts), /another control plane/);
      await first.close();

      const second = await startServer(opts);
      assert.equal(printed.length, 1, "not printed again");
      assert.equal(second.createdAdminKey, undefined);
      const again = await fetch(`${second.url}/v1/tenants`, {
        headers: { authorization: `Bearer ${printed[0]}` },
      });
      assert.equal(again.status, 200);
      await second.close();
    } finally {
      if (saved !== undefined) process.env["FIREBREAK_ADMIN_KEY"] = saved;
    }
  });
});
