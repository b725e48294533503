// Egress policy, hard walls and private services on stand-in guests
// (guestLink "veth-for-tests": a namespace plays the VM). Needs root. Every
// host is fake: the "world" namespace made here (fake internet with a DNS
// zone, internal API, database-like service, forbidden service).
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { after, before, describe, test } from "node:test";
import { EgressError, EgressManager } from "../src/egress/index.ts";
import {
  createFakeWorld,
  createStandIn,
  type FakeWorld,
  probe,
  type StandIn,
} from "../src/egress/testing/fake-world.ts";
import { GATEWAY_ADDRESS } from "../src/network/guest-addressing.ts";
import { NFT_COUNTERS } from "../src/network/nft-ruleset.ts";
import { isRoot, nftCounter, randomSlot, uniq } from "../src/network/testing/harness.ts";
import { assertNoEgressLeaks } from "./egress-leaks.ts";

const skip = isRoot ? false : "needs root (creates network namespaces)";
const DNS = GATEWAY_ADDRESS; // the guest's resolver: its gateway (any address works: port 53 is DNATed)
const connected = (r: string | undefined) => r?.startsWith("connected") ?? false;

describe("egress policy on a stand-in guest", { skip }, () => {
  const tag = uniq();
  let world: FakeWorld;
  let egress: EgressManager;
  const sandboxes: StandIn[] = [];
  const servers: Server[] = [];
  let slot = randomSlot();
  const made = () => `e${tag}${sandboxes.length}`;
  const standIn = async (policy: unknown, tenant?: string) => {
    const sb = await createStandIn(egress, made(), slot++, { policy, ...(tenant ? { tenant } : {}) });
    sandboxes.push(sb);
    return sb;
  };

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
      tenants: ["acme"],
      inject: { header: "Authorization", value: `Bearer s3cret-${tag}` },
    });
  });

  after(async () => {
    for (const s of servers) s.close();
    for (const sb of sandboxes) await sb.close();
    await egress?.close();
    await world?.close();
    await assertNoEgressLeaks(tag);
  });

  test("default deny: nothing is reachable and the resolver answers no name", async () => {
    const sb = await standIn(undefined);
    const r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["api.good.test"] },
      connect: [
        { host: world.internet.good, port: 443 },
        { host: world.internal.db, port: world.internal.dbPort },
      ],
    });
    assert.equal(r.dns["api.good.test"], "ENOTFOUND");
    assert.deepEqual(r.connect.map(connected), [false, false], r.connect.join(", "));
  });

  test("an admin's CIDR/port rule opens exactly that private port; the forbidden service stays refused; a tenant cannot make it", async () => {
    const rule = { cidr: `${world.internal.db}/32`, ports: [world.internal.dbPort], protocol: "tcp" };
    assert.throws(
      () => egress.validate({ allow: [rule] }),
      (e: unknown) =>
        e instanceof EgressError &&
        e.code === "EGRESS_CIDR_RESERVED" &&
        /allow\.0\.cidr .* overlaps 10\.0\.0\.0\/8 \(private network, RFC 1918\).*an admin can grant/.test(
          e.message,
        ),
    );
    const sb = await standIn({ grantedBy: "admin", allow: [rule] });
    const r = await probe(sb.guestNs, {
      connect: [
        { host: world.internal.db, port: world.internal.dbPort },
        { host: world.internal.forbidden, port: world.internal.forbiddenPort },
        { host: world.internal.api, port: world.internal.apiPort },
      ],
    });
    assert.ok(connected(r.connect[0]), r.connect[0]);
    assert.deepEqual(r.connect.slice(1).map(connected), [false, false], r.connect.join(", "));
  });

  test("domain rules: api.good.test and *.sub.example.test resolve and connect, api.bad.test does not", async () => {
    const sb = await standIn({ allowDomains: ["api.good.test", "*.sub.example.test"] });
    const r = await probe(sb.guestNs, {
      dns: {
        server: DNS,
        names: ["api.good.test", "api.bad.test", "a.sub.example.test", "sub.example.test"],
      },
    });
    assert.deepEqual(r.dns["api.good.test"], [world.internet.good]);
    assert.deepEqual(r.dns["a.sub.example.test"], [world.internet.sub]);
    assert.equal(r.dns["api.bad.test"], "ENOTFOUND");
    assert.equal(r.dns["sub.example.test"], "ENOTFOUND");
    const c = await probe(sb.guestNs, {
      connect: [
        { host: world.internet.good, port: 443 },
        { host: world.internet.sub, port: 443 },
        { host: world.internet.bad, port: 443 },
      ],
    });
    assert.deepEqual(c.connect.map(connected), [true, true, false], c.connect.join(", "));
    // The upstream never saw the refused name.
    assert.ok(!world.log.some((l) => l.includes("api.bad.test")), world.log.join("\n"));
  });

  test("resolved addresses are reachable only while their TTL lasts", async () => {
    const sb = await standIn({ allowDomains: ["short.good.test"] });
    const r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["short.good.test"] },
      connect: [{ host: world.internet.good, port: 443 }],
    });
    assert.deepEqual(r.dns["short.good.test"], [world.internet.good]);
    assert.ok(connected(r.connect[0]), r.connect[0]);
    await new Promise((res) => setTimeout(res, 3_200)); // TTL 2 s
    const later = await probe(sb.guestNs, { connect: [{ host: world.internet.good, port: 443 }] });
    assert.ok(!connected(later.connect[0]), later.connect[0]);
  });

  test("a policy change on a running sandbox takes effect within 1 s, both ways", async () => {
    const sb = await standIn({ allowDomains: ["api.good.test"] });
    let r = await probe(sb.guestNs, { dns: { server: DNS, names: ["api.bad.test"] } });
    assert.equal(r.dns["api.bad.test"], "ENOTFOUND");
    const t0 = performance.now();
    await egress.update(sb.id, { allowDomains: ["api.good.test", "api.bad.test"] });
    const applyMs = performance.now() - t0;
    r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["api.bad.test"] },
      connect: [{ host: world.internet.bad, port: 443 }],
    });
    assert.deepEqual(r.dns["api.bad.test"], [world.internet.bad]);
    assert.ok(connected(r.connect[0]), r.connect[0]);
    assert.ok(applyMs < 1_000, `update took ${applyMs} ms`);
    // Revoke: the resolved address leaves the set with the name.
    const t1 = performance.now();
    await egress.update(sb.id, { allowDomains: ["api.good.test"] });
    const revokeMs = performance.now() - t1;
    r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["api.bad.test"] },
      connect: [{ host: world.internet.bad, port: 443 }],
    });
    assert.equal(r.dns["api.bad.test"], "ENOTFOUND");
    assert.ok(!connected(r.connect[0]), r.connect[0]);
    assert.ok(revokeMs < 1_000, `revoke took ${revokeMs} ms`);
  });

  test("internet on reaches the (fake) internet, not private ranges; off again cuts it", async () => {
    const sb = await standIn({ internet: true });
    let r = await probe(sb.guestNs, {
      connect: [
        { host: world.internet.good, port: 443 },
        { host: world.internal.db, port: world.internal.dbPort },
      ],
    });
    assert.ok(connected(r.connect[0]), r.connect[0]);
    // The peer sees the sandbox's namespace address (SNAT), never the guest address.
    assert.match(r.connect[0]!, new RegExp(`from ${sb.net.sandboxAddress.replace(/\./g, "\\.")}`));
    assert.ok(!connected(r.connect[1]), r.connect[1]);
    await egress.update(sb.id, { internet: false });
    r = await probe(sb.guestNs, { connect: [{ host: world.internet.good, port: 443 }] });
    assert.ok(!connected(r.connect[0]), r.connect[0]);
  });

  test("internet on resolves every name to its public addresses; private and walled answers stay empty", async () => {
    const sb = await standIn({ internet: true });
    const r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["api.bad.test", "a.sub.example.test", "db.good.test", "host.good.test"] },
    });
    assert.deepEqual(r.dns["api.bad.test"], [world.internet.bad]);
    assert.deepEqual(r.dns["a.sub.example.test"], [world.internet.sub]);
    // A tenant's internet is public space only: names that point inside get no address.
    assert.equal(r.dns["db.good.test"], "ENODATA");
    assert.equal(r.dns["host.good.test"], "ENODATA");
    const c = await probe(sb.guestNs, { connect: [{ host: world.internet.bad, port: 443 }] });
    assert.ok(connected(c.connect[0]), c.connect[0]);
    // Back to no internet: names are refused again, before the upstream is asked.
    await egress.update(sb.id, { internet: false });
    const off = await probe(sb.guestNs, { dns: { server: DNS, names: ["api.bad.test"] } });
    assert.equal(off.dns["api.bad.test"], "ENOTFOUND");
  });

  test("hard walls: an admin's allow 0.0.0.0/0 and internet on still cannot reach the host, other sandboxes or metadata", async () => {
    const other = await standIn(undefined);
    const sb = await standIn({
      grantedBy: "admin",
      internet: true,
      allow: [{ cidr: "0.0.0.0/0" }],
      allowDomains: ["host.good.test", "loop.good.test"],
    });
    // Stand-ins for host services: the "control plane" on a host interface
    // address, and a service on the sandbox's own host-side veth end.
    const hostSvc = (host: string) =>
      new Promise<number>((resolve) => {
        const s = createServer((c) => {
          c.on("data", () => c.write("host service"));
          c.on("error", () => {});
        });
        servers.push(s);
        s.listen(0, host, () => resolve((s.address() as { port: number }).port));
      });
    const cpPort = await hostSvc(world.hostSide);
    const vethPort = await hostSvc(sb.net.hostAddress);
    const wallBefore = await nftCounter(sb.net.netnsName, NFT_COUNTERS.wallDenied);
    const r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["host.good.test", "loop.good.test"] },
      connect: [
        { host: world.hostSide, port: cpPort }, // control plane port on a host address
        { host: sb.net.hostAddress, port: vethPort }, // host end of its own veth
        { host: sb.net.hostAddress, port: 53 }, // port 53 anywhere goes to its own resolver (DNAT), which speaks only DNS
        { host: other.net.sandboxAddress, port: 49983 }, // another sandbox
        { host: other.net.hostAddress, port: 53 }, // another sandbox's resolver: its own resolver answers instead
        { host: "169.254.169.254", port: 80 }, // cloud metadata
        { host: "100.100.100.200", port: 80 }, // metadata (Alibaba)
        { host: "169.254.16.1", port: 5432 }, // a service address with no binding
        { host: world.internet.good, port: 443 }, // control: the internet is open
      ],
    });
    // A resolver answer pointing at a wall is dropped even under an admin's 0.0.0.0/0: no address left, NODATA.
    assert.equal(r.dns["host.good.test"], "ENODATA");
    assert.equal(r.dns["loop.good.test"], "ENODATA");
    assert.deepEqual(
      r.connect.map(connected),
      [false, false, false, false, false, false, false, false, true],
      r.connect.join("\n"),
    );
    // Every non-DNS attempt above was stopped by a wall (not by a missing route).
    assert.ok((await nftCounter(sb.net.netnsName, NFT_COUNTERS.wallDenied)) >= wallBefore + 6);
    // Control: the same host services answer from the root namespace.
    const { probeHere } = await import("../src/network/testing/harness.ts");
    assert.equal(await probeHere({ host: world.hostSide, port: cpPort }), "connected host service");
  });

  test("private services: a bound name reaches its service and port, nothing else on that network", async () => {
    const sb = await standIn({ services: ["db.internal"] });
    const r = await probe(sb.guestNs, {
      dns: { server: DNS, names: ["db.internal", "api.internal"] },
    });
    const addr = r.dns["db.internal"];
    assert.ok(Array.isArray(addr) && /^169\.254\.16\.\d+$/.test(addr[0]!), String(addr));
    assert.equal(r.dns["api.internal"], "ENOTFOUND");
    const c = await probe(sb.guestNs, {
      connect: [
        { host: addr[0]!, port: world.internal.dbPort },
        { host: addr[0]!, port: world.internal.apiPort }, // another port of the service address
        { host: world.internal.db, port: world.internal.dbPort }, // the real address directly
        { host: world.internal.forbidden, port: world.internal.forbiddenPort },
        { host: world.internal.api, port: world.internal.apiPort },
      ],
    });
    assert.ok(connected(c.connect[0]), c.connect[0]);
    assert.deepEqual(c.connect.slice(1).map(connected), [false, false, false, false], c.connect.join("\n"));
  });

  test("an HTTP service with inject: the service gets the credential, the guest never has it", async () => {
    assert.throws(
      () => egress.validate({ services: ["api.internal"] }, "other-tenant"),
      (e: unknown) => e instanceof EgressError && e.code === "EGRESS_SERVICE_FORBIDDEN",
    );
    assert.throws(
      () => egress.validate({ services: ["nope.internal"] }),
      (e: unknown) => e instanceof EgressError && e.code === "EGRESS_SERVICE_UNKNOWN",
    );
    const sb = await standIn({ services: ["api.internal"] }, "acme");
    const r = await probe(sb.guestNs, { dns: { server: DNS, names: ["api.internal"] } });
    const addr = (r.dns["api.internal"] as string[])[0]!;
    const h = await probe(sb.guestNs, {
      http: [
        { url: `http://${addr}:${world.internal.apiPort}/v1/items?q=1` },
        {
          url: `http://${addr}:${world.internal.apiPort}/spoof`,
          headers: { authorization: "Bearer guest-made" },
        },
      ],
    });
    for (const [i, res] of h.http.entries()) {
      assert.match(res, /^200 /, res);
      const body = JSON.parse(res.slice(4)) as { url: string; headers: Record<string, string> };
      assert.equal(body.headers["authorization"], `Bearer s3cret-${tag}`);
      assert.equal(body.url, i === 0 ? "/v1/items?q=1" : "/spoof");
    }
  });

  test("traffic is counted per destination class", async () => {
    const sb = await standIn({ internet: true, services: ["db.internal"] });
    const r = await probe(sb.guestNs, { dns: { server: DNS, names: ["db.internal"] } });
    await probe(sb.guestNs, {
      connect: [
        { host: world.internet.good, port: 443 },
        { host: (r.dns["db.internal"] as string[])[0]!, port: world.internal.dbPort },
      ],
    });
    const t = await egress.traffic(sb.id);
    assert.ok(t.tx.internet.bytes > 0 && t.rx.internet.bytes > 0, JSON.stringify(t.tx));
    assert.ok(t.tx.service.bytes > 0 && t.rx.service.bytes > 0, JSON.stringify(t.tx));
    assert.ok(t.tx.dns.packets > 0 && t.rx.dns.packets > 0);
    assert.equal(t.tx.private.bytes, 0);
    assert.ok(t.dns.queries >= 1);
  });
});
