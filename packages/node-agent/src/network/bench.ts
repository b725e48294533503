// Times sandbox network create and destroy (real tap mode), against baselines
// measured in the same process: one process spawn, and a bare
// `ip netns add` + `ip netns del`. Needs root.
//
//   node packages/node-agent/src/network/bench.ts [iterations=30] [concurrent=10]
import { run } from "../host/exec.ts";
import { SlotAllocator } from "./address-pool.ts";
import { createSandboxNetwork, destroySandboxNetwork, type SandboxNetwork } from "./sandbox-network.ts";

const iterations = Number(process.argv[2] ?? 30);
const concurrent = Number(process.argv[3] ?? 10);
const slots = new SlotAllocator();
// Stay clear of the low slots a running node agent hands out first.
slots.reserve(Array.from({ length: 20_000 }, (_, i) => i));

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return { p50: q(0.5), p95: q(0.95), min: s[0]!, max: s[s.length - 1]! };
}

function report(name: string, ms: number[]) {
  const { p50, p95, min, max } = stats(ms);
  console.log(
    `${name.padEnd(34)} p50 ${p50.toFixed(1).padStart(6)} ms  p95 ${p95.toFixed(1).padStart(6)} ms  min ${min.toFixed(1).padStart(6)} ms  max ${max.toFixed(1).padStart(6)} ms  (n=${ms.length})`,
  );
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

const live: SandboxNetwork[] = [];
try {
  const spawn: number[] = [];
  const bareNetns: number[] = [];
  const create: number[] = [];
  const destroy: number[] = [];
  const destroyNoWait: number[] = [];
  for (let i = 0; i < iterations; i++) {
    spawn.push(await time(() => run("true", [])));
    const ns = `fbbench-bare${i}`;
    bareNetns.push(
      await time(async () => {
        await run("ip", ["netns", "add", ns]);
        await run("ip", ["netns", "del", ns]);
      }),
    );
    const slot = slots.allocate();
    let net: SandboxNetwork | undefined;
    create.push(
      await time(async () => {
        net = await createSandboxNetwork({ sandboxId: `bench${i}`, slot, tapUid: 0, tapGid: 0 });
        live.push(net);
      }),
    );
    destroy.push(await time(() => destroySandboxNetwork(net!)));
    live.pop();
    // Same again, returning before the kernel has reaped the veth.
    const slot2 = slots.allocate();
    const net2 = await createSandboxNetwork({ sandboxId: `benchn${i}`, slot: slot2, tapUid: 0, tapGid: 0 });
    destroyNoWait.push(await time(() => destroySandboxNetwork(net2, { wait: false })));
    // Round-robin allocation keeps both slots out of reuse while the kernel finishes.
    slots.release(slot);
    slots.release(slot2);
  }
  console.log(`network bench, ${iterations} iterations, sequential`);
  report("baseline: spawn /bin/true", spawn);
  report("baseline: ip netns add + del", bareNetns);
  report("create sandbox network (tap)", create);
  report("destroy sandbox network (wait)", destroy);
  report("destroy sandbox network (no wait)", destroyNoWait);

  const specs = Array.from({ length: concurrent }, (_, i) => ({
    sandboxId: `benchc${i}`,
    slot: slots.allocate(),
    tapUid: 0,
    tapGid: 0,
  }));
  const createAll = await time(async () => {
    for (const n of await Promise.all(specs.map((s) => createSandboxNetwork(s)))) live.push(n);
  });
  const destroyAll = await time(() => Promise.all(live.splice(0).map((n) => destroySandboxNetwork(n))));
  console.log(
    `${concurrent} concurrent: create all ${createAll.toFixed(1)} ms (${(createAll / concurrent).toFixed(1)} ms/network), destroy all ${destroyAll.toFixed(1)} ms (${(destroyAll / concurrent).toFixed(1)} ms/network)`,
  );
} finally {
  for (const n of live) await destroySandboxNetwork(n).catch(() => {});
}
