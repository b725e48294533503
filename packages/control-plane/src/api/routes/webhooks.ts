// /v1/webhooks: a tenant's webhook subscriptions and their deliveries.
// Creating one returns its signing secret, once. Deliveries are made by the
// worker (src/webhooks/worker.ts) from the store's outbox. Tenant-scoped: a
// key sees its own tenant's webhooks (an admin key every tenant's); another
// tenant's id answers 404.
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { z } from "zod";
import { newId } from "../../auth/keys.ts";
import { hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { DeliveryRecord, WebhookRecord } from "../../store/store.ts";
import { checkWebhookUrl, MAX_WEBHOOK_URL_CHARS } from "../../webhooks/destination.ts";
import { isKnownEventFilter, KNOWN_EVENT_FILTERS } from "../../webhooks/event-types.ts";
import { newWebhookSecret } from "../../webhooks/signing.ts";
import type { AppEnv, AuthedCaller, Deps } from "../context.ts";
import { body, errors, json, noContent, security } from "../openapi-helpers.ts";

const tags = ["webhooks"];

/** Enabled webhooks a tenant may have at once. */
export const MAX_WEBHOOKS_PER_TENANT = 20;

const WebhookIdParam = z.object({
  id: z
    .string()
    .max(64)
    .openapi({ param: { name: "id", in: "path" } }),
});

const CreateWebhookBody = z
  .object({
    url: z.string().min(1).max(MAX_WEBHOOK_URL_CHARS).openapi({
      description:
        "http:// or https:// URL of a public address (private ones only if the operator allows them)",
    }),
    events: z
      .array(z.string().max(64))
      .min(1)
      .max(32)
      .openapi({ description: `Event types: ${KNOWN_EVENT_FILTERS.join(", ")}` }),
    description: z.string().max(500).optional(),
  })
  .strict()
  .openapi("CreateWebhook");

const WebhookSchema = z
  .object({
    id: z.string(),
    tenantId: z.string(),
    url: z.string(),
    events: z.array(z.string()),
    description: z.string(),
    createdAt: z.string(),
    disabledAt: z.string().nullable(),
  })
  .openapi("Webhook");

const CreatedWebhookSchema = WebhookSchema.extend({
  secret: z
    .string()
    .openapi({ description: "whsec_...: shown once; verify deliveries' webhook-signature with it" }),
}).openapi("CreatedWebhook");

const DeliverySchema = z
  .object({
    id: z.string(),
    eventKey: z.string(),
    type: z.string(),
    sandboxId: z.string(),
    status: z.enum(["pending", "delivered", "gave_up"]),
    attempts: z.number().int(),
    nextAttemptAt: z.string(),
    deliveredAt: z.string().nullable(),
    gaveUpAt: z.string().nullable(),
    lastError: z.string().nullable(),
    createdAt: z.string(),
  })
  .openapi("WebhookDelivery");

const DeliveriesQuery = z.object({
  limit: z.coerce
    .number()
    .int()
    .min(1)
    .max(1000)
    .optional()
    .openapi({ description: "Newest first. Default 100" }),
});

/** SECURITY: the secret is never shown after create. */
function webhookJson(w: WebhookRecord) {
  return {
    id: w.id,
    tenantId: w.tenantId,
    url: w.url,
    events: w.events,
    description: w.description,
    createdAt: w.createdAt,
    disabledAt: w.disabledAt,
  };
}

function deliveryJson(d: DeliveryRecord) {
  return {
    id: d.id,
    eventKey: d.eventKey,
    type: d.type,
    sandboxId: d.sandboxId,
    status: d.deliveredAt ? ("delivered" as const) : d.gaveUpAt ? ("gave_up" as const) : ("pending" as const),
    attempts: d.attempts,
    nextAttemptAt: d.nextAttemptAt,
    deliveredAt: d.deliveredAt,
    gaveUpAt: d.gaveUpAt,
    lastError: d.lastError === null ? null : String(d.lastError),
    createdAt: d.createdAt,
  };
}

export function webhookRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const { store } = deps;

  /** The caller's webhook (an admin's: any), or 404. */
  async function visible(caller: AuthedCaller, id: string): Promise<WebhookRecord> {
    const w = await store.getWebhook(id);
    // SECURITY: another tenant's webhook answers exactly like a missing one.
    if (!w || (!hasScope(caller, "admin") && w.tenantId !== caller.tenant.id)) {
      throw new ApiError("NOT_FOUND", `no webhook ${id}; see GET /v1/webhooks`);
    }
    return w;
  }

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/webhooks",
      tags,
      security,
      summary: "Subscribe a URL to sandbox events and final usage records",
      description:
        "Returns the webhook with its signing secret, shown only here. Deliveries are CloudEvents (structured JSON), signed the Standard Webhooks way, at least once: deduplicate by the webhook-id header.",
      request: body(CreateWebhookBody),
      responses: { 201: json(CreatedWebhookSchema, "Created"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const req = c.req.valid("json");
      const unknown = req.events.filter((e) => !isKnownEventFilter(e));
      if (unknown.length) {
        throw new ApiError(
          "VALIDATION_FAILED",
          `events: unknown ${unknown.map((e) => JSON.stringify(e)).join(", ")}; use ${KNOWN_EVENT_FILTERS.join(", ")}`,
        );
      }
      const checked = await checkWebhookUrl(req.url, deps.config.webhooks.allowPrivate);
      if (!checked.ok) {
        throw new ApiError(
          checked.code === "forbidden" ? "WEBHOOK_DESTINATION_FORBIDDEN" : "VALIDATION_FAILED",
          checked.message,
        );
      }
      const mine = (await store.listWebhooks(caller.tenant.id)).filter((w) => w.disabledAt === null);
      if (mine.length >= MAX_WEBHOOKS_PER_TENANT) {
        throw new ApiError(
          "QUOTA_EXCEEDED",
          `quota exceeded: at most ${MAX_WEBHOOKS_PER_TENANT} webhooks per tenant; delete one (DELETE /v1/webhooks/{id})`,
        );
      }
      const w: WebhookRecord = {
        id: newId("wh_"),
        tenantId: caller.tenant.id,
        url: checked.url.href,
        secret: newWebhookSecret(),
        events: [...new Set(req.events)],
        description: req.description ?? "",
        createdAt: new Date().toISOString(),
        createdByKey: caller.keyId,
        disabledAt: null,
      };
      await store.createWebhook(w);
      c.get("log").info({ webhook: w.id, events: w.events }, "webhook created");
      return c.json({ ...webhookJson(w), secret: w.secret }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/webhooks",
      tags,
      security,
      summary: "List webhooks (deleted ones too, with disabledAt); secrets are not shown",
      responses: {
        200: json(z.object({ webhooks: z.array(WebhookSchema) }).openapi("WebhookList")),
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const list = await store.listWebhooks(hasScope(caller, "admin") ? null : caller.tenant.id);
      return c.json({ webhooks: list.map(webhookJson) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/webhooks/{id}",
      tags,
      security,
      summary: "Get a webhook (no secret)",
      request: { params: WebhookIdParam },
      responses: { 200: json(WebhookSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      return c.json(webhookJson(await visible(caller, c.req.valid("param").id)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/webhooks/{id}",
      tags,
      security,
      summary: "Delete (disable) a webhook; its pending deliveries are given up",
      request: { params: WebhookIdParam },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const w = await visible(caller, c.req.valid("param").id);
      if (!(await store.disableWebhook(w.id, new Date().toISOString()))) {
        throw new ApiError("NOT_FOUND", `webhook ${w.id} was deleted already`);
      }
      c.get("log").info({ webhook: w.id }, "webhook deleted");
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/webhooks/{id}/deliveries",
      tags,
      security,
      summary: "A webhook's deliveries, newest first: attempts, last error, delivered or given up",
      request: { params: WebhookIdParam, query: DeliveriesQuery },
      responses: {
        200: json(z.object({ deliveries: z.array(DeliverySchema) }).openapi("WebhookDeliveryList")),
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const w = await visible(caller, c.req.valid("param").id);
      const list = await store.listDeliveries(w.id, c.req.valid("query").limit ?? 100);
      return c.json({ deliveries: list.map(deliveryJson) }, 200);
    },
  );
}
