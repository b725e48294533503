// The platform resolver against a hostile upstream and hostile guests, on
// stand-in guests (no VM). The fake world's DNS server plays a resolver that
// serves malformed packets, truncated answers, answers that decode but cannot
// be encoded again, private and special-purpose addresses (directly and
// behind CNAMEs), records for names nobody asked about, and floods. Needs root.
// Any unhandled rejection or uncaught exception fails the test that was running.
import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";
import { EgressManager } from "../src/egress/index.ts";
import {
  createFakeWorld,
  createStandIn,
  dnsAllowed,
  type FakeWorld,
  probe,
  type StandIn,
} from "../src/egress/testing/fake-world.ts";
import { GATEWAY_ADDRESS } from "../src/network/guest-addressing.ts";
import { isRoot, randomSlot, uniq } from "../src/network/testing/harness.ts";
import { assertNoEgressLeaks } from "./egress-leaks.ts";

const skip = isRoot ? false : "needs root (creates network namespaces)";
const DNS = GATEWAY_ADDRESS;
const connected = (r: string | undefined) => r?.startsWith("connected") ?? false;
type Raw = { rcode: string; tc: boolean; answers: { type: string; name: string; data: unknown }[] } | string;
const rcode = (r: Raw | undefined) => (typeof r === "string" ? r : r?.rcode);
const addrs = (r: Raw | undefined) =>
  typeof r === "string" || !r ? [] : r.answers.filter((a) => a.type === "A").map((a) => String(a.data));

const escaped: unknown[] = [];
const onEscape = (e: unknown) => escaped.push(e);
beforeEach(() => {
  escaped.length = 0;
  process.on("unhandledRejection", onEscape);
  process.on("uncaughtException", onEscape);
});
afterEach(() => {
  process.off("unhandledRejection", onEscape);
  process.off("uncaughtException", onEscape);
  assert.deepEqual(escaped, [], "an unhandled rejection or uncaught exception escaped");
});

describe("the resolver against a hostile upstream and hostile guests", { skip }, () => {
  const tag = uniq();
  let world: FakeWorld;
  let egress: EgressManager;
  const sandboxes: StandIn[] = [];
  let slot = randomSlot();
  const standIn = async (policy: unknown) => {
    const sb = await createStandIn(egress, `h${tag}${sandboxes.length}`, slot++, { policy });
    sandboxes.push(sb);
    return sb;
  };
  /** Public addresses of the fake internet used by the "big" (truncated) answer. */
  const bigAddrs = (w: FakeWorld) =>
    Array.from({ length: 40 }, (_, i) => w.internet.good.replace(/\.\d+$/, `.${100 + i}`));

  before(async () => {
    world = await createFakeWorld(tag, {
      zone: (w) => ({
        "private.good.test": { a: [w.internal.db], ttl: 30 },
        "mixed.good.test": {
          a: [w.internet.good, w.internal.api, "169.254.169.254", "127.0.0.1", "100.64.1.1", "192.0.2.1"],
          ttl: 30,
        },
        "cname.good.test": { cname: "inside.corp.test", ttl: 30 },
        "inside.corp.test": { a: [w.internal.db, "168.63.129.16"], ttl: 30 },
        "cname-ok.good.test": { cname: "api.good.test", ttl: 30 },
        "host.good.test": { a: [w.hostSide], ttl: 30 },
        "garbage.good.test": { a: [w.internet.good], ttl: 30, behaviour: "garbage" },
        "opt.good.test": { a: [w.internet.good], txt: ["hello"], ttl: 30, behaviour: "opt-in-answer" },
        "shorta.good.test": { ttl: 30, behaviour: "short-a" },
        "wrongid.good.test": { a: [w.internet.good], ttl: 30, behaviour: "wrong-id" },
        "silent.good.test": { a: [w.internet.good], ttl: 30, behaviour: "silent" },
        "big.good.test": { a: bigAddrs(w), ttl: 30, behaviour: "truncated" },
        "badtcp.good.test": { a: [w.internet.good], ttl: 30, behaviour: "bad-tcp" },
        "unrelated.good.test": { a: [w.internet.good], ttl: 30, behaviour: "unrelated" },
        "flood.good.test": { a: [w.internet.sub], ttl: 30, behaviour: "flood" },
      }),
    });
    egress = await EgressManager.open({
      upstream: world.upstream,
      // Small enough that a flood from one process hits it on any machine.
      dnsLimits: { queriesPerSecond: 50, burst: 100 },
    });
  });

  after(async () => {
    for (const sb of sandboxes) await sb.close();
    await egress?.close();
    await world?.close();
    await assertNoEgressLeaks(tag);
  });

  test("private and special-purpose answers never reach a tenant's guest or the nft set (directly, mixed, behind CNAMEs, or unasked-for)", async () => {
    const sb = await standIn({ allowDomains: ["*.good.test"] });
    const names = [
      "private.good.test",
      "mixed.good.test",
      "cname.good.test",
      "cname-ok.good.test",
      "host.good.test",
      "unrelated.good.test",
      "shorta.good.test",
    ];
    const r = await probe(sb.guestNs, {
      dnsRaw: { server: DNS, queries: names.map((name) => ({ name, type: "A" })) },
      timeoutMs: 3_000,
    });
    const by = Object.fromEntries(names.map((n, i) => [n, r.dnsRaw[i]]));
    // Nothing usable left: NOERROR with no address (NODATA), as an upstream with no address would answer.
    for (const n of ["private.good.test", "cname.good.test", "host.good.test", "shorta.good.test"]) {
      assert.equal(rcode(by[n]), "NOERROR", `${n}: ${JSON.stringify(by[n])}`);
      assert.deepEqual(addrs(by[n]), [], n);
    }
    assert.deepEqual(addrs(by["mixed.good.test"]), [world.internet.good]);
    assert.deepEqual(addrs(by["cname-ok.good.test"]), [world.internet.good]);
    assert.deepEqual(addrs(by["unrelated.good.test"]), [world.internet.good]);
    const all = JSON.stringify(r.dnsRaw);
    for (const bad of [world.internal.db, world.internal.api, "169.254.169.254", "127.0.0.1", world.hostSide])
      assert.ok(!all.includes(`"${bad}"`), `${bad} reached the guest: ${all}`);
    assert.ok(!all.includes("elsewhere.test"), "records for names nobody asked about were passed on");
    // The set holds exactly the public answer.
    assert.deepEqual(await dnsAllowed(sb.net.netnsName), [world.internet.good]);
    const t = await egress.traffic(sb.id);
    assert.ok(t.dns.filtered >= 10, JSON.stringify(t.dns));
    const c = await probe(sb.guestNs, {
      connect: [
        { host: world.internal.db, port: world.internal.dbPort },
        { host: world.internet.good, port: 443 },
      ],
    });
    assert.deepEqual(c.connect.map(connected), [false, true], c.connect.join("\n"));
  });

  test("an admin's rule lets a private answer through where it covers the address, without widening it to other ports", async () => {
    const sb = await standIn({
      grantedBy: "admin",
      allowDomains: ["*.good.test"],
      allow: [{ cidr: `${world.internal.db}/32`, ports: [world.internal.dbPort], protocol: "tcp" }],
    });
    const r = await probe(sb.guestNs, {
      dnsRaw: {
        server: DNS,
        queries: ["private.good.test", "mixed.good.test", "cname.good.test"].map((name) => ({
          name,
          type: "A",
        })),
      },
      timeoutMs: 3_000,
    });
    assert.deepEqual(addrs(r.dnsRaw[0]), [world.internal.db]);
    assert.deepEqual(
      addrs(r.dnsRaw[1]),
      [world.internet.good],
      "10.77/…api and the special ranges are not covered",
    );
    // Behind the CNAME: the covered db address stays, the WireServer (a wall) goes.
    assert.deepEqual(addrs(r.dnsRaw[2]), [world.internal.db]);
    assert.ok(
      !(await dnsAllowed(sb.net.netnsName)).includes(world.internal.db),
      "private answers are not in the set",
    );
    const c = await probe(sb.guestNs, {
      connect: [
        { host: world.internal.db, port: world.internal.dbPort },
        { host: world.internal.db, port: world.internal.sourcePort },
      ],
    });
    assert.deepEqual(c.connect.map(connected), [true, false], c.connect.join("\n"));
  });

  test("malformed, mismatched, silent and unencodable upstream answers fail only their own query; another sandbox keeps resolving", async () => {
    const a = await standIn({ allowDomains: ["*.good.test"] });
    const b = await standIn({ allowDomains: ["api.good.test"] });
    const hostile = [
      { name: "garbage.good.test", type: "A" },
      { name: "opt.good.test", type: "A" },
      { name: "opt.good.test", type: "TXT" },
      { name: "wrongid.good.test", type: "A" },
      { name: "silent.good.test", type: "A" },
      { name: "badtcp.good.test", type: "A" },
      { name: "opt.good.test", type: "TXT", tcp: true },
    ];
    const [ra, rb] = await Promise.all([
      probe(a.guestNs, { dnsRaw: { server: DNS, queries: hostile }, timeoutMs: 4_000 }),
      probe(b.guestNs, { dns: { server: DNS, names: ["api.good.test"] }, timeoutMs: 4_000 }),
    ]);
    assert.deepEqual(rb.dns["api.good.test"], [world.internet.good], "the other sandbox is answered");
    assert.equal(rcode(ra.dnsRaw[0]), "SERVFAIL", JSON.stringify(ra.dnsRaw[0]));
    // The OPT record in the answer section is dropped; the rest of the answer is fine.
    assert.deepEqual(addrs(ra.dnsRaw[1]), [world.internet.good]);
    for (const i of [2, 6]) {
      const txt = ra.dnsRaw[i];
      assert.equal(rcode(txt), "NOERROR", JSON.stringify(txt));
      assert.deepEqual(typeof txt === "string" ? txt : txt?.answers.map((x) => [x.type, x.data]), [
        ["TXT", ["hello"]],
      ]);
    }
    for (const i of [3, 4, 5]) assert.equal(rcode(ra.dnsRaw[i]), "SERVFAIL", JSON.stringify(ra.dnsRaw[i]));
    // Odd question types for allowed names are not asked upstream (NODATA).
    const before = world.log.length;
    const odd = await probe(a.guestNs, {
      dnsRaw: {
        server: DNS,
        queries: [
          { name: "api.good.test", type: "ANY" },
          { name: "api.good.test", type: "HTTPS" },
          { name: "api.good.test", type: "AXFR" },
        ],
      },
    });
    for (const x of odd.dnsRaw) assert.equal(rcode(x), "NOERROR", JSON.stringify(x));
    assert.ok(
      !world.log.slice(before).some((l) => /query (ANY|HTTPS|AXFR|UNKNOWN)/.test(l)),
      world.log.join("\n"),
    );
    // The resolver still answers this guest afterwards.
    const again = await probe(a.guestNs, { dns: { server: DNS, names: ["api.good.test"] } });
    assert.deepEqual(again.dns["api.good.test"], [world.internet.good]);
  });

  test("a truncated upstream answer: the guest gets TC over UDP, then every address over TCP, all admitted", async () => {
    const sb = await standIn({ allowDomains: ["big.good.test"] });
    const r = await probe(sb.guestNs, {
      dnsRaw: {
        server: DNS,
        queries: [
          { name: "big.good.test", type: "A" },
          { name: "big.good.test", type: "A", tcp: true },
        ],
      },
      dns: { server: DNS, names: ["big.good.test"] },
      timeoutMs: 3_000,
    });
    const [udp, tcp] = r.dnsRaw;
    assert.ok(typeof udp !== "string" && udp?.tc, JSON.stringify(udp));
    assert.deepEqual(addrs(tcp).sort(), bigAddrs(world).sort());
    assert.deepEqual(
      (r.dns["big.good.test"] as string[]).sort(),
      bigAddrs(world).sort(),
      "a stub resolver gets there by itself",
    );
    assert.deepEqual((await dnsAllowed(sb.net.netnsName)).sort(), bigAddrs(world).sort());
  });

  test("the resolver's set is bounded: beyond the limit, new addresses are left out of answers (counted)", async () => {
    const small = await EgressManager.open({ upstream: world.upstream, maxResolvedAddresses: 10 });
    const sb = await createStandIn(small, `h${tag}cap`, slot++, {
      policy: { allowDomains: ["*.good.test"] },
    });
    try {
      const r = await probe(sb.guestNs, {
        dnsRaw: {
          server: DNS,
          queries: [
            { name: "big.good.test", type: "A", tcp: true },
            { name: "api.good.test", type: "A" },
          ],
        },
      });
      assert.equal(addrs(r.dnsRaw[0]).length, 10, JSON.stringify(r.dnsRaw[0]));
      assert.equal(rcode(r.dnsRaw[1]), "NOERROR");
      assert.deepEqual(addrs(r.dnsRaw[1]), [], "no room left for another address: NODATA");
      assert.equal((await dnsAllowed(sb.net.netnsName)).length, 10);
      const t = await small.traffic(sb.id);
      assert.equal(t.dns.limited, 31, JSON.stringify(t.dns));
    } finally {
      await sb.close();
      await small.close();
    }
  });

  test("a guest's flood is rate limited and counted, and a flood of upstream packets is ignored; other sandboxes keep resolving", async () => {
    const flooder = await standIn({ allowDomains: ["*.good.test"] });
    const calm = await standIn({ allowDomains: ["api.good.test", "flood.good.test"] });
    const [f, c] = await Promise.all([
      probe(flooder.guestNs, {
        dnsFlood: { server: DNS, name: "api.good.test", count: 5_000 },
        timeoutMs: 2_000,
      }),
      probe(calm.guestNs, {
        dns: { server: DNS, names: ["api.good.test", "flood.good.test"] },
        timeoutMs: 3_000,
      }),
    ]);
    assert.deepEqual(
      c.dns["api.good.test"],
      [world.internet.good],
      "the calm sandbox is answered during the flood",
    );
    assert.deepEqual(
      c.dns["flood.good.test"],
      [world.internet.sub],
      "the real answer is found among 200 spoofed ones",
    );
    assert.ok(f.dnsFlood!.answered < f.dnsFlood!.sent, JSON.stringify(f.dnsFlood));
    const t = await egress.traffic(flooder.id);
    assert.ok(t.dns.limited > 0, JSON.stringify(t.dns));
    assert.ok(t.dns.limited + t.dns.queries <= 5_000, JSON.stringify(t.dns));
    assert.equal((await egress.traffic(calm.id)).dns.limited, 0);
  });

  test("a sandbox killed while its queries wait on the upstream: nothing escapes, the listener is gone", async () => {
    const sb = await standIn({ allowDomains: ["*.good.test"] });
    const pending = probe(sb.guestNs, {
      dnsRaw: { server: DNS, queries: [{ name: "silent.good.test", type: "A" }] },
      timeoutMs: 3_000,
    });
    await new Promise((r) => setTimeout(r, 300));
    await sb.close();
    sandboxes.splice(sandboxes.indexOf(sb), 1);
    const r = await pending.catch((e: Error) => ({ dnsRaw: [e.message] }));
    assert.notEqual(rcode(r.dnsRaw[0] as Raw), "NOERROR");
    await new Promise((res) => setTimeout(res, 2_500)); // past the upstream timeout of the query in flight
  });
});
