// /v1/sandboxes/{id}/ports: which ports of a sandbox are public (reachable
// through ingress without the sandbox's access token), and their URLs.
import { createRoute, type OpenAPIHono, z } from "@hono/zod-openapi";
import type { AppEnv, Deps } from "../api/context.ts";
import { body, errors, json, security } from "../api/openapi-helpers.ts";
import { SandboxIdParam } from "../api/schemas.ts";
import { requireScope } from "../auth/middleware.ts";
import { ApiError } from "../errors.ts";
import { isFinalState } from "../store/store.ts";
import { AGENT_PORT, ingressDomain, PATH_PREFIX } from "./config.ts";
import { publicPortsOf } from "./public-ports.ts";

const tags = ["ingress"];

const PortParams = SandboxIdParam.extend({
  port: z.coerce
    .number()
    .int()
    .min(1)
    .max(65535)
    .openapi({ param: { name: "port", in: "path" }, example: 8000 }),
});

const PortBody = z.object({ public: z.boolean() }).strict().openapi("PortSettings");

const PortSchema = z
  .object({
    port: z.number().int(),
    public: z.boolean(),
    /** `<port>-<id>.<domain>`: needs wildcard DNS for the domain (or a Host header). */
    host: z.string(),
    /** http://<host>[:<listen port>]/ as seen from this request. */
    url: z.string(),
    /** Path-based URL on the control plane's own address. */
    path: z.string(),
  })
  .openapi("Port");

const PortListSchema = z.object({ ports: z.array(PortSchema) }).openapi("PortList");

function describe(id: string, port: number, isPublic: boolean, requestUrl: string) {
  const host = `${port}-${id}.${ingressDomain()}`;
  const listenPort = new URL(requestUrl).port;
  return {
    port,
    public: isPublic,
    host,
    url: `http://${host}${listenPort ? `:${listenPort}` : ""}/`,
    path: `${PATH_PREFIX}${id}/${port}/`,
  };
}

export function ingressRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const ports = publicPortsOf(deps.store);

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/ports/{port}",
      tags,
      security,
      summary: "Make a port public or private",
      description:
        "A public port is served through ingress without the sandbox's access token. Ports are private by default; 49983 (the guest agent) is never served.",
      request: { params: PortParams, ...body(PortBody) },
      responses: { 200: json(PortSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id, port } = c.req.valid("param");
      if (port === AGENT_PORT) {
        throw new ApiError(
          "VALIDATION_FAILED",
          `port ${AGENT_PORT} is the guest agent's; it is never served through ingress`,
        );
      }
      const rec = await deps.sandboxes.get(caller.tenant.id, id);
      if (isFinalState(rec.state)) throw new ApiError("CONFLICT", `sandbox ${id} is ${rec.state}`);
      const isPublic = c.req.valid("json").public;
      await ports.set(id, port, isPublic, `key:${caller.keyId}`);
      return c.json(describe(id, port, isPublic, c.req.url), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/ports",
      tags,
      security,
      summary: "List the public ports",
      responses: { 200: json(PortListSchema), ...errors },
      request: { params: SandboxIdParam },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id } = c.req.valid("param");
      await deps.sandboxes.get(caller.tenant.id, id);
      const list = await ports.list(id);
      return c.json({ ports: list.map((p) => describe(id, p, true, c.req.url)) }, 200);
    },
  );
}
