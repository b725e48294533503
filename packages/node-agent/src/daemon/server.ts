// The node daemon's listener: the Connect service `firebreak.node.v1.Node`
// and the sandbox port proxy, behind the node credential.
//
//   POST /firebreak.node.v1.Node/<Method>        typed actions (Connect, JSON)
//   ANY  /sandboxes/<id>/ports/<port>/<path>     HTTP (and WebSocket upgrades) to a
//                                                port inside the sandbox; for the
//                                                guest agent's port the node adds
//                                                the sandbox's access token itself
//
// Listens on a unix socket (root-only, the local control plane and CLI) or on
// TCP with TLS-PSK (the pre-shared key is the node credential: mutual
// authentication and encryption without a PKI). Every request also carries
// the credential as a bearer token.
import { timingSafeEqual } from "node:crypto";
import fs from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import type net from "node:net";
import type { Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";
import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ACCESS_TOKEN_HEADER, ENVD_PORT, nodePb } from "@firebreak/protocol";
import type { EgressPolicy, PrivateService } from "../egress/index.ts";
import { FirebreakError } from "../errors.ts";
import { toConnectError } from "./errors.ts";
import type { NodeService, StartedInfo, Usage } from "./node-service.ts";

const { Node } = nodePb;

/** Cipher suites for TLS-PSK: ephemeral ECDH, so a leaked credential does not decrypt past traffic. */
export const PSK_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384";

export type DaemonListen = { unix: string } | { host: string; port: number };

export interface DaemonOptions {
  service: NodeService;
  listen: DaemonListen;
  /** The node credential (>= 32 bytes of randomness, hex). */
  secret: string;
  log?: (line: string) => void;
}

export interface RunningDaemon {
  /** `unix:<path>` or `https://host:port`. */
  address: string;
  close(): Promise<void>;
}

/** Largest request head the proxy forwards, and how long a sandbox may take to answer one. */
const MAX_HEADER_BYTES = 32 * 1024;

function bearerOk(req: http.IncomingMessage, secret: Buffer): boolean {
  const h = req.headers.authorization ?? "";
  if (!h.startsWith("Bearer ")) return false;
  const got = Buffer.from(h.slice(7));
  return got.length === secret.length && timingSafeEqual(got, secret);
}

function usageOut(u: Usage | undefined) {
  if (!u) return undefined;
  return create(nodePb.UsageSampleSchema, {
    atMs: u.atMs,
    cpuNanos: BigInt(Math.round(u.cpuNanos)),
    memoryBytes: BigInt(Math.round(u.memoryBytes)),
    memoryPeakBytes: BigInt(Math.round(u.memoryPeakBytes)),
    traffic: Object.fromEntries(
      Object.entries(u.traffic ?? {}).map(([k, v]) => [
        k,
        create(nodePb.TrafficBytesSchema, { tx: BigInt(v.tx), rx: BigInt(v.rx) }),
      ]),
    ),
  });
}

function infoOut(i: StartedInfo) {
  return create(nodePb.SandboxInfoSchema, {
    id: i.id,
    accessToken: i.accessToken,
    path: i.path,
    totalMs: i.totalMs,
    phases: i.phases,
    ...(i.fallback ? { fallback: i.fallback } : {}),
    policyJson: JSON.stringify(i.policy),
  });
}

function parsePolicy(p: { json: string; tenant: string; admin: boolean } | undefined) {
  if (!p) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(p.json);
  } catch {
    throw new FirebreakError("SHAPE_INVALID", "the egress policy is not valid JSON");
  }
  // SECURITY: who made the policy (admin: private ranges may be allowed) is the
  // authenticated caller's flag, never what the JSON says (egress/README.md).
  const policy = (
    parsed && typeof parsed === "object" && !Array.isArray(parsed)
      ? { ...parsed, grantedBy: p.admin ? "admin" : "tenant" }
      : parsed
  ) as EgressPolicy;
  return { policy, tenant: p.tenant, admin: p.admin };
}

/** Runs fn and turns its errors into Connect errors carrying the node's code. */
async function call<T>(fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw toConnectError(e);
  }
}

function routes(svc: NodeService) {
  return (router: ConnectRouter) =>
    router.service(Node, {
      report: () =>
        call(async () => {
          const r = await svc.report();
          return create(nodePb.NodeReportSchema, {
            ...r,
            memoryMib: BigInt(r.memoryMib),
            committedMemoryMib: BigInt(r.committedMemoryMib),
            freeMemoryMib: BigInt(r.freeMemoryMib),
            templates: r.templates.map((t) => create(nodePb.TemplateReportSchema, t)),
          });
        }),
      create: (req) =>
        call(async () => {
          const policy = parsePolicy(req.policy);
          const info = await svc.create({
            template: req.template,
            ...(req.shape ? { shape: { vcpus: req.shape.vcpus, memoryMib: req.shape.memoryMib } } : {}),
            envVars: req.envVars,
            ...(policy ? { policy } : {}),
            ...(req.diskMib !== undefined ? { diskMib: req.diskMib } : {}),
            platformId: req.platformId,
            ...(req.fromSnapshot !== undefined ? { fromSnapshot: req.fromSnapshot } : {}),
          });
          return infoOut(info);
        }),
      kill: (req) =>
        call(async () => {
          const last = usageOut(await svc.kill(req.id, req.reason || "killed"));
          return create(nodePb.KillResponseSchema, last ? { last } : {});
        }),
      pause: (req) =>
        call(async () => {
          const last = usageOut(await svc.pause(req.id));
          return create(nodePb.KillResponseSchema, last ? { last } : {});
        }),
      resume: (req) => call(async () => create(nodePb.ResumeResponseSchema, await svc.resume(req.id))),
      fork: (req) =>
        call(async () =>
          create(nodePb.ForkResponseSchema, { children: (await svc.fork(req.id, req.count)).map(infoOut) }),
        ),
      snapshotSandbox: (req) =>
        call(async () => create(nodePb.SnapshotResponseSchema, await svc.snapshot(req.id))),
      deleteSnapshot: (req) =>
        call(async () => {
          await svc.deleteSnapshot(req.snapshotId);
          return create(nodePb.EmptySchema, {});
        }),
      status: (req) =>
        call(() =>
          create(nodePb.StatusResponseSchema, {
            sandboxes: req.ids.map((id) => {
              const s = svc.status(id);
              return create(nodePb.SandboxStatusSchema, {
                id,
                state: s.state,
                ...(s.state === "gone" ? { reason: s.reason, crashed: s.crashed } : {}),
              });
            }),
          }),
        ),
      usage: (req) =>
        call(async () => {
          const samples: Record<string, ReturnType<typeof usageOut> & object> = {};
          for (const id of req.ids) {
            const u = usageOut(await svc.usage(id).catch(() => undefined));
            if (u) samples[id] = u;
          }
          return create(nodePb.UsageResponseSchema, { samples });
        }),
      updatePolicy: (req) =>
        call(async () => {
          const p = parsePolicy(req.policy);
          if (!p) throw new FirebreakError("SHAPE_INVALID", "a policy is required");
          return create(nodePb.PolicyResponseSchema, {
            json: JSON.stringify(await svc.updatePolicy(req.id, p.policy)),
          });
        }),
      listServices: () =>
        call(() => create(nodePb.JsonListSchema, { json: svc.listServices().map((s) => JSON.stringify(s)) })),
      putService: (req) =>
        call(async () => {
          let s: PrivateService;
          try {
            s = JSON.parse(req.json) as PrivateService;
          } catch {
            throw new FirebreakError("SHAPE_INVALID", "the service is not valid JSON");
          }
          return create(nodePb.JsonValueSchema, { json: JSON.stringify(await svc.putService(s)) });
        }),
      removeService: (req) =>
        call(async () =>
          create(nodePb.RemovedResponseSchema, { removed: await svc.removeService(req.name) }),
        ),
      listTemplates: () =>
        call(async () =>
          create(nodePb.TemplatesResponseSchema, {
            templates: (await svc.listTemplates()).map((t) =>
              create(nodePb.TemplateInfoSchema, { ...t, imageBytes: BigInt(t.imageBytes) }),
            ),
          }),
        ),
      async *buildTemplate(req) {
        // Progress goes out as it happens: a queue the build pushes to and this
        // generator drains (pull-based: the build never waits on the wire).
        const queue: nodePb.BuildEvent[] = [];
        let wake: (() => void) | undefined;
        let done = false;
        let failure: unknown;
        const source =
          req.source.case === "name"
            ? { name: req.source.value }
            : req.source.case === "specJson"
              ? { spec: JSON.parse(req.source.value) as unknown }
              : undefined;
        if (!source)
          throw toConnectError(new FirebreakError("TEMPLATE_SPEC_INVALID", "name or spec required"));
        const build = svc
          .buildTemplate(source, (p) => {
            // Keep only the newest progress lines if the caller reads slowly.
            if (queue.length > 256) queue.splice(0, queue.length - 256);
            queue.push(
              create(nodePb.BuildEventSchema, {
                event: {
                  case: "progress",
                  value: create(nodePb.BuildProgressSchema, {
                    step: p.step,
                    index: p.index,
                    total: p.total,
                    detail: p.detail ?? "",
                  }),
                },
              }),
            );
            wake?.();
          })
          .then(
            (t) => {
              queue.push(
                create(nodePb.BuildEventSchema, {
                  event: {
                    case: "done",
                    value: create(nodePb.TemplateInfoSchema, { ...t, imageBytes: BigInt(t.imageBytes) }),
                  },
                }),
              );
            },
            (e) => {
              failure = e;
            },
          )
          .finally(() => {
            done = true;
            wake?.();
          });
        for (;;) {
          const next = queue.shift();
          if (next) {
            yield next;
            continue;
          }
          if (done) break;
          await new Promise<void>((r) => {
            wake = r;
          });
          wake = undefined;
        }
        await build;
        if (failure) throw toConnectError(failure);
      },
      deleteTemplate: (req) =>
        call(async () =>
          create(nodePb.RemovedResponseSchema, { removed: await svc.deleteTemplate(req.name) }),
        ),
      setPool: (req) =>
        call(async () => {
          await svc.setPool(
            req.template,
            req.size,
            req.shape ? { vcpus: req.shape.vcpus, memoryMib: req.shape.memoryMib } : {},
          );
          return create(nodePb.EmptySchema, {});
        }),
      drain: (req) =>
        call(() => {
          svc.drain(req.draining);
          return create(nodePb.EmptySchema, {});
        }),
      accessToken: (req) =>
        call(() => {
          let token = "";
          try {
            token = svc.endpoint(req.id).accessToken;
          } catch {
            try {
              token = svc.runtime.get(req.id).accessToken; // paused: still its token
            } catch {
              token = "";
            }
          }
          return create(nodePb.JsonValueSchema, { json: token });
        }),
      listSandboxes: () =>
        call(() =>
          create(nodePb.ListSandboxesResponseSchema, {
            sandboxes: svc.listSandboxes().map((s) =>
              create(nodePb.SandboxStatusSchema, {
                id: s.id,
                state: s.state,
                ...(s.state === "gone" ? { reason: s.reason, crashed: s.crashed } : {}),
              }),
            ),
          }),
        ),
    });
}

const PORT_PATH = /^\/sandboxes\/([a-z0-9]{1,64})\/ports\/(\d{1,5})(\/.*)?$/;

/** Where a port request goes: the sandbox's address, and the token for the agent's port. */
function portTarget(svc: NodeService, url: string) {
  const m = PORT_PATH.exec(url.split("?")[0] ?? "");
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  const query = url.includes("?") ? url.slice(url.indexOf("?")) : "";
  return { id: m[1]!, port, path: `${m[3] ?? "/"}${query}` };
}

function forwardHeaders(req: http.IncomingMessage, port: number, token: string): http.OutgoingHttpHeaders {
  const headers: http.OutgoingHttpHeaders = { ...req.headers };
  delete headers.authorization; // the node credential stays here
  const user = req.headers["x-firebreak-envd-authorization"];
  delete headers["x-firebreak-envd-authorization"];
  if (typeof user === "string") headers.authorization = user; // the envd user (Basic <user>:)
  delete headers.host;
  delete headers[ACCESS_TOKEN_HEADER];
  // INVARIANT: only the node knows and adds the guest agent's token.
  if (port === ENVD_PORT) headers[ACCESS_TOKEN_HEADER] = token;
  return headers;
}

function proxyRequest(svc: NodeService, req: http.IncomingMessage, res: http.ServerResponse): void {
  const t = portTarget(svc, req.url ?? "");
  if (!t) {
    res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
    return;
  }
  let ep: { host: string; accessToken: string };
  try {
    ep = svc.endpoint(t.id);
  } catch (e) {
    const code = e instanceof FirebreakError ? e.code : "INTERNAL";
    res
      .writeHead(code === "SANDBOX_NOT_FOUND" ? 404 : 409, { "content-type": "application/json" })
      .end(JSON.stringify({ code, message: (e as Error).message }));
    return;
  }
  const upstream = http.request({
    host: ep.host,
    port: t.port,
    path: t.path,
    method: req.method,
    headers: forwardHeaders(req, t.port, ep.accessToken),
    maxHeaderSize: MAX_HEADER_BYTES,
  });
  upstream.on("response", (up) => {
    const status = up.statusCode ?? 0;
    // SECURITY: a guest's status line or headers must not throw in writeHead.
    if (status < 100 || status > 599) {
      up.destroy();
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" }).end("bad gateway\n");
      else res.destroy();
      return;
    }
    try {
      res.writeHead(status, up.rawHeaders);
    } catch {
      up.destroy();
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" }).end("bad gateway\n");
      return;
    }
    // Backpressure both ways: a slow caller slows the guest, not the node's memory.
    pipeline(up, res).catch(() => res.destroy());
  });
  upstream.on("error", () => {
    if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" }).end("nothing answered\n");
    else res.destroy();
  });
  pipeline(req, upstream).catch(() => upstream.destroy());
}

function proxyUpgrade(svc: NodeService, req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
  const t = portTarget(svc, req.url ?? "");
  let ep: { host: string; accessToken: string } | undefined;
  try {
    if (t) ep = svc.endpoint(t.id);
  } catch {
    ep = undefined;
  }
  if (!t || !ep) {
    socket.end("HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\n");
    return;
  }
  socket.on("error", () => {});
  const upstream = http.request({
    host: ep.host,
    port: t.port,
    path: t.path,
    method: req.method,
    headers: forwardHeaders(req, t.port, ep.accessToken),
    maxHeaderSize: MAX_HEADER_BYTES,
  });
  upstream.on("upgrade", (up, upSocket, upHead) => {
    const lines = [`HTTP/1.1 ${up.statusCode ?? 101} ${up.statusMessage ?? "Switching Protocols"}`];
    for (let i = 0; i < up.rawHeaders.length; i += 2) {
      const k = up.rawHeaders[i]!;
      const v = up.rawHeaders[i + 1]!;
      if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) continue;
      lines.push(`${k}: ${v}`);
    }
    socket.write(`${lines.join("\r\n")}\r\n\r\n`);
    if (upHead.length) socket.write(upHead);
    if (head.length) upSocket.write(head);
    upSocket.on("error", () => socket.destroy());
    socket.on("error", () => upSocket.destroy());
    pipeline(upSocket, socket).catch(() => {});
    pipeline(socket, upSocket).catch(() => {});
  });
  upstream.on("response", (up) => {
    // Not upgraded: relay the refusal and close.
    up.resume();
    socket.end(`HTTP/1.1 ${up.statusCode ?? 502} Refused\r\nconnection: close\r\n\r\n`);
  });
  upstream.on("error", () => socket.end("HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\n"));
  upstream.end();
}

/** Starts the daemon's listener. */
export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  const secret = Buffer.from(opts.secret);
  if (secret.length < 32)
    throw new FirebreakError("INTERNAL", "the node credential must be at least 32 characters");
  const connect = connectNodeAdapter({ routes: routes(opts.service), readMaxBytes: 64 * 1024 * 1024 });
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!bearerOk(req, secret)) {
      res.writeHead(401, { "content-type": "text/plain" }).end("node credential required\n");
      return;
    }
    if (req.url?.startsWith("/sandboxes/")) proxyRequest(opts.service, req, res);
    else connect(req, res);
  };
  const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => {});
    if (!bearerOk(req, secret)) {
      socket.end("HTTP/1.1 401 Unauthorized\r\nconnection: close\r\n\r\n");
      return;
    }
    proxyUpgrade(opts.service, req, socket, head);
  };
  let server: http.Server;
  let address: string;
  if ("unix" in opts.listen) {
    server = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES }, onRequest);
    await fs.rm(opts.listen.unix, { force: true });
    address = `unix:${opts.listen.unix}`;
  } else {
    const psk = Buffer.from(opts.secret, "hex");
    server = https.createServer(
      {
        maxHeaderSize: MAX_HEADER_BYTES,
        ciphers: PSK_CIPHERS,
        maxVersion: "TLSv1.2",
        minVersion: "TLSv1.2",
        pskIdentityHint: "firebreak-node",
        // SECURITY: the identity names the control plane's key; only the node credential is accepted.
        pskCallback: (_socket: unknown, _identity: string) => psk,
      },
      onRequest,
    );
    address = "";
  }
  server.on("upgrade", onUpgrade);
  server.on("clientError", (_e, socket: net.Socket) => socket.destroy());
  server.requestTimeout = 0; // command streams and template builds are long
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    if ("unix" in opts.listen) server.listen(opts.listen.unix, () => resolve());
    else server.listen(opts.listen.port, opts.listen.host, () => resolve());
  });
  if ("unix" in opts.listen) {
    // SECURITY: root only; the bearer credential is checked as well.
    await fs.chmod(opts.listen.unix, 0o600);
  } else {
    const a = server.address() as net.AddressInfo;
    address = `https://${a.address.includes(":") ? `[${a.address}]` : a.address}:${a.port}`;
  }
  opts.log?.(`node daemon listening on ${address}`);
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
