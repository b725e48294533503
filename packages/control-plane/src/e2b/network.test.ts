import assert from "node:assert/strict";
import { test } from "node:test";
import { normalizePolicy } from "@firebreak/node-agent";
import { ApiError } from "../errors.ts";
import { e2bEgressPolicy, e2bNetworkView } from "./network.ts";

test("nothing said: the server's default; allow_internet_access and denyOut all traffic close it", () => {
  assert.deepEqual(e2bEgressPolicy({}, true), { internet: true });
  assert.deepEqual(e2bEgressPolicy({}, false), { internet: false, allow: [] });
  assert.equal(e2bEgressPolicy({ allowInternetAccess: false }, true).internet, false);
  assert.equal(e2bEgressPolicy({ allowInternetAccess: true }, false).internet, true);
  assert.equal(e2bEgressPolicy({ denyOut: ["0.0.0.0/0"] }, true).internet, false);
});

test("allowOut: addresses and CIDRs become allow rules, names allowDomains; allow wins over deny-all", () => {
  const p = e2bEgressPolicy(
    { denyOut: ["0.0.0.0/0"], allowOut: ["1.1.1.1", "8.8.0.0/16", "pypi.org"] },
    true,
  );
  assert.deepEqual(p, {
    internet: false,
    allow: [{ cidr: "1.1.1.1" }, { cidr: "8.8.0.0/16" }],
    allowDomains: ["pypi.org"],
  });
  assert.deepEqual(
    normalizePolicy(p).allow.map((r) => r.cidr),
    ["1.1.1.1/32", "8.8.0.0/16"],
  );
  assert.equal(e2bEgressPolicy({ denyOut: ["0.0.0.0/0"], allowOut: ["0.0.0.0/0"] }, false).internet, true);
  // With the internet open, allowed names still reach the resolver's list.
  assert.deepEqual(e2bEgressPolicy({ allowOut: ["pypi.org"] }, true), {
    internet: true,
    allowDomains: ["pypi.org"],
  });
});

test("the walls do not move: a private range in allowOut is refused by the tenant policy check", () => {
  const p = e2bEgressPolicy({ allowInternetAccess: false, allowOut: ["10.1.0.0/16"] }, true);
  assert.throws(() => normalizePolicy(p), /overlaps 10\.0\.0\.0\/8/);
});

test("denying single addresses with the internet open is 501; names cannot be denied (400)", () => {
  assert.throws(
    () => e2bEgressPolicy({ denyOut: ["8.8.8.8"] }, true),
    (e: unknown) => e instanceof ApiError && e.code === "NOT_IMPLEMENTED" && /8\.8\.8\.8/.test(e.message),
  );
  // With the internet closed, denying more is a no-op and accepted.
  assert.equal(e2bEgressPolicy({ allowInternetAccess: false, denyOut: ["8.8.8.8"] }, true).internet, false);
  assert.throws(
    () => e2bEgressPolicy({ denyOut: ["example.com"] }, true),
    (e: unknown) => e instanceof ApiError && e.code === "VALIDATION_FAILED",
  );
  assert.throws(() => e2bEgressPolicy({ denyOut: ["1.2.3.4/40"] }, true), /not an IPv4 address or CIDR/);
});

test("E2B's view of a policy", () => {
  assert.deepEqual(e2bNetworkView(normalizePolicy({ internet: true })), {
    allowInternetAccess: true,
    allowOut: [],
    denyOut: [],
  });
  assert.deepEqual(
    e2bNetworkView(normalizePolicy({ allow: [{ cidr: "1.1.1.1" }], allowDomains: ["a.example.com"] })),
    {
      allowInternetAccess: false,
      allowOut: ["1.1.1.1/32", "a.example.com"],
      denyOut: ["0.0.0.0/0"],
    },
  );
});
