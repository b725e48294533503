import assert from "node:assert/strict";
import { test } from "node:test";
import { splitTokenCookie, targetMatcher } from "./target.ts";

const match = targetMatcher("firebreak.localhost");
const ID = "k3x9q2m7a1b5c8d0e4f6";

test("Host-based: <port>-<id>.<domain>, with or without the listen port; path kept", () => {
  assert.deepEqual(match(`8000-${ID}.firebreak.localhost:3000`, "/a/b?x=1"), {
    sandboxId: ID,
    port: 8000,
    via: "host",
    upstreamPath: "/a/b?x=1",
  });
  assert.equal(match(`8000-${ID.toUpperCase()}.FIREBREAK.localhost`, "/")?.sandboxId, ID);
  assert.equal(match(`8000-${ID}.other.localhost`, "/"), undefined);
  assert.equal(match(`8000-${ID}.firebreak.localhost.evil.com`, "/"), undefined);
  assert.equal(match("127.0.0.1:3000", "/v1/sandboxes"), undefined);
});

test("?token= is taken out of the upstream query; other parameters stay", () => {
  const t = match(`8000-${ID}.firebreak.localhost`, "/p?a=1&token=secret&b=2");
  assert.equal(t?.queryToken, "secret");
  assert.equal(t?.upstreamPath, "/p?a=1&b=2");
  assert.equal(match(`8000-${ID}.firebreak.localhost`, "/p?token=s")?.upstreamPath, "/p");
});

test("path-based: /ingress/<id>/<port>/<path...>; prefix removed; no slash redirects", () => {
  assert.deepEqual(match("127.0.0.1:3000", `/ingress/${ID}/8000/x/y?z=1`), {
    sandboxId: ID,
    port: 8000,
    via: "path",
    prefix: `/ingress/${ID}/8000`,
    upstreamPath: "/x/y?z=1",
  });
  assert.equal(match(undefined, `/ingress/${ID}/8000/`)?.upstreamPath, "/");
  assert.equal(match(undefined, `/ingress/${ID}/8000?token=t`)?.redirectTo, `/ingress/${ID}/8000/?token=t`);
  assert.equal(match(undefined, `/ingress/${ID}/notaport/`), undefined);
  assert.equal(match(undefined, "/ingressx/"), undefined);
});

test("the token cookie is read and removed from the forwarded Cookie header", () => {
  assert.deepEqual(splitTokenCookie("a=1; fb_ingress_token=t%2B1; b=2"), {
    tokens: ["t+1"],
    rest: "a=1; b=2",
  });
  assert.deepEqual(splitTokenCookie("fb_ingress_token=t"), { tokens: ["t"] });
  // A cookie tossed by another page of the same site comes along: every value is kept for the check.
  assert.deepEqual(splitTokenCookie("fb_ingress_token=x; fb_ingress_token=t; c=3"), {
    tokens: ["x", "t"],
    rest: "c=3",
  });
  assert.deepEqual(splitTokenCookie(undefined), { tokens: [] });
});
