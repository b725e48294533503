import assert from "node:assert/strict";
import { test } from "node:test";
import { DEFAULT_POOL, parsePool, SlotAllocator, slotAddresses } from "./address-pool.ts";
import { NetworkError } from "./errors.ts";

const code = (c: string) => (e: unknown) => e instanceof NetworkError && e.code === c;

test("slot n gets pool offsets 2n (host end) and 2n+1 (namespace end)", () => {
  assert.deepEqual(slotAddresses(0), { hostAddress: "10.211.0.0", sandboxAddress: "10.211.0.1" });
  assert.deepEqual(slotAddresses(3), { hostAddress: "10.211.0.6", sandboxAddress: "10.211.0.7" });
  assert.deepEqual(slotAddresses(128), { hostAddress: "10.211.1.0", sandboxAddress: "10.211.1.1" });
  assert.deepEqual(slotAddresses(32_767), {
    hostAddress: "10.211.255.254",
    sandboxAddress: "10.211.255.255",
  });
  assert.deepEqual(slotAddresses(1, "192.168.8.0/24"), {
    hostAddress: "192.168.8.2",
    sandboxAddress: "192.168.8.3",
  });
});

test("pools are validated", () => {
  assert.equal(parsePool(DEFAULT_POOL).slotCount, 32_768);
  assert.equal(parsePool("10.0.0.0/8").slotCount, 2 ** 23);
  assert.throws(() => parsePool("10.211.0.1/16"), code("NETWORK_INVALID_POOL"));
  assert.throws(() => parsePool("10.211.0.0"), code("NETWORK_INVALID_POOL"));
  assert.throws(() => parsePool("10.211.0.0/32"), code("NETWORK_INVALID_POOL"));
  assert.throws(() => parsePool("10.256.0.0/16"), code("NETWORK_INVALID_POOL"));
  assert.throws(() => slotAddresses(32_768), code("NETWORK_INVALID_SPEC"));
  assert.throws(() => slotAddresses(1.5), code("NETWORK_INVALID_SPEC"));
});

test("the allocator hands out distinct slots, round-robin, and honours reservations", () => {
  const a = new SlotAllocator("10.0.0.0/29"); // 4 slots
  a.reserve([1]);
  assert.equal(a.allocate(), 0);
  assert.equal(a.allocate(), 2);
  assert.equal(a.allocate(), 3);
  assert.throws(() => a.allocate(), code("NETWORK_POOL_EXHAUSTED"));
  assert.equal(a.release(2), true);
  assert.equal(a.release(2), false);
  assert.equal(a.allocate(), 2);
  assert.equal(a.usedCount, 4);
  assert.ok(a.isUsed(1));
  a.release(0);
  a.release(3);
  assert.equal(a.allocate(), 3, "round-robin continues after the last slot handed out");
  assert.throws(() => a.reserve([4]), code("NETWORK_INVALID_SPEC"));
});
