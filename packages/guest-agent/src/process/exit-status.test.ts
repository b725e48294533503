import assert from "node:assert/strict";
import { test } from "node:test";
import { describeExit } from "./exit-status.ts";
import { keepaliveIntervalMs } from "./process-service.ts";

test("describeExit mirrors Go's ProcessState strings; a failure carries them as error", () => {
  assert.deepEqual(describeExit(0, null), { exitCode: 0, exited: true, status: "exit status 0" });
  assert.deepEqual(describeExit(3, null), {
    exitCode: 3,
    exited: true,
    status: "exit status 3",
    error: "exit status 3",
  });
  assert.deepEqual(describeExit(null, "SIGKILL"), {
    exitCode: -1,
    exited: false,
    status: "signal: killed",
    error: "signal: killed",
  });
  assert.deepEqual(describeExit(null, "SIGTERM"), {
    exitCode: -1,
    exited: false,
    status: "signal: terminated",
    error: "signal: terminated",
  });
  assert.equal(describeExit(null, "SIGWINCH").status, "signal: SIGWINCH");
});

test("keepaliveIntervalMs reads seconds, with a floor and a default", () => {
  assert.equal(keepaliveIntervalMs("50"), 50_000);
  assert.equal(keepaliveIntervalMs("0.1"), 1000);
  assert.equal(keepaliveIntervalMs(null), 30_000);
  assert.equal(keepaliveIntervalMs("junk"), 30_000);
});
