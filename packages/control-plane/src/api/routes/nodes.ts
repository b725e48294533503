// /v1/nodes: the node registry (admin), join tokens, and the join itself
// (authenticated by a join token, not an API key: the node has none).

import { randomBytes } from "node:crypto";
import type { NodeReport } from "@firebreak/node-agent";
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { sha256 } from "../../auth/keys.ts";
import { requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { NodeRecord } from "../../store/store.ts";
import type { AppEnv, Deps } from "../context.ts";
import { body, errors, json, noContent, security } from "../openapi-helpers.ts";
import {
  DrainBody,
  JoinBody,
  JoinTokenBody,
  JoinTokenSchema,
  NodeIdParam,
  NodeListSchema,
  NodePoolBody,
  NodeSchema,
} from "../schemas.ts";

const tags = ["nodes"];

function nodeJson(n: NodeRecord) {
  const r = n.report as NodeReport | null;
  return {
    id: n.id,
    address: n.address,
    state: n.state,
    leaseUntil: n.leaseUntil,
    lastSeenAt: n.lastSeenAt,
    joinedAt: n.joinedAt,
    ...(r
      ? {
          accelerator: r.accelerator,
          vcpus: r.vcpus,
          memoryMib: r.memoryMib,
          committedVcpus: r.committedVcpus,
          committedMemoryMib: r.committedMemoryMib,
          sandboxes: r.sandboxes,
          templates: r.templates.map((t) => ({
            name: t.name,
            key: t.key,
            snapshotShapes: t.snapshotShapes,
            warm: t.warm,
          })),
        }
      : {}),
  };
}

export function nodeRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const { store, sandboxes, config } = deps;

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/nodes/join-tokens",
      tags,
      security,
      summary: "Create a join token (admin): a node presents it once to join",
      request: body(JoinTokenBody, false),
      responses: { 201: json(JoinTokenSchema, "Created (the token is shown once)"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "admin");
      const b = c.req.valid("json") ?? { ttlSeconds: 3600 };
      const token = `fbj_${randomBytes(32).toString("hex")}`;
      const now = Date.now();
      const expiresAt = new Date(now + (b.ttlSeconds ?? 3600) * 1000).toISOString();
      await store.createJoinToken({
        hash: sha256(token),
        createdAt: new Date(now).toISOString(),
        expiresAt,
        createdByKey: caller.keyId,
      });
      return c.json({ token, expiresAt }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/nodes/join",
      tags,
      security: [{ joinToken: [] }],
      summary:
        "A node joins with a join token (Authorization: Bearer fbj_...), giving its address and credential",
      description:
        "The token is single use. The node's credential is the TLS pre-shared key and bearer token the control plane uses to call it; it is stored with the node record (the database is the root of trust).",
      request: body(JoinBody),
      responses: { 201: json(NodeSchema, "Joined"), ...errors },
    }),
    async (c) => {
      const auth = c.req.header("authorization") ?? "";
      const token = auth.startsWith("Bearer fbj_") ? auth.slice(7) : "";
      // SECURITY: a join token is single use and expires; nothing else lets a node in.
      if (!token || !(await store.useJoinToken(sha256(token), new Date().toISOString()))) {
        throw new ApiError(
          "UNAUTHENTICATED",
          "a valid, unused join token is required (POST /v1/nodes/join-tokens)",
        );
      }
      const b = c.req.valid("json");
      // SECURITY: a join token admits a new node, it does not hand over an
      // existing one: a node id already joined with another credential is
      // refused (its address and secret stay), until an admin removes it. The
      // same node joining again (same credential, after a restart) is fine.
      const known = await store.getNode(b.nodeId);
      if (known && known.secret !== b.secret) {
        throw new ApiError(
          "CONFLICT",
          `node ${b.nodeId} has already joined with another credential; remove it first (DELETE /v1/nodes/${b.nodeId}) or join under another id (firebreak node --node-id)`,
        );
      }
      const now = new Date().toISOString();
      const rec: NodeRecord = {
        id: b.nodeId,
        address: b.address,
        secret: b.secret,
        state: "active",
        leaseUntil: new Date(Date.now() + config.nodeLeaseMs).toISOString(),
        report: null,
        joinedAt: now,
        lastSeenAt: null,
      };
      await store.upsertNode(rec);
      await sandboxes.nodesChanged();
      c.get("log").info({ node: b.nodeId, address: b.address }, "node joined");
      return c.json(nodeJson(rec), 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/nodes",
      tags,
      security,
      summary: "List nodes with their state, lease and last report (admin)",
      responses: { 200: json(NodeListSchema), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      return c.json({ nodes: (await store.listNodes()).map(nodeJson) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/nodes/{id}/drain",
      tags,
      security,
      summary: "Drain a node (admin): no new sandboxes there; running ones stay. draining: false undoes it",
      request: { params: NodeIdParam, ...body(DrainBody, false) },
      responses: { 200: json(NodeSchema), ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const { id } = c.req.valid("param");
      const { draining } = c.req.valid("json") ?? { draining: true };
      const n = await store.getNode(id);
      if (!n) throw new ApiError("NOT_FOUND", `no node ${id}`);
      await sandboxes.drainNode(id, draining);
      return c.json(nodeJson((await store.getNode(id))!), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/nodes/{id}/pools",
      tags,
      security,
      summary: "Keep `size` VMs of a template and shape restored ahead of time on a node (admin; 0 stops)",
      request: { params: NodeIdParam, ...body(NodePoolBody) },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const { id } = c.req.valid("param");
      const b = c.req.valid("json");
      await sandboxes.setPool(id, b.template, b.size, { vcpus: b.vcpus, memoryMib: b.memoryMib });
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/v1/nodes/{id}",
      tags,
      security,
      summary: "Remove a node from the registry (admin); refused while it holds live sandboxes",
      request: { params: NodeIdParam },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      requireScope(c, "admin");
      const { id } = c.req.valid("param");
      if (!(await store.getNode(id))) throw new ApiError("NOT_FOUND", `no node ${id}`);
      const live = await store.listLiveSandboxesOnNode(id);
      if (live.length) {
        throw new ApiError(
          "CONFLICT",
          `node ${id} holds ${live.length} live sandboxes; drain it and kill them first`,
        );
      }
      await store.removeNode(id);
      await sandboxes.nodesChanged();
      return c.body(null, 204);
    },
  );
}
