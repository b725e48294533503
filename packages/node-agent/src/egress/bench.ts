// What networking and egress policy add to a sandbox create, and throughput
// between a sandbox stand-in and a private service, against baselines measured
// in the same process. Stand-in guests (no VM); the fake world namespace is the
// only peer. Needs root.
//
//   node packages/node-agent/src/egress/bench.ts [iterations=30]
import { randomBytes } from "node:crypto";
import { run } from "../host/exec.ts";
import { createSandboxNetwork, destroySandboxNetwork } from "../network/index.ts";
import { EgressManager } from "./egress-manager.ts";
import { createFakeWorld, createStandIn, probe } from "./testing/fake-world.ts";

const iterations = Number(process.argv[2] ?? 30);
const tag = randomBytes(3).toString("hex");
let slot = 28_000 + Math.floor(Math.random() * 3_000);

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return { p50: q(0.5), p95: q(0.95) };
}
function report(name: string, ms: number[]) {
  const { p50, p95 } = stats(ms);
  console.log(
    `${name.padEnd(44)} p50 ${p50.toFixed(1).padStart(7)} ms  p95 ${p95.toFixed(1).padStart(7)} ms  (n=${ms.length})`,
  );
}
async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

const world = await createFakeWorld(`b${tag}`);
const egress = await EgressManager.open({ upstream: world.upstream });
await egress.registry.put({
  name: "db.internal",
  address: world.internal.db,
  port: world.internal.dbPort,
  protocol: "tcp",
});
await egress.registry.put({
  name: "bulk.internal",
  address: world.internal.db,
  port: world.internal.sourcePort,
  protocol: "tcp",
});
const policy = {
  allow: [{ cidr: "11.2.0.0/24", ports: [443] }],
  allowDomains: ["api.good.test", "*.example.test"],
  services: ["db.internal", "bulk.internal"],
};
try {
  const bare: number[] = [];
  const withPolicy: number[] = [];
  const attachOnly: number[] = [];
  const update: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const id = `bb${tag}${i}`;
    let net1: Awaited<ReturnType<typeof createSandboxNetwork>> | undefined;
    bare.push(
      await time(async () => {
        net1 = await createSandboxNetwork({ sandboxId: id, slot: slot++, tapUid: 0, tapGid: 0 });
      }),
    );
    await destroySandboxNetwork(net1!, { wait: false });
    const id2 = `bp${tag}${i}`;
    let net2: Awaited<ReturnType<typeof createSandboxNetwork>> | undefined;
    withPolicy.push(
      await time(async () => {
        net2 = await createSandboxNetwork({ sandboxId: id2, slot: slot++, tapUid: 0, tapGid: 0 });
        attachOnly.push(await time(() => egress.attach(net2!, { policy })));
      }),
    );
    update.push(await time(() => egress.update(id2, { ...policy, internet: i % 2 === 0 })));
    await egress.detach(id2);
    await destroySandboxNetwork(net2!, { wait: false });
  }
  // Resolver latency seen from a guest: an allowed name (upstream + nft set insert) vs a refused one.
  const sb = await createStandIn(egress, `bd${tag}`, slot++, { policy });
  try {
    for (let i = 0; i < Math.min(iterations, 10); i++) {
      await egress.update(sb.id, policy); // empties the set: every lookup goes upstream
      const r = await probe(sb.guestNs, { dns: { server: "169.254.0.22", names: ["api.good.test"] } });
      if (!Array.isArray(r.dns["api.good.test"])) throw new Error(`lookup failed: ${r.dns["api.good.test"]}`);
    }
    const t0 = performance.now();
    await run("true", []);
    const spawn = performance.now() - t0;
    console.log(`egress bench, ${iterations} iterations (stand-in guests, no VM)`);
    console.log(`baseline: spawn /bin/true ${spawn.toFixed(1)} ms`);
    report("network create, no egress manager", bare);
    report("network create + egress attach (policy)", withPolicy);
    report("  of which egress attach", attachOnly);
    report("policy update on a live sandbox", update);

    // Throughput: 64 MiB from the private service to the guest, through the
    // service DNAT, vs the same bytes from the world namespace straight to the root namespace.
    const svc = await probe(sb.guestNs, { dns: { server: "169.254.0.22", names: ["bulk.internal"] } });
    const addr = (svc.dns["bulk.internal"] as string[])[0]!;
    const viaService = await probe(sb.guestNs, {
      download: [{ host: addr, port: world.internal.sourcePort }],
      timeoutMs: 60_000,
    });
    const d = viaService.download[0]!;
    const direct = await (async () => {
      // Baseline in the root namespace: host -> world, no sandbox namespace, no policy.
      const { connect } = await import("node:net");
      return new Promise<{ bytes: number; ms: number }>((resolve) => {
        const t = performance.now();
        let bytes = 0;
        const s = connect({ host: world.internal.db, port: world.internal.sourcePort });
        s.on("data", (b: Buffer) => {
          bytes += b.length;
        });
        s.on("end", () => resolve({ bytes, ms: performance.now() - t }));
      });
    })();
    const mbps = (x: { bytes: number; ms: number }) => ((x.bytes * 8) / 1e6 / (x.ms / 1000)).toFixed(0);
    console.log(
      `throughput private service -> sandbox stand-in: ${mbps(d)} Mbit/s (${(d.bytes / 2 ** 20).toFixed(0)} MiB in ${d.ms.toFixed(0)} ms)`,
    );
    console.log(`baseline world -> root namespace (no sandbox):   ${mbps(direct)} Mbit/s`);
    const t = await egress.traffic(sb.id);
    console.log(
      `counted: rx service ${(t.rx.service.bytes / 2 ** 20).toFixed(1)} MiB, tx service ${(t.tx.service.bytes / 2 ** 10).toFixed(0)} KiB`,
    );
  } finally {
    await sb.close();
  }
} finally {
  await egress.close();
  await world.close();
}
