// Real namespaces, veths and nftables; needs root. A veth stands in for the tap
// (guestLink "veth-for-tests"), its far end in a "guest" namespace that plays
// the VM. Traffic goes only to namespaces created here.
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { after, before, describe, test } from "node:test";
import { run } from "../host/exec.ts";
import { NetworkError } from "./errors.ts";
import { GATEWAY_ADDRESS, GUEST_ADDRESS } from "./guest-addressing.ts";
import { NFT_COUNTERS } from "./nft-ruleset.ts";
import {
  createSandboxNetwork,
  destroySandboxNetwork,
  listNetworkResources,
  type SandboxNetwork,
} from "./sandbox-network.ts";
import {
  addNetns,
  delNetns,
  holdOwner,
  isRoot,
  nftCounter,
  probeFrom,
  probeHere,
  randomSlot,
  startEchoServer,
  stop,
  uniq,
} from "./testing/harness.ts";

const skip = isRoot ? false : "needs root (creates network namespaces)";
const PORT = 49983;

function gone(net: { netnsName: string; hostVeth: string }): boolean {
  return !existsSync(`/run/netns/${net.netnsName}`) && !existsSync(`/sys/class/net/${net.hostVeth}`);
}

describe("sandbox network with a stand-in guest", { skip }, () => {
  const id = `t${uniq()}`;
  const guestNs = `fbt-g${id}`;
  const forbiddenNs = `fbt-x${id}`;
  const children: ChildProcess[] = [];
  let hostServer: Server | undefined;
  let net: SandboxNetwork;
  const FORBIDDEN_NS_SIDE = "10.213.0.0";
  const FORBIDDEN_HOST = "10.213.0.1";

  let release = async () => {};

  before(async () => {
    await addNetns(guestNs);
    await addNetns(forbiddenNs);
    const slot = randomSlot();
    release = await holdOwner(id, slot);
    net = await createSandboxNetwork({
      sandboxId: id,
      slot,
      tapUid: 0,
      tapGid: 0,
      guestLink: "veth-for-tests",
      testGuestNetns: guestNs,
    });
    // A "forbidden host" directly attached to the sandbox namespace, so only
    // the firewall (not a missing route) stands between it and the guest.
    const link = `fbtx${id.slice(1)}`;
    await run("ip", [
      "link",
      "add",
      link,
      "netns",
      net.netnsName,
      "type",
      "veth",
      "peer",
      "name",
      "up0",
      "netns",
      forbiddenNs,
    ]);
    await run("ip", ["-n", net.netnsName, "-batch", "-"], {
      input: `addr add ${FORBIDDEN_NS_SIDE}/31 dev ${link}\nlink set ${link} up\n`,
    });
    await run("ip", ["-n", forbiddenNs, "-batch", "-"], {
      input: `addr add ${FORBIDDEN_HOST}/31 dev up0\nlink set up0 up\n`,
    });
    children.push(await startEchoServer(guestNs, GUEST_ADDRESS, PORT, "guest"));
    children.push(await startEchoServer(guestNs, GUEST_ADDRESS, 8080, "guest8080"));
    children.push(await startEchoServer(net.netnsName, "0.0.0.0", 7000, "namespace"));
    children.push(await startEchoServer(forbiddenNs, FORBIDDEN_HOST, 7001, "forbidden"));
    hostServer = createServer((s) => {
      s.on("data", (d) => s.write(`host: ${d}`));
      s.on("error", () => {});
    });
    await new Promise<void>((resolve) => hostServer!.listen(7002, net.hostAddress, resolve));
  });

  after(async () => {
    for (const c of children) stop(c);
    hostServer?.close();
    if (net) await destroySandboxNetwork(net);
    await delNetns(guestNs);
    await delNetns(forbiddenNs);
    await release();
  });

  test("the host reaches guest services at sandboxAddress:port, seen from the gateway", async () => {
    assert.equal(
      await probeHere({ host: net.sandboxAddress, port: PORT }),
      `connected guest from ${GATEWAY_ADDRESS}: ping`,
    );
    assert.equal(
      await probeHere({ host: net.sandboxAddress, port: 8080 }),
      `connected guest8080 from ${GATEWAY_ADDRESS}: ping`,
    );
  });

  test("controls: the namespace itself can reach the forbidden host and the host end", async () => {
    const [forbidden, host] = await probeFrom(net.netnsName, [
      { host: FORBIDDEN_HOST, port: 7001 },
      { host: net.hostAddress, port: 7002 },
    ]);
    assert.equal(forbidden, `connected forbidden from ${FORBIDDEN_NS_SIDE}: ping`);
    assert.equal(host, "connected host: ping");
  });

  test("the guest cannot open connections anywhere (egress deny-all)", async () => {
    const egressBefore = await nftCounter(net.netnsName, NFT_COUNTERS.egressDenied);
    const wallBefore = await nftCounter(net.netnsName, NFT_COUNTERS.wallDenied);
    const inputBefore = await nftCounter(net.netnsName, NFT_COUNTERS.guestToNamespaceDenied);
    const results = await probeFrom(guestNs, [
      { host: net.hostAddress, port: 7002 },
      { host: FORBIDDEN_HOST, port: 7001 },
      { host: net.sandboxAddress, port: 7000 },
      { host: GATEWAY_ADDRESS, port: 7000 },
      { host: FORBIDDEN_NS_SIDE, port: 7000 },
      // TEST-NET-1: not a wall, refused by the default-deny policy before it leaves.
      { host: "192.0.2.1", port: 7 },
    ]);
    for (const r of results) assert.doesNotMatch(r, /^connected/, `guest connected: ${results.join(", ")}`);
    assert.ok((await nftCounter(net.netnsName, NFT_COUNTERS.egressDenied)) > egressBefore);
    // The host end is a hard wall; the forbidden host sits off the uplink (a wall too).
    assert.ok((await nftCounter(net.netnsName, NFT_COUNTERS.wallDenied)) >= wallBefore + 2);
    assert.ok((await nftCounter(net.netnsName, NFT_COUNTERS.guestToNamespaceDenied)) > inputBefore);
  });

  test("packets from a spoofed source address or MAC are dropped", async () => {
    const spoofBefore = await nftCounter(net.netnsName, NFT_COUNTERS.spoofDropped);
    await run("ip", ["-n", guestNs, "addr", "add", "169.254.0.20/32", "dev", "eth0"]);
    const [r1, r2] = await probeFrom(
      guestNs,
      [
        { host: FORBIDDEN_HOST, port: 7001, localAddress: "169.254.0.20" },
        { host: net.hostAddress, port: 7002, localAddress: "169.254.0.20" },
      ],
      300,
    );
    await run("ip", ["-n", guestNs, "addr", "del", "169.254.0.20/32", "dev", "eth0"]);
    assert.equal(r1, "timeout");
    assert.equal(r2, "timeout");
    const spoofAfterIp = await nftCounter(net.netnsName, NFT_COUNTERS.spoofDropped);
    assert.ok(spoofAfterIp > spoofBefore, "spoofed source not counted");

    // A foreign MAC: dropped before the input chain ever sees it.
    const inputBefore = await nftCounter(net.netnsName, NFT_COUNTERS.guestToNamespaceDenied);
    await run("ip", ["-n", guestNs, "link", "set", "eth0", "address", "06:00:00:00:00:99"]);
    try {
      const [r3] = await probeFrom(guestNs, [{ host: GATEWAY_ADDRESS, port: 7000 }], 300);
      assert.equal(r3, "timeout");
    } finally {
      await run("ip", ["-n", guestNs, "link", "set", "eth0", "address", net.guestMac]);
    }
    assert.ok((await nftCounter(net.netnsName, NFT_COUNTERS.spoofDropped)) > spoofAfterIp);
    assert.equal(await nftCounter(net.netnsName, NFT_COUNTERS.guestToNamespaceDenied), inputBefore);
  });

  test("IPv6 is off in the namespace and no link-local address exists", async () => {
    const sysctl = await run("nsenter", [
      `--net=${net.netnsPath}`,
      "sysctl",
      "-n",
      "net.ipv6.conf.eth0.disable_ipv6",
      "net.ipv6.conf.tap0.disable_ipv6",
      "net.ipv4.ip_forward",
    ]);
    assert.deepEqual(sysctl.stdout.trim().split("\n"), ["1", "1", "1"]);
    const inNs = await run("ip", ["-n", net.netnsName, "-6", "-o", "addr", "show"]);
    assert.equal(inNs.stdout.trim(), "");
    const hostSide = await run("ip", ["-6", "-o", "addr", "show", "dev", net.hostVeth]);
    assert.equal(hostSide.stdout.trim(), "");
  });
});

describe("several sandbox networks", { skip }, () => {
  test("two networks at once get different host addresses and both work", async (t) => {
    const ids = [`t${uniq()}`, `t${uniq()}`];
    const base = randomSlot();
    const nets: SandboxNetwork[] = [];
    const children: ChildProcess[] = [];
    const releases: (() => Promise<void>)[] = [];
    t.after(async () => {
      for (const c of children) stop(c);
      for (const n of nets) await destroySandboxNetwork(n);
      for (const id of ids) await delNetns(`fbt-g${id}`);
      for (const r of releases) await r();
    });
    for (const [i, id] of ids.entries()) {
      await addNetns(`fbt-g${id}`);
      releases.push(await holdOwner(id, base + i));
      nets.push(
        await createSandboxNetwork({
          sandboxId: id,
          slot: base + i,
          tapUid: 0,
          tapGid: 0,
          guestLink: "veth-for-tests",
          testGuestNetns: `fbt-g${id}`,
        }),
      );
      children.push(await startEchoServer(`fbt-g${id}`, GUEST_ADDRESS, PORT, `guest-${i}`));
    }
    const [a, b] = nets as [SandboxNetwork, SandboxNetwork];
    assert.notEqual(a.hostAddress, b.hostAddress);
    assert.notEqual(a.sandboxAddress, b.sandboxAddress);
    assert.equal(a.guestAddress, b.guestAddress);
    assert.equal(
      await probeHere({ host: a.sandboxAddress, port: PORT }),
      `connected guest-0 from ${GATEWAY_ADDRESS}: ping`,
    );
    assert.equal(
      await probeHere({ host: b.sandboxAddress, port: PORT }),
      `connected guest-1 from ${GATEWAY_ADDRESS}: ping`,
    );
    // A guest cannot reach its neighbour's address either.
    const [r] = await probeFrom(`fbt-g${ids[0]}`, [{ host: b.sandboxAddress, port: PORT }], 300);
    assert.doesNotMatch(r!, /^connected/);
  });
});

describe("lifecycle", { skip }, () => {
  test("a real tap is created for the given uid/gid; destroy removes everything and is idempotent", async (t) => {
    const id = `t${uniq()}`;
    let net: SandboxNetwork | undefined;
    t.after(async () => {
      if (net) await destroySandboxNetwork(net);
    });
    net = await createSandboxNetwork({ sandboxId: id, slot: randomSlot(), tapUid: 4242, tapGid: 4343 });
    const link = await run("ip", ["-n", net.netnsName, "-d", "link", "show", "tap0"]);
    assert.match(link.stdout, /tun type tap .* user 4242 group 4343/);
    assert.match(link.stdout, /link\/ether 06:00:a9:fe:00:16/);
    const listed = await listNetworkResources();
    assert.ok(listed.namespaces.includes(net.netnsName));
    assert.ok(listed.hostVeths.includes(net.hostVeth));
    assert.equal(listed.hostVethOwners[net.hostVeth], net.netnsName);

    await destroySandboxNetwork(net);
    assert.ok(gone(net), "namespace or veth left behind");
    const after = await listNetworkResources();
    assert.ok(!after.namespaces.includes(net.netnsName));
    assert.ok(!after.hostVeths.includes(net.hostVeth));
    await destroySandboxNetwork(net); // idempotent
    await destroySandboxNetwork({ sandboxId: id, slot: net.slot });
  });

  test("destroy removes the veth even while a process keeps the namespace alive", async (t) => {
    const id = `t${uniq()}`;
    const net = await createSandboxNetwork({ sandboxId: id, slot: randomSlot(), tapUid: 0, tapGid: 0 });
    const holder = await startEchoServer(net.netnsName, "127.0.0.1", 7003, "holder");
    t.after(async () => {
      stop(holder);
      await destroySandboxNetwork(net);
    });
    await destroySandboxNetwork(net);
    assert.ok(gone(net), "namespace name or veth left behind");
  });

  test("destroy without waiting returns at once; the kernel removes the veth shortly after", async (t) => {
    const id = `t${uniq()}`;
    const net = await createSandboxNetwork({ sandboxId: id, slot: randomSlot(), tapUid: 0, tapGid: 0 });
    t.after(() => destroySandboxNetwork(net));
    await destroySandboxNetwork(net, { wait: false });
    assert.ok(!existsSync(net.netnsPath));
    const deadline = Date.now() + 5_000;
    while (existsSync(`/sys/class/net/${net.hostVeth}`) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(gone(net));
  });

  test("the same slot can be reused right after destroy", async (t) => {
    const slot = randomSlot();
    const ids = [`t${uniq()}`, `t${uniq()}`];
    t.after(async () => {
      for (const id of ids) await destroySandboxNetwork({ sandboxId: id, slot });
    });
    const first = await createSandboxNetwork({ sandboxId: ids[0]!, slot, tapUid: 0, tapGid: 0 });
    await destroySandboxNetwork(first);
    const second = await createSandboxNetwork({ sandboxId: ids[1]!, slot, tapUid: 0, tapGid: 0 });
    assert.equal(second.hostAddress, first.hostAddress);
  });

  test("destroy leaves alone a veth that belongs to another sandbox", async (t) => {
    const id = `t${uniq()}`;
    const net = await createSandboxNetwork({ sandboxId: id, slot: randomSlot(), tapUid: 0, tapGid: 0 });
    t.after(() => destroySandboxNetwork(net));
    await destroySandboxNetwork({ sandboxId: `t${uniq()}`, slot: net.slot });
    assert.ok(existsSync(`/sys/class/net/${net.hostVeth}`));
    assert.ok(existsSync(net.netnsPath));
  });

  test("a slot whose veth name exists fails cleanly and removes nothing it did not make", async (t) => {
    const id = `t${uniq()}`;
    const slot = randomSlot();
    t.after(async () => {
      await run("ip", ["link", "del", `fbh-${slot}`], { allowFailure: true });
      await destroySandboxNetwork({ sandboxId: id, slot });
    });
    // Someone else's link holding the slot's name (a veth: no dummy module here).
    await run("ip", ["link", "add", `fbh-${slot}`, "type", "veth", "peer", "name", `fbtd${id}`]);
    await assert.rejects(
      createSandboxNetwork({ sandboxId: id, slot, tapUid: 0, tapGid: 0 }),
      (e: unknown) => e instanceof NetworkError && e.code === "NETWORK_SLOT_IN_USE" && /fbh-/.test(e.message),
    );
    assert.ok(!existsSync(`/run/netns/fb-${id}`));
    assert.ok(existsSync(`/sys/class/net/fbh-${slot}`), "someone else's link was deleted");
  });

  test("an existing namespace of the same sandbox id is reported, not deleted", async (t) => {
    const id = `t${uniq()}`;
    t.after(() => delNetns(`fb-${id}`));
    await addNetns(`fb-${id}`);
    const slot = randomSlot();
    await assert.rejects(
      createSandboxNetwork({ sandboxId: id, slot, tapUid: 0, tapGid: 0 }),
      (e: unknown) => e instanceof NetworkError && e.code === "NETWORK_SANDBOX_EXISTS",
    );
    assert.ok(existsSync(`/run/netns/fb-${id}`));
    assert.ok(!existsSync(`/sys/class/net/fbh-${slot}`));
  });

  test("a failure inside the namespace rolls back the namespace and the veth", async (t) => {
    const id = `t${uniq()}`;
    const slot = randomSlot();
    t.after(() => destroySandboxNetwork({ sandboxId: id, slot }));
    await assert.rejects(
      createSandboxNetwork({
        sandboxId: id,
        slot,
        tapUid: 0,
        tapGid: 0,
        guestLink: "veth-for-tests",
        testGuestNetns: `fbt-missing${id}`,
      }),
      (e: unknown) =>
        e instanceof NetworkError && e.code === "NETWORK_CREATE_FAILED" && /rolled back/.test(e.message),
    );
    assert.ok(gone({ netnsName: `fb-${id}`, hostVeth: `fbh-${slot}` }));
  });

  test("invalid specs are refused before anything is made", async () => {
    for (const spec of [
      { sandboxId: "Bad-Id", slot: 1, tapUid: 0, tapGid: 0 },
      { sandboxId: "a".repeat(21), slot: 1, tapUid: 0, tapGid: 0 },
      { sandboxId: "ok", slot: -1, tapUid: 0, tapGid: 0 },
      { sandboxId: "ok", slot: 32_768, tapUid: 0, tapGid: 0 },
      { sandboxId: "ok", slot: 1, tapUid: -5, tapGid: 0 },
    ]) {
      await assert.rejects(
        createSandboxNetwork(spec),
        (e: unknown) => e instanceof NetworkError && e.code === "NETWORK_INVALID_SPEC",
      );
    }
  });
});
