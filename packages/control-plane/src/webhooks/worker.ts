// The webhook delivery worker: claims due deliveries from the store's outbox
// (rows written in the same transaction as the event or final usage record
// they carry), POSTs each as a signed CloudEvent, and records the outcome: a
// 2xx is delivered; anything else is retried with exponential backoff and
// jitter until it is delivered or given up (attempts or age).
//
// Every control plane runs one; the store's claim (a lease per delivery)
// keeps replicas from sending the same delivery at once. Delivery is at
// least once: an attempt whose answer is lost (or whose claim lapsed) is
// sent again with the same `webhook-id`, which receivers deduplicate by.
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import type { WebhookConfig } from "../config.ts";
import type { DeliveryOutcome, DeliveryRecord, Store } from "../store/store.ts";
import { buildCloudEvent, CLOUDEVENTS_CONTENT_TYPE } from "./cloud-event.ts";
import { sendWebhook } from "./send.ts";
import { signWebhook } from "./signing.ts";

export type AttemptOutcome = "delivered" | "retry" | "gave_up";

export interface WebhookWorkerOptions {
  store: Store;
  config: WebhookConfig;
  log: Logger;
  /** Called after every recorded attempt (metrics). */
  onAttempt?: (outcome: AttemptOutcome) => void;
  /** Random source for the jitter (tests). @default Math.random */
  random?: () => number;
}

/** What happens after a failed attempt: the next attempt's time, or giving up. */
export function afterFailure(
  cfg: WebhookConfig,
  d: Pick<DeliveryRecord, "attempts" | "createdAt">,
  error: string,
  nowMs: number,
  random: () => number = Math.random,
): DeliveryOutcome {
  const attempts = d.attempts + 1;
  if (attempts >= cfg.maxAttempts) {
    return { ok: false, error: `${error} (gave up after ${attempts} attempts)`, gaveUpAt: iso(nowMs) };
  }
  const base = Math.min(cfg.retryMaxDelayMs, cfg.retryFirstDelayMs * 2 ** Math.min(attempts - 1, 40));
  const delayMs = Math.round(base * (1 + 0.2 * random()));
  const at = nowMs + delayMs;
  if (at - Date.parse(d.createdAt) > cfg.giveUpAfterMs) {
    return {
      ok: false,
      error: `${error} (gave up: undelivered for ${Math.round(cfg.giveUpAfterMs / 1000)} s)`,
      gaveUpAt: iso(nowMs),
    };
  }
  return { ok: false, error, nextAttemptAt: iso(at) };
}

const iso = (ms: number) => new Date(ms).toISOString();

export class WebhookWorker {
  readonly holder = `whw_${randomBytes(8).toString("hex")}`;
  readonly #store: Store;
  readonly #cfg: WebhookConfig;
  readonly #log: Logger;
  readonly #onAttempt: (o: AttemptOutcome) => void;
  readonly #random: () => number;
  readonly #inFlight = new Set<Promise<void>>();
  readonly #perHook = new Map<string, number>();
  /** Claimed deliveries waiting for their webhook's slot, with when they were claimed. */
  readonly #queues = new Map<string, { d: DeliveryRecord; claimedAtMs: number }[]>();
  readonly #abort = new AbortController();
  #running = false;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(opts: WebhookWorkerOptions) {
    this.#store = opts.store;
    this.#cfg = opts.config;
    this.#log = opts.log.child({ component: "webhooks" });
    this.#onAttempt = opts.onAttempt ?? (() => {});
    this.#random = opts.random ?? Math.random;
  }

  /**
   * INVARIANT: a claim outlasts its attempt (the attempt's deadline, the
   * store reads before it and the write after), so no other replica sends
   * it while this one still may.
   */
  get leaseMs(): number {
    return this.#cfg.attemptTimeoutMs * 2 + 5_000;
  }

  start(): void {
    if (this.#running || this.#abort.signal.aborted) return;
    this.#running = true;
    this.#loop = this.#run();
  }

  /** Stops claiming, ends attempts in flight (unrecorded: their claims lapse and they are sent again). */
  async close(): Promise<void> {
    this.#running = false;
    this.#abort.abort();
    this.#wake?.();
    await this.#loop;
    await Promise.allSettled([...this.#inFlight]);
  }

  async #run(): Promise<void> {
    while (this.#running) {
      let full = false;
      try {
        full = await this.tick();
      } catch (e) {
        this.#log.warn({ err: (e as Error).message }, "claiming webhook deliveries failed; retrying");
      }
      if (!this.#running) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.#cfg.pollIntervalMs);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
        // A full batch: look again as soon as one attempt ends.
        if (full && this.#inFlight.size) void Promise.race([...this.#inFlight]).then(() => this.#wake?.());
      });
      this.#wake = undefined;
    }
  }

  /** One pass: claims what the free slots can take and starts those attempts. True when every slot was filled. */
  async tick(): Promise<boolean> {
    const free = this.#cfg.concurrency - this.#inFlight.size;
    if (free <= 0) return true;
    const claimedAtMs = Date.now();
    const claimed = await this.#store.claimDeliveries(this.holder, iso(claimedAtMs), this.leaseMs, free);
    const cap = this.#cfg.perWebhookConcurrency;
    for (const d of claimed) {
      if (!this.#running) break;
      if ((this.#perHook.get(d.webhookId) ?? 0) < cap) {
        this.#launch(d);
        continue;
      }
      // INVARIANT: one receiver holds at most perWebhookConcurrency attempts of
      // this replica, and at most 4x that waiting behind them; a delivery beyond
      // that is left claimed and unattempted (not counted): its claim lapses and
      // it is claimed again later. A slow or hanging receiver delays its own
      // deliveries, never another webhook's.
      const q = this.#queues.get(d.webhookId) ?? [];
      if (q.length < cap * 4) {
        q.push({ d, claimedAtMs });
        this.#queues.set(d.webhookId, q);
      }
    }
    return claimed.length >= free;
  }

  #launch(d: DeliveryRecord): void {
    this.#perHook.set(d.webhookId, (this.#perHook.get(d.webhookId) ?? 0) + 1);
    const p: Promise<void> = this.#attempt(d).finally(() => {
      this.#inFlight.delete(p);
      const n = (this.#perHook.get(d.webhookId) ?? 1) - 1;
      if (n > 0) this.#perHook.set(d.webhookId, n);
      else this.#perHook.delete(d.webhookId);
      this.#next(d.webhookId);
    });
    this.#inFlight.add(p);
  }

  /** Starts the next waiting delivery of a webhook whose claim still leaves a whole attempt's time. */
  #next(webhookId: string): void {
    const q = this.#queues.get(webhookId);
    while (q?.length && this.#running) {
      const { d, claimedAtMs } = q.shift()!;
      if (claimedAtMs + this.leaseMs - Date.now() > this.#cfg.attemptTimeoutMs + 2_000) {
        this.#launch(d);
        break;
      }
    }
    if (!q?.length || !this.#running) this.#queues.delete(webhookId);
  }

  /** INVARIANT: never throws (whatever the receiver or the store does). */
  async #attempt(d: DeliveryRecord): Promise<void> {
    const log = this.#log.child({ delivery: d.id, webhook: d.webhookId, attempt: d.attempts + 1 });
    try {
      const hook = await this.#store.getWebhook(d.webhookId);
      let outcome: DeliveryOutcome;
      if (!hook || hook.disabledAt !== null) {
        outcome = { ok: false, error: "the webhook was deleted", gaveUpAt: iso(Date.now()) };
      } else {
        const event = await buildCloudEvent(this.#store, d);
        if (!event) {
          outcome = { ok: false, error: "the event is no longer stored", gaveUpAt: iso(Date.now()) };
        } else {
          const body = JSON.stringify(event);
          const timestamp = Math.floor(Date.now() / 1000);
          const r = await sendWebhook({
            url: hook.url,
            body,
            headers: {
              "content-type": CLOUDEVENTS_CONTENT_TYPE,
              "user-agent": "Firebreak-Webhooks/1",
              "webhook-id": d.eventKey,
              "webhook-timestamp": String(timestamp),
              "webhook-signature": signWebhook(hook.secret, d.eventKey, timestamp, body),
            },
            timeoutMs: this.#cfg.attemptTimeoutMs,
            allowPrivate: this.#cfg.allowPrivate,
            signal: this.#abort.signal,
          });
          // Stopping: leave it unrecorded; its claim lapses and it is sent again.
          if (this.#abort.signal.aborted) return;
          outcome = r.ok
            ? { ok: true, at: iso(Date.now()) }
            : afterFailure(this.#cfg, d, r.error, Date.now(), this.#random);
        }
      }
      const kept = await this.#store.finishDelivery(d.id, this.holder, outcome);
      if (!kept) {
        log.debug("delivery claim lapsed before its outcome was recorded; it may be sent again");
        return;
      }
      const kind: AttemptOutcome = outcome.ok ? "delivered" : "gaveUpAt" in outcome ? "gave_up" : "retry";
      this.#onAttempt(kind);
      if (kind === "gave_up")
        log.info({ err: outcome.ok ? undefined : outcome.error }, "webhook delivery given up");
      else if (kind === "retry")
        log.debug({ err: outcome.ok ? undefined : outcome.error }, "webhook delivery failed; retrying");
    } catch (e) {
      // The store failed: the claim lapses and the delivery is attempted again.
      log.warn({ err: (e as Error).message }, "webhook delivery attempt failed");
    }
  }
}
