// firebreak webhook add|list|rm|deliveries: the tenant's webhooks (sandbox
// events and final usage records POSTed to a URL, signed, at least once).
import type { WebhookEventFilter } from "@firebreak/sdk";
import { printJson } from "../output.ts";
import { client, printTable } from "./api-client.ts";

export async function webhookAdd(
  url: string,
  opts: { event?: string[]; description?: string; json?: boolean },
): Promise<void> {
  const events = (opts.event?.length ? opts.event : ["*"]) as WebhookEventFilter[];
  const w = await client().webhooks.create(url, events, {
    ...(opts.description !== undefined ? { description: opts.description } : {}),
  });
  if (opts.json) return printJson(w);
  process.stdout.write(`created webhook ${w.id} -> ${w.url} (events ${w.events.join(",")})\n${w.secret}\n`);
  process.stderr.write(
    "this is the only time the signing secret is shown; store it in the receiver (verifyWebhook in @firebreak/sdk)\n",
  );
}

export async function webhookList(opts: { json?: boolean }): Promise<void> {
  const list = await client().webhooks.list();
  if (opts.json) return printJson(list);
  if (list.length === 0) {
    process.stdout.write("no webhooks; add one with: firebreak webhook add URL --event sandbox.ended\n");
    return;
  }
  printTable(
    ["ID", "URL", "EVENTS", "CREATED", "DELETED"],
    list.map((w) => [w.id, w.url, w.events.join(","), w.createdAt, w.disabledAt ?? ""]),
  );
}

export async function webhookRm(id: string, opts: { json?: boolean }): Promise<void> {
  const deleted = await client().webhooks.delete(id);
  if (opts.json) printJson({ id, deleted });
  else if (deleted) process.stdout.write(`deleted webhook ${id} (its pending deliveries are given up)\n`);
  if (!deleted) {
    if (!opts.json) process.stderr.write(`no webhook ${id}; see: firebreak webhook list\n`);
    process.exitCode = 1;
  }
}

export async function webhookDeliveries(id: string, opts: { limit?: string; json?: boolean }): Promise<void> {
  const limit = opts.limit === undefined ? undefined : Number(opts.limit);
  const list = await client().webhooks.deliveries(id, limit === undefined ? {} : { limit });
  if (opts.json) return printJson(list);
  if (list.length === 0) {
    process.stdout.write(`no deliveries for webhook ${id} yet\n`);
    return;
  }
  printTable(
    ["EVENT", "TYPE", "SANDBOX", "STATUS", "ATTEMPTS", "NEXT/DONE", "LAST ERROR"],
    list.map((d) => [
      d.eventKey,
      d.type,
      d.sandboxId,
      d.status,
      String(d.attempts),
      d.deliveredAt ?? d.gaveUpAt ?? d.nextAttemptAt,
      (d.lastError ?? "").slice(0, 80),
    ]),
  );
}
