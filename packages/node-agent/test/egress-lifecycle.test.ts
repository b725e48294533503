// Egress: policy validation and rendering (no root needed), the service
// registry file, the bandwidth cap, and 100 sandbox networks with policies
// created and destroyed leaving nothing behind (stand-in guests, no VM).
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { EgressError, EgressManager, normalizePolicy, ServiceRegistry } from "../src/egress/index.ts";
import { domainAllowed } from "../src/egress/policy.ts";
import { renderPolicy } from "../src/egress/policy-nft.ts";
import { createFakeWorld, createStandIn, type FakeWorld, probe } from "../src/egress/testing/fake-world.ts";
import { run } from "../src/host/exec.ts";
import { GATEWAY_ADDRESS } from "../src/network/guest-addressing.ts";
import { renderRuleset } from "../src/network/nft-ruleset.ts";
import { isRoot, randomSlot, uniq } from "../src/network/testing/harness.ts";
import { wallCidrs } from "../src/network/walls.ts";
import { assertNoEgressLeaks } from "./egress-leaks.ts";

const skip = isRoot ? false : "needs root (creates network namespaces)";

describe("egress policy object", () => {
  test("defaults deny everything; CIDRs are canonical; ports sorted", () => {
    assert.deepEqual(normalizePolicy(undefined), {
      internet: false,
      allow: [],
      allowDomains: [],
      services: [],
      bandwidthKBps: undefined,
      networks: [],
      grantedBy: undefined,
    });
    const p = normalizePolicy({
      allow: [{ cidr: "11.1.2.3/8", ports: [443, 80, 443], protocol: "tcp" }, { cidr: "8.8.4.4" }],
      allowDomains: ["API.Example.com.", "*.example.org"],
    });
    assert.deepEqual(p.allow, [
      { cidr: "11.0.0.0/8", ports: [80, 443], protocol: "tcp" },
      { cidr: "8.8.4.4/32", ports: "any", protocol: "any" },
    ]);
    assert.equal(p.grantedBy, undefined, "a tenant's policy unless an admin made it");
    assert.deepEqual(p.allowDomains, ["api.example.com", "*.example.org"]);
  });

  test("invalid policies are refused with the field named", () => {
    for (const [bad, field] of [
      [{ allow: [{ cidr: "10.0.0.0/33" }] }, "allow"],
      [{ allow: [{ cidr: "10.0.0.0/8; flush ruleset" }] }, "allow"],
      [{ allow: [{ cidr: "10.0.0.0/8", ports: [0] }] }, "allow.0.ports"],
      [{ allowDomains: ["*"] }, "allowDomains.0"],
      [{ allowDomains: ["a..b"] }, "allowDomains.0"],
      [{ internet: "yes" }, "internet"],
      [{ surprise: 1 }, "(root)"],
    ] as const) {
      assert.throws(
        () => normalizePolicy(bad),
        (e: unknown) =>
          e instanceof EgressError && e.code === "EGRESS_POLICY_INVALID" && e.message.includes(field),
        JSON.stringify(bad),
      );
    }
  });

  test("special-purpose ranges: a tenant's rule touching one is refused naming it; an admin's may, except inside a hard wall", () => {
    const tenantRefused: [string, RegExp][] = [
      ["10.1.0.0/16", /overlaps 10\.0\.0\.0\/8 \(private network, RFC 1918\).*an admin can grant/],
      ["172.20.0.1", /172\.16\.0\.0\/12/],
      ["192.168.1.0/24", /192\.168\.0\.0\/16/],
      ["100.64.0.0/10", /CGNAT/],
      ["198.18.0.0/15", /benchmarking/],
      ["192.0.2.7", /TEST-NET-1/],
      ["198.51.100.0/24", /TEST-NET-2/],
      ["203.0.113.9", /TEST-NET-3/],
      ["192.0.0.8", /IETF protocol assignments/],
      ["192.88.99.1", /6to4/],
      ["0.0.0.0/0", /overlaps .*an admin can grant/],
      ["8.0.0.0/4", /overlaps 10\.0\.0\.0\/8/],
      ["169.254.169.254", /hard wall/],
      ["168.63.129.16", /hard wall/],
      ["127.0.0.1", /hard wall/],
      ["255.255.255.255", /hard wall/],
    ];
    for (const [cidr, re] of tenantRefused) {
      assert.throws(
        () => normalizePolicy({ allow: [{ cidr: "11.0.0.0/8" }, { cidr }] }),
        (e: unknown) =>
          e instanceof EgressError &&
          e.code === "EGRESS_CIDR_RESERVED" &&
          e.message.includes("allow.1.cidr") &&
          re.test(e.message),
        cidr,
      );
    }
    // An admin may open private and special ranges, and write rules that span walls (the walls hold).
    for (const cidr of ["10.1.0.0/16", "100.64.0.0/10", "198.18.0.0/15", "0.0.0.0/0", "168.0.0.0/6"]) {
      assert.equal(normalizePolicy({ grantedBy: "admin", allow: [{ cidr }] }).grantedBy, "admin", cidr);
    }
    // A rule wholly inside a hard wall could never take effect: refused for admins too.
    for (const cidr of ["169.254.169.254", "127.0.0.0/8", "168.63.129.16", "100.100.100.200", "224.0.0.1"]) {
      assert.throws(
        () => normalizePolicy({ grantedBy: "admin", allow: [{ cidr }] }),
        (e: unknown) =>
          e instanceof EgressError && e.code === "EGRESS_CIDR_RESERVED" && /hard wall/.test(e.message),
        cidr,
      );
    }
    assert.throws(() => normalizePolicy({ grantedBy: "root" }), { code: "EGRESS_POLICY_INVALID" });
  });

  test("the manager also refuses a tenant's rule holding one of the host's own addresses", {
    skip,
  }, async (t) => {
    // In a namespace of its own whose only interface has a public address, so
    // the static list (which holds this host's real addresses) does not decide.
    // The interface has no carrier (its peer is down): Node does not list it,
    // the kernel still delivers to its address.
    const ns = `fbt-ha${uniq()}`;
    await run("ip", ["netns", "add", ns]);
    t.after(() => run("ip", ["netns", "del", ns], { allowFailure: true }));
    await run("ip", ["-n", ns, "-batch", "-"], {
      input: "link add v0 type veth peer name v1\naddr add 11.9.9.9/24 dev v0\nlink set v0 up\n",
    });
    const manager = new URL("../src/egress/egress-manager.ts", import.meta.url).pathname;
    const script = `
      const { EgressManager } = await import(${JSON.stringify(manager)});
      const egress = await EgressManager.open({});
      const out = {};
      for (const [k, p] of Object.entries({
        host: { allow: [{ cidr: "11.9.0.0/16" }] },
        neighbour: { allow: [{ cidr: "11.8.0.0/16" }] },
        admin: { grantedBy: "admin", allow: [{ cidr: "11.9.0.0/16" }] },
      })) {
        try { egress.validate(p); out[k] = "ok"; } catch (e) { out[k] = e.code + " " + e.message; }
      }
      console.log(JSON.stringify(out));`;
    const r = await run("nsenter", [
      `--net=/run/netns/${ns}`,
      process.execPath,
      "--input-type=module",
      "-e",
      script,
    ]);
    const out = JSON.parse(r.stdout) as Record<string, string>;
    assert.match(out["host"]!, /^EGRESS_CIDR_RESERVED .*allow\.0\.cidr 11\.9\.0\.0\/16 holds 11\.9\.9\.9/);
    assert.equal(out["neighbour"], "ok");
    assert.equal(out["admin"], "ok", "an admin's rule may span a host address (the wall still holds)");
  });

  test("wildcards match subdomains only", () => {
    assert.ok(domainAllowed(["*.example.com"], "a.example.com"));
    assert.ok(domainAllowed(["*.example.com"], "a.b.example.com."));
    assert.ok(!domainAllowed(["*.example.com"], "example.com"));
    assert.ok(!domainAllowed(["*.example.com"], "badexample.com"));
    assert.ok(domainAllowed(["api.example.com"], "API.example.com"));
    assert.ok(!domainAllowed(["api.example.com"], "x.api.example.com"));
  });

  test("policy text touches only the policy chains and the resolver set, never the walls", () => {
    const text = renderPolicy(
      normalizePolicy({
        grantedBy: "admin",
        internet: true,
        allow: [{ cidr: "0.0.0.0/0" }],
        bandwidthKBps: 100,
      }),
      [{ serviceAddress: "169.254.16.1", port: 5432, targetAddress: "10.0.0.5", targetPort: 5432 }],
      [{ address: "198.51.100.1", timeoutS: 30 }],
    );
    for (const line of text.trim().split("\n")) {
      assert.match(
        line,
        /^(flush chain inet firebreak policy_(nat|services|egress|limit)|flush set inet firebreak (dns_allowed|peers)|add rule inet firebreak policy_(nat|services|egress|limit) |add element inet firebreak (dns_allowed|peers) )/,
        line,
      );
    }
    assert.doesNotMatch(text, /walls/);
  });

  test("the walls cover the host pool, link-local, metadata and every host address", () => {
    const walls = wallCidrs("10.211.0.0/16", ["127.0.0.1", "192.168.1.20", "10.211.0.4", "172.17.0.1"]);
    for (const w of [
      "10.211.0.0/16",
      "169.254.0.0/16",
      "127.0.0.0/8",
      "100.100.100.200/32",
      "168.63.129.16/32",
      "192.168.1.20/32",
      "224.0.0.0/4",
      "240.0.0.0/4",
    ]) {
      assert.ok(walls.includes(w), w);
    }
    assert.ok(walls.includes("172.17.0.1/32"));
    assert.ok(!walls.includes("10.211.0.4/32"), "already inside the pool wall");
    assert.ok(
      !walls.includes("169.254.169.254/32"),
      "inside 169.254.0.0/16 (nft refuses overlapping elements)",
    );
    assert.ok(!walls.includes("255.255.255.255/32"), "inside 240.0.0.0/4");
    const rs = renderRuleset({ hostAddress: "10.211.0.6", sandboxAddress: "10.211.0.7", walls });
    assert.match(
      rs,
      /elements = \{ 0\.0\.0\.0\/8, 10\.211\.0\.0\/16, 100\.100\.100\.200\/32, 127\.0\.0\.0\/8, 168\.63\.129\.16\/32, 169\.254\.0\.0\/16, /,
    );
    // Everything special is outside "the internet" (the private set), the documentation and benchmark ranges included.
    for (const r of [
      "10.0.0.0/8",
      "100.64.0.0/10",
      "192.0.2.0/24",
      "198.18.0.0/15",
      "203.0.113.0/24",
      "0.0.0.0/8",
    ])
      assert.match(rs, new RegExp(`set private \\{[^}]*${r.replace(/[./]/g, "\\$&")}`), r);
  });
});

describe("service registry", () => {
  test("persists to services.json (0600), validates, and enforces tenants", async (t) => {
    const dir = await mkdtemp(path.join(tmpdir(), "fb-svc-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const reg = await ServiceRegistry.open(dir);
    await reg.put({
      name: "api.internal",
      address: "10.1.2.3",
      port: 80,
      protocol: "http",
      tenants: ["acme"],
      inject: { header: "Authorization", value: "Bearer x" },
    });
    const file = path.join(dir, "services.json");
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.match(await readFile(file, "utf8"), /api\.internal/);
    const again = await ServiceRegistry.open(dir);
    assert.equal(again.get("api.internal")?.port, 80);
    assert.equal(again.resolveBinding("api.internal", "acme").address, "10.1.2.3");
    assert.throws(() => again.resolveBinding("api.internal", "other"), { code: "EGRESS_SERVICE_FORBIDDEN" });
    assert.throws(() => again.resolveBinding("nope.internal", "acme"), { code: "EGRESS_SERVICE_UNKNOWN" });
    await assert.rejects(
      reg.put({
        name: "x.internal",
        address: "10.0.0.1",
        port: 1,
        protocol: "tcp",
        inject: { header: "A", value: "b" },
      }),
      {
        code: "EGRESS_SERVICE_INVALID",
      },
    );
    await assert.rejects(reg.put({ name: "x.internal", address: "10.0.0.1\n", port: 1, protocol: "tcp" }), {
      code: "EGRESS_SERVICE_INVALID",
    });
    assert.equal(await again.remove("api.internal"), true);
    assert.equal(await again.remove("api.internal"), false);
  });
});

describe("egress lifecycle on stand-in guests", { skip }, () => {
  const tag = uniq();
  let world: FakeWorld;
  let egress: EgressManager;

  before(async () => {
    world = await createFakeWorld(tag);
    egress = await EgressManager.open({ upstream: world.upstream });
    await egress.registry.put({
      name: "db.internal",
      address: world.internal.db,
      port: world.internal.dbPort,
      protocol: "tcp",
    });
    await egress.registry.put({
      name: "api.internal",
      address: world.internal.api,
      port: world.internal.apiPort,
      protocol: "http",
      inject: { header: "Authorization", value: "Bearer lifecycle" },
    });
  });

  after(async () => {
    await egress?.close();
    await world?.close();
    await assertNoEgressLeaks(tag);
  });

  test("a bandwidth cap limits the guest's download rate", async (t) => {
    const sb = await createStandIn(egress, `b${tag}`, randomSlot(), {
      policy: { internet: true, bandwidthKBps: 256 },
    });
    t.after(() => sb.close());
    const r = await probe(sb.guestNs, {
      download: [{ host: world.internet.good, port: world.internal.sourcePort }],
      timeoutMs: 30_000,
    });
    const d = r.download[0]!;
    assert.equal(d.bytes, 2 * 1024 * 1024, d.error);
    const kBps = d.bytes / 1024 / (d.ms / 1000);
    t.diagnostic(`capped download: ${kBps.toFixed(0)} KiB/s (cap 256 kB/s)`);
    assert.ok(kBps < 256 * 1.6, `${kBps} KiB/s is well over the cap`);
    await egress.update(sb.id, { internet: true });
    const fast = (
      await probe(sb.guestNs, { download: [{ host: world.internet.good, port: world.internal.sourcePort }] })
    ).download[0]!;
    assert.ok(fast.ms < d.ms / 2, `uncapped ${fast.ms} ms vs capped ${d.ms} ms`);
  });

  test("100 sandbox networks with policies are created and destroyed; nothing of theirs remains", async () => {
    const n = Number(process.env["FIREBREAK_EGRESS_CYCLES"] ?? 100);
    const base = randomSlot();
    const ids: string[] = [];
    const hostAddrs: string[] = [];
    for (let batch = 0; batch < n; batch += 10) {
      const settled = await Promise.allSettled(
        Array.from({ length: Math.min(10, n - batch) }, (_, i) => {
          const id = `c${tag}${batch + i}`;
          ids.push(id);
          return createStandIn(egress, id, base + batch + i, {
            policy: {
              allow: [{ cidr: "11.2.0.0/24", ports: [443] }],
              allowDomains: ["api.good.test"],
              services: ["db.internal", "api.internal"],
              bandwidthKBps: 10_000,
            },
          });
        }),
      );
      const made = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
      const failed = settled.find((r) => r.status === "rejected");
      if (failed) {
        await Promise.all(made.map((sb) => sb.close()));
        throw failed.reason;
      }
      // Exercise the resolver (an nft set entry) and a service on one of each batch.
      const r = await probe(made[0]!.guestNs, {
        dns: { server: GATEWAY_ADDRESS, names: ["api.good.test", "db.internal"] },
      });
      assert.deepEqual(r.dns["api.good.test"], [world.internet.good]);
      for (const sb of made) hostAddrs.push(sb.net.hostAddress);
      await Promise.all(made.map((sb) => sb.close()));
    }
    assert.deepEqual(egress.attached(), []);
    const ns = (await run("ip", ["netns", "list"])).stdout;
    for (const id of ids) assert.ok(!ns.includes(`fb-${id}`), `namespace of ${id} remains`);
    const links = (await run("ip", ["-o", "link"])).stdout;
    for (const id of ids) assert.ok(!links.includes(`alias fb-${id}`), `veth of ${id} remains`);
    const routes = (await run("ip", ["-4", "route"])).stdout;
    const addrs = (await run("ip", ["-4", "-o", "addr"])).stdout;
    const sockets = (await run("ss", ["-Hlnut"])).stdout;
    for (const a of hostAddrs) {
      assert.ok(!addrs.includes(` ${a}/`), `address ${a} remains`);
      assert.ok(!routes.includes(`${a} `), `route of ${a} remains`);
      assert.ok(!sockets.includes(`${a}:`), `a resolver or proxy socket on ${a} remains`);
    }
  });
});
