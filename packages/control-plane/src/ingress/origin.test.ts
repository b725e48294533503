import assert from "node:assert/strict";
import { test } from "node:test";
import { cookieRequestRefusal, isOwnOrigin } from "./origin.ts";

test("isOwnOrigin compares host and port (default ports filled in), not the scheme", () => {
  const host = "8000-abc.firebreak.localhost:3000";
  assert.equal(isOwnOrigin("http://8000-abc.firebreak.localhost:3000", host), true);
  assert.equal(isOwnOrigin("http://8000-ABC.firebreak.localhost:3000", host), true);
  assert.equal(isOwnOrigin("http://8000-abd.firebreak.localhost:3000", host), false);
  assert.equal(isOwnOrigin("http://8000-abc.firebreak.localhost", host), false);
  assert.equal(isOwnOrigin("https://8000-abc.example.com", "8000-abc.example.com"), true);
  assert.equal(isOwnOrigin("https://8000-abc.example.com", "8000-abc.example.com:443"), true);
  assert.equal(isOwnOrigin("http://8000-abc.example.com", "8000-abc.example.com."), true);
  assert.equal(isOwnOrigin("http://[::1]:3000", "[::1]:3000"), true);
  assert.equal(isOwnOrigin("null", host), false);
  assert.equal(isOwnOrigin("file:///etc/passwd", host), false);
  assert.equal(isOwnOrigin("garbage", host), false);
  assert.equal(isOwnOrigin("http://8000-abc.firebreak.localhost:3000", undefined), false);
});

test("cookie requests: foreign origins and same-site subresources are refused; navigations and programs pass", () => {
  const host = "8000-abc.firebreak.localhost";
  assert.equal(cookieRequestRefusal({ host }, false), undefined);
  assert.equal(cookieRequestRefusal({ host, origin: `http://${host}` }, false), undefined);
  assert.match(
    cookieRequestRefusal({ host, origin: "http://8000-evil.firebreak.localhost" }, false)!,
    /another origin/,
  );
  assert.match(
    cookieRequestRefusal(
      { host, "sec-fetch-site": "same-site", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "image" },
      false,
    )!,
    /same-site subresource/,
  );
  assert.equal(
    cookieRequestRefusal(
      { host, "sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate", "sec-fetch-dest": "document" },
      false,
    ),
    undefined,
  );
  assert.equal(cookieRequestRefusal({ host, "sec-fetch-site": "same-origin" }, false), undefined);
  assert.equal(cookieRequestRefusal({ host, "sec-fetch-site": "none" }, false), undefined);
  assert.match(cookieRequestRefusal({ host }, true)!, /must carry an Origin/);
  assert.equal(cookieRequestRefusal({ host, origin: `http://${host}` }, true), undefined);
});
