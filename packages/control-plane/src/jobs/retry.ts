// The retry policy: which failures run a task again, how often, and after
// how long (exponential backoff, capped).
import type { FailureKind } from "../store/job-store.ts";

export interface RetryPolicy {
  /** Attempts in all, the first included (1: no retry). Interrupted attempts do not count. */
  maxAttempts: number;
  /** Failures that are retried. */
  on: FailureKind[];
  /** With "exit_code": only these exit codes are retried (absent: every non-zero code). */
  exitCodes?: number[];
  /** Wait before the first retry. */
  backoffMs: number;
  /** Each further retry waits this many times longer ... */
  backoffMultiplier: number;
  /** ... up to this. */
  maxBackoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  maxAttempts: 1,
  on: ["infrastructure"],
  backoffMs: 1_000,
  backoffMultiplier: 2,
  maxBackoffMs: 60_000,
};

/**
 * Whether a failed attempt is followed by another, and after how long.
 * `counted` is how many attempts have counted so far, this one included.
 */
export function retryDecision(
  policy: RetryPolicy,
  failure: FailureKind,
  exitCode: number | null,
  counted: number,
): { retry: false } | { retry: true; delayMs: number } {
  if (counted >= policy.maxAttempts || !policy.on.includes(failure)) return { retry: false };
  if (failure === "exit_code" && policy.exitCodes && !policy.exitCodes.includes(exitCode ?? -1)) {
    return { retry: false };
  }
  const delayMs = Math.min(
    policy.maxBackoffMs,
    Math.round(policy.backoffMs * policy.backoffMultiplier ** Math.max(0, counted - 1)),
  );
  return { retry: true, delayMs };
}
