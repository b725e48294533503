// /v1/services: private services the operator declares (admin), which sandboxes
// bind by name in their egress policy. Non-admin keys see the services their
// tenant may bind, with injected credentials redacted.
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { hasScope, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { PrivateService } from "../../node/node-client.ts";
import type { AppEnv, Deps } from "../context.ts";
import { body, errors, json, noContent, security } from "../openapi-helpers.ts";
import { ServiceBody, ServiceListSchema, ServiceNameParam, ServiceSchema } from "../schemas.ts";

const tags = ["services"];

/** SECURITY: an injected credential is shown to admin keys only. */
function serviceJson(s: PrivateService, admin: boolean) {
  return {
    name: s.name,
    address: s.address,
    port: s.port,
    protocol: s.protocol,
    ...(s.tenants ? { tenants: s.tenants } : {}),
    ...(s.inject ? { inject: { header: s.inject.header, value: admin ? s.inject.value : "***" } } : {}),
  };
}

export function serviceRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const { node, sandboxes } = deps;

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/services",
      tags,
      security,
      summary: "Declare (or replace) a private service (admin)",
      description:
        "Sandboxes whose tenant is in `tenants` (absent: every tenant) bind it by listing its name in policy.services; they reach it at that name and port only. Sandboxes bound already keep the old definition until their policy is updated.",
      request: body(ServiceBody),
      responses: { 201: json(ServiceSchema, "Declared"), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const s = await node.putService(c.req.valid("json") as PrivateService);
      return c.json(serviceJson(s, true), 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/services",
      tags,
      security,
      summary:
        "List private services (admin: all; others: the ones their tenant may bind, credentials redacted)",
      responses: { 200: json(ServiceListSchema), ...errors },
    }),
    async (c) => {
      const caller = c.get("caller");
      const admin = hasScope(caller, "admin");
      const list = await sandboxes.services(admin ? null : caller.tenant.id);
      return c.json({ services: list.map((s) => serviceJson(s, admin)) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/services/{name}",
      tags,
      security,
      summary: "Remove a private service (admin); bound sandboxes keep it until their policy is updated",
      request: { params: ServiceNameParam },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const { name } = c.req.valid("param");
      if (!(await node.removeService(name))) throw new ApiError("NOT_FOUND", `no private service ${name}`);
      return c.body(null, 204);
    },
  );
}
