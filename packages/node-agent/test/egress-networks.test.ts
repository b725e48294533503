// Sandbox networks: sandboxes of one tenant on one named network reach each
// other by name (`<id>.<network>.fb`); other networks and other tenants
// cannot. Stand-in guests (no VM); needs root.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { EgressManager } from "../src/egress/index.ts";
import {
  createFakeWorld,
  createStandIn,
  type FakeWorld,
  probe,
  type StandIn,
} from "../src/egress/testing/fake-world.ts";
import { GATEWAY_ADDRESS, GUEST_ADDRESS } from "../src/network/guest-addressing.ts";
import { isRoot, randomSlot, startEchoServer, stop, uniq } from "../src/network/testing/harness.ts";
import { assertNoEgressLeaks } from "./egress-leaks.ts";

const skip = isRoot ? false : "needs root (creates network namespaces)";
const connected = (r: string | undefined) => r?.startsWith("connected") ?? false;

describe("sandbox networks on stand-in guests", { skip }, () => {
  const tag = uniq();
  let world: FakeWorld;
  let egress: EgressManager;
  const made: StandIn[] = [];
  const servers: ChildProcess[] = [];
  let slot = randomSlot();
  const standIn = async (name: string, networks: string[], tenant: string) => {
    const sb = await createStandIn(egress, `n${tag}${name}`, slot++, { policy: { networks }, tenant });
    made.push(sb);
    servers.push(await startEchoServer(sb.guestNs, GUEST_ADDRESS, 8000, name));
    servers.push(await startEchoServer(sb.guestNs, GUEST_ADDRESS, 49983, `${name}-agent`));
    return sb;
  };

  before(async () => {
    world = await createFakeWorld(tag);
    egress = await EgressManager.open({ upstream: world.upstream });
  });

  after(async () => {
    for (const c of servers) stop(c);
    for (const sb of made) await sb.close();
    await egress?.close();
    await world?.close();
    await assertNoEgressLeaks(tag);
  });

  test("two sandboxes on one network talk by name; another network and another tenant cannot", async () => {
    const a = await standIn("a", ["team"], "acme");
    const b = await standIn("b", ["team"], "acme");
    const c = await standIn("c", ["other"], "acme");
    const d = await standIn("d", ["team"], "globex");
    const names = [`${a.id}.team.fb`, `${b.id}.team.fb`];
    const fromA = await probe(a.guestNs, { dns: { server: GATEWAY_ADDRESS, names } });
    const bAddr = fromA.dns[`${b.id}.team.fb`];
    assert.ok(Array.isArray(bAddr) && /^169\.254\.32\.\d+$/.test(bAddr[0]!), String(bAddr));
    assert.equal(fromA.dns[`${a.id}.team.fb`], "ENOTFOUND", "a sandbox is not its own peer");
    const ab = await probe(a.guestNs, {
      connect: [
        { host: bAddr[0]!, port: 8000 },
        { host: bAddr[0]!, port: 49983 }, // the peer's guest agent belongs to the node
        { host: b.net.sandboxAddress, port: 8000 }, // the peer's real address: a wall
      ],
    });
    assert.equal(ab.connect[0], `connected b from ${GATEWAY_ADDRESS}: ping`);
    assert.deepEqual(ab.connect.slice(1).map(connected), [false, false], ab.connect.join("\n"));
    const fromB = await probe(b.guestNs, { dns: { server: GATEWAY_ADDRESS, names: [`${a.id}.team.fb`] } });
    assert.ok(Array.isArray(fromB.dns[`${a.id}.team.fb`]), JSON.stringify(fromB.dns));
    const aAddr = (fromB.dns[`${a.id}.team.fb`] as string[])[0]!;
    assert.equal(
      (await probe(b.guestNs, { connect: [{ host: aAddr, port: 8000 }] })).connect[0],
      `connected a from ${GATEWAY_ADDRESS}: ping`,
    );

    for (const outsider of [c, d]) {
      const r = await probe(outsider.guestNs, {
        dns: { server: GATEWAY_ADDRESS, names },
        connect: [
          { host: a.net.sandboxAddress, port: 8000 },
          { host: bAddr[0]!, port: 8000 },
        ],
      });
      assert.deepEqual(Object.values(r.dns), ["ENOTFOUND", "ENOTFOUND"], outsider.id);
      assert.deepEqual(r.connect.map(connected), [false, false], r.connect.join("\n"));
    }

    const t = await egress.traffic(a.id);
    assert.ok(t.tx.sandbox.bytes > 0 && t.rx.sandbox.bytes > 0, JSON.stringify(t.tx.sandbox));
    assert.ok((await egress.traffic(b.id)).rx.sandbox.bytes > 0);

    // b leaves the network: a loses the name and the route at once.
    await egress.update(b.id, { networks: [] });
    const gone = await probe(a.guestNs, {
      dns: { server: GATEWAY_ADDRESS, names: [`${b.id}.team.fb`] },
      connect: [{ host: bAddr[0]!, port: 8000 }],
    });
    assert.equal(gone.dns[`${b.id}.team.fb`], "ENOTFOUND");
    assert.ok(!connected(gone.connect[0]), gone.connect[0]);
  });
});
