import assert from "node:assert/strict";
import { test } from "node:test";
import { AgentState } from "../identity/agent-state.ts";
import { handleControlLine, type SystemOps } from "./control-handler.ts";
import { dateArgument } from "./system.ts";

function fakeOps() {
  const calls: string[] = [];
  const ops: SystemOps = {
    syncClock: async (ms) => {
      calls.push(`clock:${ms}`);
      return true;
    },
    mixEntropy: async (b64) => {
      calls.push(`entropy:${Buffer.from(b64, "base64").length}`);
    },
  };
  return { ops, calls };
}

const init = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: "init",
    id: 5,
    sandboxId: "sbx",
    accessToken: "tok",
    envVars: { A: "b" },
    defaultUser: "user",
    defaultWorkdir: "/home/user",
    wallClockMs: 1_700_000_000_000,
    entropy: Buffer.alloc(64, 7).toString("base64"),
    ...extra,
  });

test("init sets the identity, mixes entropy, syncs the clock, then acks", async () => {
  const state = new AgentState();
  const { ops, calls } = fakeOps();
  assert.deepEqual(await handleControlLine(init(), state, ops), { type: "ack", id: 5 });
  assert.equal(state.identity?.accessToken, "tok");
  assert.deepEqual(calls, ["entropy:64", "clock:1700000000000"]);
});

test("ping answers pong; junk and unknown types answer error", async () => {
  const state = new AgentState();
  const { ops } = fakeOps();
  assert.deepEqual(await handleControlLine('{"type":"ping","id":9}', state, ops), { type: "pong", id: 9 });
  assert.equal((await handleControlLine("{", state, ops))?.type, "error");
  assert.deepEqual(await handleControlLine('{"type":"nope","id":3}', state, ops), {
    type: "error",
    id: 3,
    message: "unknown control message type 'nope'",
  });
  assert.equal(await handleControlLine("   ", state, ops), undefined);
});

test("an init without a token or with bad env is refused and changes nothing", async () => {
  const state = new AgentState();
  const { ops, calls } = fakeOps();
  assert.equal((await handleControlLine(init({ accessToken: "" }), state, ops))?.type, "error");
  assert.equal((await handleControlLine(init({ envVars: { A: 1 } }), state, ops))?.type, "error");
  assert.equal(state.phase, "awaiting-init");
  assert.deepEqual(calls, []);
});

test("dateArgument formats epoch ms as @seconds.millis", () => {
  assert.equal(dateArgument(1_700_000_000_005), "@1700000000.005");
  assert.equal(dateArgument(1_700_000_000_999), "@1700000000.999");
});
