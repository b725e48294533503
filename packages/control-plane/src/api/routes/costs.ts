// Money: the operator's price sheet (GET/PUT /v1/prices, admin), cost
// reports over the ledger (GET /v1/costs, JSON or CSV) and one root
// request's cost tree (GET /v1/sandboxes/{id}/cost): every sandbox of its
// fan-out, each one's cost and share, and where its seconds went.
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import { hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import { type CostGroupBy, costReport, costReportCsv, costTree } from "../../usage/costs.ts";
import { loadPrices, PriceSheetSchema } from "../../usage/prices.ts";
import type { AppEnv, Deps } from "../context.ts";
import { body, errors, json, security } from "../openapi-helpers.ts";
import { SandboxIdParam, TrafficSchema } from "../schemas.ts";

const CostSchema = z
  .object({ cpu: z.number(), memory: z.number(), traffic: z.number(), total: z.number() })
  .openapi("Cost");

const PriceSheetAnswer = z
  .object({
    currency: z.string(),
    defaults: z.record(z.string(), z.unknown()),
    templates: z.record(z.string(), z.unknown()),
    tenants: z.record(z.string(), z.unknown()),
  })
  .openapi("PriceSheet");

const CostsQuery = z.object({
  groupBy: z
    .string()
    .regex(
      /^(sandbox|tenant|template|root|metadata\.[^\s]{1,64})$/,
      "sandbox, tenant, template, root or metadata.<key>",
    )
    .default("tenant"),
  from: z.iso.datetime({ offset: true }).optional(),
  to: z.iso.datetime({ offset: true }).optional(),
  format: z.enum(["json", "csv"]).default("json"),
});

const CostReportSchema = z
  .object({
    currency: z.string(),
    groupBy: z.string(),
    from: z.string().nullable(),
    to: z.string().nullable(),
    groups: z.array(
      z.object({
        key: z.string().nullable(),
        sandboxes: z.number().int(),
        cpuSeconds: z.number(),
        memoryGibSeconds: z.number(),
        traffic: TrafficSchema,
        cost: CostSchema,
      }),
    ),
    total: CostSchema,
    sandboxes: z.number().int(),
  })
  .openapi("CostReport");

const LatencySchema = z.object({
  placementMs: z.number().nullable(),
  queueMs: z.number().nullable(),
  startMs: z.number().nullable(),
  startPhases: z.record(z.string(), z.number()),
  runMs: z.number().nullable(),
  idleBeforeTeardownMs: z.number().nullable(),
});

const CostTreeNodeSchema = z
  .object({
    sandboxId: z.string(),
    parentId: z.string().nullable(),
    template: z.string(),
    state: z.string(),
    startPath: z.string().nullable(),
    createdAt: z.string(),
    readyAt: z.string().nullable(),
    endedAt: z.string().nullable(),
    final: z.boolean(),
    cpuSeconds: z.number(),
    memoryGibSeconds: z.number(),
    traffic: TrafficSchema,
    cost: CostSchema,
    share: z.number().openapi({ description: "This sandbox's share of the tree's cost (0-1)." }),
    subtreeCost: CostSchema,
    latency: LatencySchema,
    children: z.array(z.unknown()).openapi({ description: "CostTreeNode objects, oldest first." }),
  })
  .openapi("CostTreeNode");

const CostTreeSchema = z
  .object({
    rootId: z.string(),
    tenantId: z.string(),
    currency: z.string(),
    sandboxes: z.number().int(),
    total: CostSchema,
    tree: CostTreeNodeSchema,
  })
  .openapi("CostTree");

export function costRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const { store } = deps;

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/prices",
      tags: ["usage"],
      security,
      summary: "The price sheet in force (admin)",
      responses: { 200: json(PriceSheetAnswer), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      return c.json(await loadPrices(store), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "put",
      path: "/v1/prices",
      tags: ["usage"],
      security,
      summary: "Replaces the price sheet (admin)",
      description:
        "Rates per CPU-second, memory GiB-second and GB (10^9 bytes) of traffic per class and direction; per-template and per-tenant overrides replace the defaults field by field (tenant over template over defaults). Unpriced items cost 0.",
      request: body(PriceSheetSchema),
      responses: { 200: json(PriceSheetAnswer), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const sheet = PriceSheetSchema.parse(c.req.valid("json"));
      await store.putSetting("prices", sheet);
      return c.json(sheet, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/costs",
      tags: ["usage"],
      security,
      summary: "Cost report: the ledger priced and grouped, as JSON or CSV",
      description:
        "One usage record per sandbox (final, or interim while it lives) over sandboxes created in [from, to), priced with the sheet in force, grouped by sandbox, tenant, template, root request or a metadata key. Admin keys see every tenant.",
      request: { query: CostsQuery },
      responses: {
        200: {
          description: "The report (format=json) or its CSV (format=csv)",
          content: {
            "application/json": { schema: CostReportSchema },
            "text/csv": { schema: z.string() },
          },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const groupBy: CostGroupBy = q.groupBy.startsWith("metadata.")
        ? { metadata: q.groupBy.slice("metadata.".length) }
        : (q.groupBy as "sandbox" | "tenant" | "template" | "root");
      const report = await costReport(store, {
        tenantId: hasScope(caller, "admin") ? null : caller.tenant.id,
        groupBy,
        ...(q.from ? { from: new Date(q.from).toISOString() } : {}),
        ...(q.to ? { to: new Date(q.to).toISOString() } : {}),
      });
      if (q.format === "csv") {
        return c.body(costReportCsv(report), 200, {
          "content-type": "text/csv; charset=utf-8",
          "content-disposition": 'attachment; filename="firebreak-costs.csv"',
        }) as never;
      }
      return c.json(report, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/cost",
      tags: ["usage"],
      security,
      summary: "The cost tree of the sandbox's root request",
      description:
        "Every sandbox of the fan-out the sandbox belongs to (children created with a sandbox's token or through its platform grant, fork children, theirs), each one's cost, share of the tree's cost, and latency breakdown (placement, queue, start and its phases, run, idle before teardown).",
      request: { params: SandboxIdParam },
      responses: { 200: json(CostTreeSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const rec = await deps.sandboxes.get(caller.tenant.id, c.req.valid("param").id);
      const tree = await costTree(store, rec.rootId);
      if (!tree)
        throw new ApiError("NOT_FOUND", `no usage recorded for the root ${rec.rootId} of ${rec.id} yet`);
      return c.json(tree, 200);
    },
  );
}
