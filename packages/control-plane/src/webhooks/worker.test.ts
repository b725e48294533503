// The retry schedule: exponential from the first delay, capped, plus up to
// 20% jitter; given up after maxAttempts or once the next attempt would be
// later than giveUpAfterMs after the event.
import assert from "node:assert/strict";
import { test } from "node:test";
import { defaultWebhookConfig } from "../config.ts";
import { afterFailure } from "./worker.ts";

const cfg = defaultWebhookConfig({});
const T0 = Date.parse("2026-01-01T00:00:00.000Z");
const delayAfter = (attempts: number, random: number, createdMs = T0) => {
  const o = afterFailure(
    cfg,
    { attempts, createdAt: new Date(createdMs).toISOString() },
    "HTTP 503",
    T0,
    () => random,
  );
  return !o.ok && "nextAttemptAt" in o ? Date.parse(o.nextAttemptAt) - T0 : o;
};

test("the default schedule: 5 s doubling to 5 minutes, plus up to 20% jitter", () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 50].map((n) => delayAfter(n, 0)),
    [5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000, 300_000],
  );
  assert.equal(delayAfter(0, 0.999_999), 6_000);
  assert.equal(delayAfter(60, 0.5), 330_000);
});

test("given up after maxAttempts, or when the next attempt would come more than a day after the event", () => {
  const last = afterFailure(
    cfg,
    { attempts: cfg.maxAttempts - 1, createdAt: new Date(T0).toISOString() },
    "HTTP 500",
    T0,
  );
  assert.ok(!last.ok && "gaveUpAt" in last);
  assert.match(!last.ok ? last.error : "", /^HTTP 500 \(gave up after 300 attempts\)$/);
  const old = afterFailure(
    cfg,
    { attempts: 3, createdAt: new Date(T0 - 24 * 3600_000 + 1_000).toISOString() },
    "reset",
    T0,
  );
  assert.ok(!old.ok && "gaveUpAt" in old, JSON.stringify(old));
  // A day of failures at the 5-minute cap is about the attempt limit too.
  assert.ok(Math.abs(cfg.maxAttempts * cfg.retryMaxDelayMs - cfg.giveUpAfterMs) < 2 * 3600_000);
});
