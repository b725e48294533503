import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { IngressTokens } from "./ingress-token.ts";

test("the secret is made once (0600), kept across opens, and tokens are per sandbox and not guessable from another's", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-ingress-"));
  try {
    const file = path.join(dir, "sub", "ingress-secret");
    const a = IngressTokens.open(file);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.dirname(file)).mode & 0o777, 0o700);
    const b = IngressTokens.open(file);
    assert.equal(a.tokenFor("s1"), b.tokenFor("s1"));
    assert.match(a.tokenFor("s1"), /^fbi_[0-9a-f]{64}$/);
    assert.notEqual(a.tokenFor("s1"), a.tokenFor("s2"));
    assert.equal(a.verify("s1", a.tokenFor("s1")), true);
    assert.equal(a.verify("s2", a.tokenFor("s1")), false);
    assert.equal(a.verify("s1", `${a.tokenFor("s1")}x`), false);
    assert.equal(a.verify("s1", ""), false);
    assert.equal(a.verify("s1", undefined), false);
    // Nothing but the secret file is left (no temporary files).
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ["ingress-secret"]);
    // Another secret gives other tokens.
    const other = IngressTokens.fromSecret(Buffer.alloc(32, 1));
    assert.notEqual(other.tokenFor("s1"), a.tokenFor("s1"));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a secret readable by others, or malformed, is refused with the fix in the message", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-ingress-"));
  try {
    const file = path.join(dir, "ingress-secret");
    IngressTokens.open(file);
    fs.chmodSync(file, 0o644);
    assert.throws(() => IngressTokens.open(file), /readable by others .*chmod 600/);
    fs.writeFileSync(file, "short\n", { mode: 0o600 });
    fs.chmodSync(file, 0o600);
    assert.throws(() => IngressTokens.open(file), /malformed; delete it/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
