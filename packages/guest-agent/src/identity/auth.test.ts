import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentState } from "./agent-state.ts";
import { fileSignature, tokensEqual, userFromAuthorization } from "./auth.ts";

test("tokensEqual compares exactly, including different lengths", () => {
  assert.equal(tokensEqual("abc", "abc"), true);
  assert.equal(tokensEqual("abc", "abd"), false);
  assert.equal(tokensEqual("abc", "abcd"), false);
  assert.equal(tokensEqual("", "abc"), false);
});

test("userFromAuthorization decodes E2B's Basic <user>: header", () => {
  const h = (s: string) => `Basic ${Buffer.from(s).toString("base64")}`;
  assert.equal(userFromAuthorization(h("root:")), "root");
  assert.equal(userFromAuthorization(h("user:ignored")), "user");
  assert.equal(userFromAuthorization(h(":")), undefined);
  assert.equal(userFromAuthorization("Bearer x"), undefined);
  assert.equal(userFromAuthorization(undefined), undefined);
});

test("fileSignature matches E2B's v1 scheme (no padding, expiration appended)", () => {
  const sig = fileSignature("/a", "read", "user", "tok");
  assert.match(sig, /^v1_[A-Za-z0-9+/]+$/);
  assert.notEqual(sig, fileSignature("/a", "write", "user", "tok"));
  assert.notEqual(sig, fileSignature("/a", "read", "user", "tok", 10));
  // sha256("/a:read:user:tok") in base64, computed independently.
  assert.equal(sig, "v1_" + "Fh5abAPjRBN6FHQ5HTJwGAHjHfzJmhV0f2EtHLgLVa0");
});

test("AgentState refuses everything before init and replaces the identity on init", () => {
  const s = new AgentState();
  assert.equal(s.phase, "awaiting-init");
  assert.deepEqual(s.authorise("x"), { ok: false, reason: "not-initialised" });
  s.init({ sandboxId: "a", accessToken: "t1", envVars: { A: "1" }, defaultUser: "", defaultWorkdir: "" });
  assert.equal(s.phase, "ready");
  assert.equal(s.identity?.defaultUser, "user");
  assert.deepEqual(s.authorise(undefined), { ok: false, reason: "missing-token" });
  assert.deepEqual(s.authorise("t2"), { ok: false, reason: "bad-token" });
  assert.deepEqual(s.authorise("t1"), { ok: true });
  s.init({ sandboxId: "b", accessToken: "t2", envVars: {}, defaultUser: "root", defaultWorkdir: "/" });
  assert.deepEqual(s.authorise("t1"), { ok: false, reason: "bad-token" });
  assert.deepEqual(s.identity?.envVars, {});
});
