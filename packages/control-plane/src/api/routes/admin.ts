// /v1/templates, /v1/keys, /v1/tenants, /v1/usage, /v1/health.
import { builtinTemplates, parseTemplateSpec, type TemplateSpec } from "@firebreak/node-agent";
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { newApiKey, newId } from "../../auth/keys.ts";
import { actor, hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError, toApiError } from "../../errors.ts";
import type { ApiKeyRecord, Scope, UsageGroupBy } from "../../store/store.ts";
import { overheadReport, startOf } from "../../usage/overhead.ts";
import type { AppEnv, Deps } from "../context.ts";
import { body, errors, json, noContent, security } from "../openapi-helpers.ts";
import {
  BuildEventSchema,
  CreatedKeySchema,
  CreateKeyBody,
  CreateTenantBody,
  HealthSchema,
  IdParam,
  KeyListSchema,
  OverheadQuery,
  OverheadRecordsQuery,
  OverheadRecordsSchema,
  OverheadReportSchema,
  TemplateBuildBody,
  TemplateListSchema,
  TemplateNameParam,
  TenantListSchema,
  TenantSchema,
  UsageGroupsSchema,
  UsageQuery,
  UsageRecordsQuery,
  UsageRecordsSchema,
} from "../schemas.ts";

const keyJson = (k: ApiKeyRecord) => ({
  id: k.id,
  name: k.name,
  tenantId: k.tenantId,
  scopes: k.scopes,
  createdAt: k.createdAt,
  revokedAt: k.revokedAt,
  createdByKey: k.createdByKey,
});

/** Build progress held for a slow client before run-step output lines are dropped. */
const MAX_BUILD_STREAM_QUEUE_BYTES = 1024 * 1024;

export function adminRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const { store, node } = deps;
  const templates = deps.sandboxes.templates;

  // Templates

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/templates",
      tags: ["templates"],
      security,
      summary: "Build a template (built-in name or spec); streams progress",
      description:
        "Built-in names and operator templates need an admin key; other keys build templates their tenant owns (names are shared: another tenant's name is 409). A spec's files[] is refused (400).",
      request: body(TemplateBuildBody),
      responses: {
        200: {
          description: "NDJSON stream of TemplateBuildEvent; the last line is done or error",
          content: { "application/x-ndjson": { schema: BuildEventSchema } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = actor(requireScope(c, "templates"));
      const b = c.req.valid("json");
      let name: string;
      if ("name" in b) {
        name = b.name;
        if (!(await builtinTemplates()).includes(name)) {
          throw new ApiError(
            "TEMPLATE_NOT_FOUND",
            `no built-in template named ${name}; send {"spec": {...}} to build your own`,
          );
        }
      } else {
        let spec: TemplateSpec;
        try {
          spec = parseTemplateSpec(b.spec, "(request body)");
        } catch (e) {
          throw toApiError(e);
        }
        // SECURITY: a spec from the API never names host files (docs/API.md, Templates).
        if (spec.files.length) {
          throw new ApiError(
            "VALIDATION_FAILED",
            "spec.files: files are not accepted over the API (they would be read on the server); write them with run steps (cat > /path <<'EOF' ... EOF) or build the spec locally as root: firebreak template build spec.json",
          );
        }
        name = spec.name;
      }
      const build = await templates.beginBuild(name, caller);
      const log = c.get("log");
      const enc = new TextEncoder();
      // SECURITY: run steps are untrusted and their output lines arrive as
      // progress faster than a slow client may read. The build cannot wait for
      // the client, so the queue is capped in bytes: output lines that do not
      // fit are dropped (and counted in the next line that fits); step lines,
      // `done` and `error` are always kept.
      let dropped = 0;
      const out = new ReadableStream<Uint8Array>(
        {
          async start(ctl) {
            let last = { index: 0, total: 0 };
            const send = (o: {
              type: string;
              step?: string;
              index?: number;
              total?: number;
              [k: string]: unknown;
            }) => {
              try {
                if (o.type === "progress" && o.step === "run" && (ctl.desiredSize ?? 0) <= 0) {
                  dropped++;
                  return;
                }
                if (o.index !== undefined && o.total !== undefined) last = { index: o.index, total: o.total };
                if (dropped) {
                  ctl.enqueue(
                    enc.encode(
                      `${JSON.stringify({ type: "progress", step: "run", ...last, detail: `(${dropped} output lines dropped: the client read too slowly)` })}\n`,
                    ),
                  );
                  dropped = 0;
                }
                ctl.enqueue(enc.encode(`${JSON.stringify(o)}\n`));
              } catch {
                // the client went away; the build goes on
              }
            };
            try {
              const t = await build.run(() =>
                node.buildTemplate("name" in b ? { name: b.name } : { spec: b.spec }, (p) =>
                  send({ type: "progress", ...p }),
                ),
              );
              const owner = await store.getTemplateOwner(t.name);
              send({ type: "done", template: { ...t, tenantId: owner?.tenantId ?? null } });
            } catch (e) {
              const err = toApiError(e);
              log.warn({ err: e }, "template build failed");
              send({ type: "error", error: { code: err.code, message: err.message } });
            } finally {
              try {
                ctl.close();
              } catch {
                // closed
              }
            }
          },
        },
        new ByteLengthQueuingStrategy({ highWaterMark: MAX_BUILD_STREAM_QUEUE_BYTES }),
      );
      return new Response(out, { status: 200, headers: { "content-type": "application/x-ndjson" } }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/templates",
      tags: ["templates"],
      security,
      summary: "List the templates this key may use: operator templates and its tenant's (admin: all)",
      responses: { 200: json(TemplateListSchema), ...errors },
    }),
    async (c) => c.json({ templates: await templates.list(actor(c.get("caller"))) }, 200),
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/templates/{name}",
      tags: ["templates"],
      security,
      summary: "Delete a template (refused while sandboxes use it)",
      description:
        "Another tenant's template is 404 TEMPLATE_NOT_FOUND; an operator template needs an admin key (403).",
      request: { params: TemplateNameParam },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = actor(requireScope(c, "templates"));
      const { name } = c.req.valid("param");
      await templates.delete(name, caller, async () => {
        const users = (await store.listLiveSandboxes()).filter((s) => s.template === name);
        if (users.length) {
          throw new ApiError(
            "CONFLICT",
            `template ${name} is used by ${users.length} live sandboxes; kill them first`,
          );
        }
        await node.deleteTemplate(name);
      });
      return c.body(null, 204);
    },
  );

  // Keys

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/keys",
      tags: ["keys"],
      security,
      summary: "Create an API key (shown once)",
      description:
        "Scopes may not exceed the caller's; tenantId other than the caller's needs admin. The new key is recorded as minted by the caller: revoking the caller revokes it. At most maxKeys unrevoked keys per tenant (429).",
      request: body(CreateKeyBody),
      responses: { 201: json(CreatedKeySchema, "Created"), ...errors },
    }),
    async (c) => {
      const caller = c.get("caller");
      const b = c.req.valid("json");
      const scopes = (b.scopes ?? ["sandboxes"]) as Scope[];
      for (const s of scopes) {
        if (!hasScope(caller, s))
          throw new ApiError("FORBIDDEN", `a key cannot grant the "${s}" scope it lacks`);
      }
      const tenantId = b.tenantId ?? caller.tenant.id;
      let tenant = caller.tenant;
      if (tenantId !== caller.tenant.id) {
        if (!hasScope(caller, "admin"))
          throw new ApiError("FORBIDDEN", "only admin keys create keys for other tenants");
        const other = await store.getTenant(tenantId);
        if (!other) throw new ApiError("NOT_FOUND", `no tenant ${tenantId}`);
        tenant = other;
      }
      const { key, hash } = newApiKey();
      const rec: ApiKeyRecord = {
        id: newId("key"),
        tenantId,
        name: b.name,
        hash,
        scopes: [...new Set(scopes)],
        createdAt: new Date().toISOString(),
        revokedAt: null,
        createdByKey: caller.keyId,
      };
      // INVARIANT: keys minted over the API have a minter (revoking it revokes them) and count against maxKeys.
      const made = await store.createKeyWithinLimit(rec, tenant.limits.maxKeys);
      if (!made.ok) {
        throw new ApiError(made.reason === "maxKeys" ? "QUOTA_EXCEEDED" : "UNAUTHENTICATED", made.message);
      }
      return c.json({ ...keyJson(rec), key }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/keys",
      tags: ["keys"],
      security,
      summary: "List keys (without secrets); admin keys see every tenant's",
      responses: { 200: json(KeyListSchema), ...errors },
    }),
    async (c) => {
      const caller = c.get("caller");
      const keys = await store.listKeys(hasScope(caller, "admin") ? null : caller.tenant.id);
      return c.json({ keys: keys.map(keyJson) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/keys/{id}",
      tags: ["keys"],
      security,
      summary: "Revoke a key, and every key it minted",
      description:
        "Own tenant's keys (admin: any). A key may revoke only keys whose scopes it has: a non-admin key cannot revoke an admin key (403). Revocation cascades to the keys the revoked key minted, transitively.",
      request: { params: IdParam },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = c.get("caller");
      const { id } = c.req.valid("param");
      const target = await store.getKey(id);
      const admin = hasScope(caller, "admin");
      if (!target || target.revokedAt !== null || (!admin && target.tenantId !== caller.tenant.id)) {
        throw new ApiError("NOT_FOUND", `no active key ${id}`);
      }
      // INVARIANT: a key revokes only keys whose every scope it has (non-admin keys never revoke admin keys).
      const lacking = target.scopes.filter((s) => !hasScope(caller, s));
      if (lacking.length) {
        throw new ApiError(
          "FORBIDDEN",
          `key ${id} has the ${lacking.map((s) => `"${s}"`).join(", ")} scope this key lacks; revoke it with a key that has it`,
        );
      }
      const revoked = await store.revokeKeyTree(id, new Date().toISOString());
      if (!revoked.length) throw new ApiError("NOT_FOUND", `no active key ${id}`);
      c.get("log").info({ revoked }, "keys revoked");
      return c.body(null, 204);
    },
  );

  // Tenants

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/tenants",
      tags: ["tenants"],
      security,
      summary: "Create a tenant (admin)",
      request: body(CreateTenantBody),
      responses: { 201: json(TenantSchema, "Created"), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const b = c.req.valid("json");
      if ((await store.listTenants()).some((t) => t.name === b.name)) {
        throw new ApiError("CONFLICT", `a tenant named ${b.name} exists`);
      }
      const t = {
        id: newId("tn"),
        name: b.name,
        limits: { ...deps.config.defaultLimits, ...b.limits },
        createdAt: new Date().toISOString(),
      };
      await store.createTenant(t);
      return c.json(t, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/tenants",
      tags: ["tenants"],
      security,
      summary: "List tenants (admin)",
      responses: { 200: json(TenantListSchema), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      return c.json({ tenants: await store.listTenants() }, 200);
    },
  );

  // Usage

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/usage",
      tags: ["usage"],
      security,
      summary: "Usage grouped by tenant, template, root sandbox or a metadata key",
      description:
        "Sums one record per sandbox (final, or interim while it lives) over sandboxes created in [from, to). Admin keys see every tenant.",
      request: { query: UsageQuery },
      responses: { 200: json(UsageGroupsSchema), ...errors },
    }),
    async (c) => {
      const caller = c.get("caller");
      const q = c.req.valid("query");
      const groupBy: UsageGroupBy = q.groupBy.startsWith("metadata.")
        ? { metadata: q.groupBy.slice("metadata.".length) }
        : (q.groupBy as "tenant" | "template" | "root");
      const groups = await store.usageGroups({
        tenantId: hasScope(caller, "admin") ? null : caller.tenant.id,
        groupBy,
        ...(q.from ? { from: new Date(q.from).toISOString() } : {}),
        ...(q.to ? { to: new Date(q.to).toISOString() } : {}),
      });
      return c.json({ groups }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/usage/records",
      tags: ["usage"],
      security,
      summary: "Usage records: one per sandbox (final: false while it lives)",
      request: { query: UsageRecordsQuery },
      responses: { 200: json(UsageRecordsSchema), ...errors },
    }),
    async (c) => {
      const caller = c.get("caller");
      const q = c.req.valid("query");
      const records = await store.listUsage({
        tenantId: hasScope(caller, "admin") ? null : caller.tenant.id,
        ...(q.sandboxId ? { sandboxId: q.sandboxId } : {}),
        limit: q.limit,
      });
      // The meter's raw state is the control plane's own business.
      return c.json(
        { records: records.map(({ meterState: _internal, ...r }) => ({ ...r, account: "tenant" as const })) },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/usage/overhead",
      tags: ["usage"],
      security,
      summary: "The platform's overhead account per node and template (admin)",
      description:
        "CPU the nodes spent that no tenant is charged for (warm pools, restores and boots before hand-over, snapshot preparation, template builds, failed starts), per node and template with the CPU per kind of work, over records that ended in [from, to).",
      request: { query: OverheadQuery },
      responses: { 200: json(OverheadReportSchema), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const q = c.req.valid("query");
      return c.json(
        await overheadReport(store, {
          ...(q.from ? { from: new Date(q.from).toISOString() } : {}),
          ...(q.to ? { to: new Date(q.to).toISOString() } : {}),
        }),
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/usage/overhead/records",
      tags: ["usage"],
      security,
      summary: "The platform's overhead records, newest first (admin)",
      request: { query: OverheadRecordsQuery },
      responses: { 200: json(OverheadRecordsSchema), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const q = c.req.valid("query");
      const rows = await store.listOverhead({
        ...(q.from ? { from: new Date(q.from).toISOString() } : {}),
        ...(q.to ? { to: new Date(q.to).toISOString() } : {}),
        limit: q.limit,
      });
      return c.json(
        { records: rows.map((r) => ({ ...r, account: "platform" as const, from: startOf(r) })) },
        200,
      );
    },
  );

  // Health (no key needed)

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/health",
      tags: ["health"],
      summary: "Liveness and the node's accelerator",
      responses: { 200: json(HealthSchema), ...errors },
    }),
    (c) => {
      const info = node.info();
      return c.json(
        {
          ok: true as const,
          accelerator: info.accelerator,
          node: { id: node.id, ...info, capacity: node.capacity() },
        },
        200,
      );
    },
  );
}
