// bin/firebreak before set-up: one line saying to run set-up, exit code 1, no
// stack trace; after set-up it runs the CLI. Needs no root and boots nothing.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
let checkout: string;

/** A copy of the launcher in a checkout with no node_modules. */
before(() => {
  checkout = fs.mkdtempSync(path.join(os.tmpdir(), "fb-launcher-"));
  fs.mkdirSync(path.join(checkout, "bin"));
  fs.copyFileSync(path.join(REPO, "bin", "firebreak"), path.join(checkout, "bin", "firebreak"));
  fs.chmodSync(path.join(checkout, "bin", "firebreak"), 0o755);
});
after(() => fs.rmSync(checkout, { recursive: true, force: true }));

function launch(bin: string, env: Record<string, string>) {
  const r = spawnSync(bin, ["sandbox", "list"], {
    env: { PATH: process.env["PATH"] ?? "", ...env },
    encoding: "utf8",
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("no Node.js 24: one line saying to run set-up as root, exit 1", () => {
  const r = launch(path.join(checkout, "bin", "firebreak"), {
    FIREBREAK_NODE: path.join(checkout, "no-node"),
  });
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.match(
    r.stderr,
    /^firebreak is not set up: Node\.js 24 not found at .*; run scripts\/setup\.sh as root first\n$/,
  );
});

test("no npm dependencies: one line saying to run set-up as root, exit 1", () => {
  const r = launch(path.join(checkout, "bin", "firebreak"), { FIREBREAK_NODE: process.execPath });
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.match(
    r.stderr,
    /^firebreak is not set up: npm dependencies not installed in .*; run scripts\/setup\.sh as root first\n$/,
  );
});

test("after set-up the same launcher runs the CLI", () => {
  const r = spawnSync(path.join(REPO, "bin", "firebreak"), ["--version"], {
    env: { PATH: process.env["PATH"] ?? "", FIREBREAK_NODE: process.execPath },
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
});
