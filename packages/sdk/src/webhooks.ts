// firebreak.webhooks: a tenant's webhook subscriptions and their deliveries,
// and verifyWebhook for receivers. Deliveries are CloudEvents (structured
// JSON) signed the Standard Webhooks way: headers `webhook-id` (the
// idempotency key: the same for every retry of one event), `webhook-timestamp`
// (Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 over
// "<id>.<timestamp>.<body>" keyed with the secret's bytes>`).
import { createHmac, timingSafeEqual } from "node:crypto";
import { NotFoundError } from "./errors.ts";
import type { HttpClient } from "./http.ts";

/** `*`, `sandbox.*`, `sandbox.<event type>` (e.g. `sandbox.ended`) or `usage.final`. */
export type WebhookEventFilter = "*" | "sandbox.*" | "usage.final" | `sandbox.${string}`;

export interface WebhookInfo {
  id: string;
  tenantId: string;
  url: string;
  events: string[];
  description: string;
  createdAt: string;
  /** When it was deleted; its pending deliveries were given up then. */
  disabledAt: string | null;
}

export interface CreatedWebhook extends WebhookInfo {
  /** `whsec_...`: shown only in the create answer. Pass it to verifyWebhook. */
  secret: string;
}

export interface WebhookDelivery {
  id: string;
  /** The event's id (CloudEvents `id`, header `webhook-id`): deduplicate by it. */
  eventKey: string;
  type: string;
  sandboxId: string;
  status: "pending" | "delivered" | "gave_up";
  attempts: number;
  nextAttemptAt: string;
  deliveredAt: string | null;
  gaveUpAt: string | null;
  lastError: string | null;
  createdAt: string;
}

/** A delivery's body. */
export interface WebhookEvent<T = Record<string, unknown>> {
  specversion: "1.0";
  id: string;
  source: string;
  type: string;
  time: string;
  subject: string;
  datacontenttype: "application/json";
  data: T;
}

export class Webhooks {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /** Subscribes `url` to `events`; the answer's `secret` is shown only here. */
  create(
    url: string,
    events: WebhookEventFilter[],
    opts: { description?: string } = {},
  ): Promise<CreatedWebhook> {
    return this.#http.json<CreatedWebhook>("POST", "/v1/webhooks", { json: { url, events, ...opts } });
  }

  async list(): Promise<WebhookInfo[]> {
    return (await this.#http.json<{ webhooks: WebhookInfo[] }>("GET", "/v1/webhooks")).webhooks;
  }

  /** The webhook, or undefined when there is no such webhook. */
  async get(id: string): Promise<WebhookInfo | undefined> {
    try {
      return await this.#http.json<WebhookInfo>("GET", `/v1/webhooks/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }

  /** Deletes (disables) a webhook, giving up its pending deliveries; false when there is no such webhook. */
  async delete(id: string): Promise<boolean> {
    try {
      await this.#http.empty("DELETE", `/v1/webhooks/${encodeURIComponent(id)}`);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** The webhook's deliveries, newest first. @default limit 100 */
  async deliveries(id: string, opts: { limit?: number } = {}): Promise<WebhookDelivery[]> {
    const r = await this.#http.json<{ deliveries: WebhookDelivery[] }>(
      "GET",
      `/v1/webhooks/${encodeURIComponent(id)}/deliveries`,
      { query: { limit: opts.limit } },
    );
    return r.deliveries;
  }
}

export interface VerifyOptions {
  /** How far `webhook-timestamp` may be from now (replays of old deliveries fail). @default 300 */
  toleranceSeconds?: number;
  /** The clock, in ms (tests). @default Date.now() */
  nowMs?: number;
}

export type VerifyResult = { ok: true; id: string; timestamp: number } | { ok: false; reason: string };

function header(
  headers: Headers | Record<string, string | string[] | undefined>,
  name: string,
): string | undefined {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name) ?? undefined;
  const rec = headers as Record<string, string | string[] | undefined>;
  const key = Object.keys(rec).find((k) => k.toLowerCase() === name);
  const v = key === undefined ? undefined : rec[key];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * Checks a delivery's signature (Standard Webhooks): the body must be the
 * exact bytes received (verify before parsing). Returns the `webhook-id` to
 * deduplicate by when the signature is good and the timestamp recent.
 */
export function verifyWebhook(
  secret: string,
  headers: Headers | Record<string, string | string[] | undefined>,
  body: string | Uint8Array,
  opts: VerifyOptions = {},
): VerifyResult {
  const id = header(headers, "webhook-id");
  const ts = header(headers, "webhook-timestamp");
  const sigs = header(headers, "webhook-signature");
  if (!id || !ts || !sigs)
    return { ok: false, reason: "missing webhook-id, webhook-timestamp or webhook-signature" };
  if (!/^\d{1,12}$/.test(ts)) return { ok: false, reason: "webhook-timestamp is not Unix seconds" };
  const timestamp = Number(ts);
  const tolerance = opts.toleranceSeconds ?? 300;
  if (Math.abs((opts.nowMs ?? Date.now()) / 1000 - timestamp) > tolerance) {
    return { ok: false, reason: `webhook-timestamp is more than ${tolerance} s from now` };
  }
  const key = Buffer.from(secret.startsWith("whsec_") ? secret.slice(6) : secret, "base64");
  const mac = createHmac("sha256", key)
    .update(`${id}.${timestamp}.`)
    .update(typeof body === "string" ? Buffer.from(body) : body)
    .digest();
  for (const part of sigs.split(" ")) {
    const [version, value] = part.split(",", 2);
    if (version !== "v1" || !value) continue;
    const got = Buffer.from(value, "base64");
    if (got.length === mac.length && timingSafeEqual(got, mac)) return { ok: true, id, timestamp };
  }
  return { ok: false, reason: "no webhook-signature matches: wrong secret, or the body was changed" };
}
