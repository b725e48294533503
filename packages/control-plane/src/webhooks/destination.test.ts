// The webhook destination check (SSRF): which addresses and URLs are refused.
import assert from "node:assert/strict";
import os from "node:os";
import { test } from "node:test";
import { checkWebhookUrl, forbiddenAddress, parseWebhookUrl } from "./destination.ts";

test("special-purpose IPv4 and IPv6 addresses are forbidden, IPv4 inside IPv6 included", () => {
  for (const ip of [
    "127.0.0.1",
    "127.9.9.9",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.5.5",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:c0a8:0101::1",
    "[::1]",
  ]) {
    assert.ok(forbiddenAddress(ip), ip);
  }
  for (const ip of ["8.8.8.8", "1.1.1.1", "203.0.114.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]) {
    assert.equal(forbiddenAddress(ip), undefined, ip);
  }
});

test("this host's own addresses are forbidden", () => {
  const own = Object.values(os.networkInterfaces())
    .flat()
    .map((i) => i?.address)
    .filter((a): a is string => !!a);
  assert.ok(own.length > 0);
  for (const a of own) assert.ok(forbiddenAddress(a), a);
});

test("URL syntax: http(s) only, no credentials or fragment, bounded length", () => {
  assert.equal(parseWebhookUrl("https://example.com/hook?x=1").ok, true);
  for (const bad of [
    "file:///etc/passwd",
    "gopher://example.com/",
    "https://a:b@example.com/",
    "https://example.com/#frag",
    `https://example.com/${"a".repeat(2048)}`,
    "example.com/hook",
  ]) {
    assert.equal(parseWebhookUrl(bad).ok, false, bad);
  }
});

test("at create, names resolving to loopback are refused unless private destinations are allowed", async () => {
  const r = await checkWebhookUrl("http://localhost:8080/", false);
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.code, "forbidden");
  assert.equal((await checkWebhookUrl("http://localhost:8080/", true)).ok, true);
  assert.equal((await checkWebhookUrl("http://127.0.0.1:8080/", true)).ok, true);
});
