import assert from "node:assert/strict";
import { test } from "node:test";
import { assertTransition, canTransition, isFinal } from "./state.ts";

test("a running sandbox may stop or crash but not start again", () => {
  assert.equal(canTransition("running", "stopping"), true);
  assert.equal(canTransition("running", "crashed"), true);
  assert.equal(canTransition("running", "starting"), false);
  assert.throws(
    () => assertTransition("x", "stopped", "running"),
    /sandbox x is stopped; it cannot become running/,
  );
});

test("final states have no way out", () => {
  for (const s of ["stopped", "crashed", "failed"] as const) assert.equal(isFinal(s), true);
  for (const s of ["starting", "running", "stopping"] as const) assert.equal(isFinal(s), false);
});

test("a standby VM is claimed into a start, or ends; it never runs without starting", () => {
  assert.equal(canTransition("starting", "standby"), true);
  assert.equal(canTransition("standby", "starting"), true);
  assert.equal(canTransition("standby", "stopping"), true);
  assert.equal(canTransition("standby", "crashed"), true);
  assert.equal(canTransition("standby", "running"), false);
  assert.equal(canTransition("standby", "warm"), false);
});
