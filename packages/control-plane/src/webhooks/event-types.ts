// What a webhook may subscribe to: `*` (everything), `sandbox.*` (every
// sandbox event), `sandbox.<type>` (one sandbox event type: the types the
// sandbox service and ingress record), `usage.final` (a sandbox's final usage
// record, once, when it ends). The store matches them (store.ts webhookWants).
import { PORT_PUBLIC_EVENT, PORTS_E2B_EVENT } from "../ingress/public-ports.ts";
import { LIFECYCLE_EVENT } from "../sandboxes/service.ts";

export const SANDBOX_EVENT_TYPES: readonly string[] = [
  "requested",
  LIFECYCLE_EVENT,
  "scheduled",
  "rescheduled",
  "started",
  "ready",
  "start_failed",
  "state",
  "kill",
  "ended",
  "crashed",
  "lost",
  "adopted",
  "auto_paused",
  "resumed",
  "fork",
  "snapshot",
  "network_policy",
  "timeout_set",
  PORT_PUBLIC_EVENT,
  PORTS_E2B_EVENT,
];

export const KNOWN_EVENT_FILTERS: readonly string[] = [
  "*",
  "sandbox.*",
  "usage.final",
  ...SANDBOX_EVENT_TYPES.map((t) => `sandbox.${t}`),
];

export function isKnownEventFilter(e: string): boolean {
  return KNOWN_EVENT_FILTERS.includes(e);
}
