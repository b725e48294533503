// A delivery's body: a CloudEvents 1.0 event in structured JSON mode.
// `id` is the delivery's event key (the idempotency key, also `webhook-id`),
// `type` what the webhook subscribed to (`sandbox.<event type>`,
// `usage.final`), `subject` the sandbox id, `data` the sandbox event (as the
// event stream sends it) or the sandbox's final usage record.
import { eventData } from "../api/routes/events.ts";
import type { DeliveryRecord, Store } from "../store/store.ts";

export const CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json";
export const CLOUDEVENT_SOURCE = "/firebreak/sandboxes";

export interface CloudEvent {
  specversion: "1.0";
  id: string;
  source: string;
  type: string;
  time: string;
  subject: string;
  datacontenttype: "application/json";
  data: unknown;
}

/** The event a delivery carries, or undefined when what it refers to is no longer stored. */
export async function buildCloudEvent(store: Store, d: DeliveryRecord): Promise<CloudEvent | undefined> {
  const base = {
    specversion: "1.0" as const,
    id: d.eventKey,
    source: CLOUDEVENT_SOURCE,
    type: d.type,
    subject: d.sandboxId,
    datacontenttype: "application/json" as const,
  };
  if (d.type === "usage.final") {
    const u = await store.getUsage(d.sandboxId);
    if (!u?.final) return undefined;
    const { meterState: _internal, ...record } = u;
    return { ...base, time: u.endedAt ?? d.createdAt, data: { ...record, account: "tenant" } };
  }
  if (d.eventSeq === null) return undefined;
  const e = await store.getEvent(d.eventSeq);
  if (!e || e.sandboxId !== d.sandboxId) return undefined;
  return { ...base, time: e.at, data: eventData(e) };
}
