// The node daemon's listener: the Connect service `firebreak.node.v1.Node`
// byte tunnels to sandbox ports, and template images, behind the node credential.
//
//   POST /firebreak.node.v1.Node/<Method>        typed actions (Connect, JSON)
//   GET  /sandboxes/<id>/ports/<port>            Upgrade: firebreak-tunnel: a byte
//                                                stream to that port of a running
//                                                sandbox (the caller speaks HTTP
//                                                to the guest itself)
//   GET|PUT /templates/<name>/image              template transfer
//
// Listens on a unix socket (root-only, the local control plane and CLI) or on
// TCP with TLS-PSK (the pre-shared key is the node credential: mutual
// authentication and encryption without a PKI). Every request also carries
// the credential as a bearer token.
import { timingSafeEqual } from "node:crypto";
import fs from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import type { Duplex } from "node:stream";
import { create } from "@bufbuild/protobuf";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { nodePb } from "@firebreak/protocol";
import { context, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import type { EgressPolicy, PlatformTarget, PrivateService } from "../egress/index.ts";
import { FirebreakError } from "../errors.ts";
import type { LogSource } from "../sandbox/sandbox-logs.ts";
import { ATTR, contextFromHeaders, tracer } from "../telemetry/tracing.ts";
import { toConnectError } from "./errors.ts";
import type { NodeService, StartedInfo, Usage } from "./node-service.ts";
import { exportTemplate, importTemplate } from "./template-transfer.ts";

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
    ...(u.diskUsedBytes !== undefined ? { diskUsedBytes: BigInt(Math.round(u.diskUsedBytes)) } : {}),
    ...(u.diskTotalBytes !== undefined ? { diskTotalBytes: BigInt(Math.round(u.diskTotalBytes)) } : {}),
  });
}

function platformIn(
  p: { address: string; port: number; token: string } | undefined,
): PlatformTarget | undefined {
  return p ? { address: p.address, port: p.port, token: p.token } : undefined;
}

/**
 * Every call is a span, a child of the caller's (W3C traceparent in the
 * request headers), so a create's node phases join the control plane's trace.
 */
const traceCalls: Interceptor = (next) => async (req) => {
  const parent = contextFromHeaders((name) => req.header.get(name));
  return context.with(parent, () =>
    tracer("firebreak-node").startActiveSpan(
      `node.${req.method.name}`,
      { kind: SpanKind.SERVER, attributes: { [ATTR.component]: "node" } },
      async (span) => {
        try {
          return await next(req);
        } catch (e) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
          throw e;
        } finally {
          span.end();
        }
      },
    ),
  );
};

function infoOut(i: StartedInfo) {
  return create(nodePb.SandboxInfoSchema, {
    id: i.id,
    accessToken: i.accessToken,
    path: i.path,
    totalMs: i.totalMs,
    phases: i.phases,
    ...(i.fallback ? { fallback: i.fallback } : {}),
    policyJson: JSON.stringify(i.policy),
    ...(i.handover ? { handover: usageOut(i.handover) } : {}),
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
            ...(req.platform ? { platform: platformIn(req.platform)! } : {}),
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
          const last = usageOut(await svc.pause(req.id, { memory: !req.filesystemOnly }));
          return create(nodePb.KillResponseSchema, last ? { last } : {});
        }),
      resume: (req) =>
        call(async () => {
          const r = await svc.resume(req.id);
          return create(nodePb.ResumeResponseSchema, {
            path: r.path,
            totalMs: r.totalMs,
            phases: r.phases,
            ...(r.handover ? { handover: usageOut(r.handover) } : {}),
          });
        }),
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
            json: JSON.stringify(await svc.updatePolicy(req.id, p.policy, platformIn(req.platform))),
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
      overhead: (req) =>
        call(() => {
          const r = svc.takeOverhead(
            req.ackEpoch ? { epoch: req.ackEpoch, seq: Number(req.ackSeq) } : undefined,
            req.limit || 1000,
          );
          return create(nodePb.OverheadResponseSchema, {
            epoch: r.epoch,
            recordsJson: r.records.map((x) => JSON.stringify(x)),
          });
        }),
      metrics: () =>
        call(async () => create(nodePb.JsonValueSchema, { json: JSON.stringify(await svc.metricsJson()) })),
      spans: (req) =>
        call(() =>
          create(nodePb.JsonListSchema, { json: svc.spans(req.traceId).map((x) => JSON.stringify(x)) }),
        ),
      async *logs(req, ctx) {
        try {
          for await (const c of svc.logs(
            req.id,
            req.source as LogSource,
            Number(req.offset),
            req.follow,
            ctx.signal,
          )) {
            yield create(nodePb.LogChunkSchema, {
              offset: BigInt(c.offset),
              data: c.data,
              skipped: BigInt(c.skipped),
              ended: c.ended,
            });
          }
        } catch (e) {
          throw toConnectError(e);
        }
      },
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

const PORT_PATH = /^\/sandboxes\/([a-z0-9]{1,64})\/ports\/(\d{1,5})$/;

/** The protocol name of a tunnel to a sandbox port (an HTTP Upgrade). */
export const TUNNEL_PROTOCOL = "firebreak-tunnel";
/** On a refused tunnel: why (the node's error code, or the connect error). */
export const TUNNEL_ERROR_HEADER = "x-firebreak-tunnel-error";

/**
 * A tunnel to a port inside a sandbox: `GET /sandboxes/<id>/ports/<port>`
 * with `Upgrade: firebreak-tunnel`. The node connects to the sandbox's
 * address and, once connected, answers 101 and copies bytes both ways (TCP
 * backpressure, nothing buffered beyond socket buffers). The node reads
 * nothing of what flows: the control plane speaks HTTP to the guest through
 * it and applies its own checks to the guest's answers (relay/http-relay.ts).
 */
/** Open tunnels by sandbox id: ended with the sandbox, and at the daemon's close. */
type TunnelTable = Map<string, Set<Duplex>>;

function tunnel(
  svc: NodeService,
  tunnels: TunnelTable,
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
): void {
  const refuse = (status: number, why: string): void => {
    socket.end(`HTTP/1.1 ${status} Refused\r\n${TUNNEL_ERROR_HEADER}: ${why}\r\nconnection: close\r\n\r\n`);
  };
  const m = PORT_PATH.exec(req.url ?? "");
  const port = Number(m?.[2]);
  if (!m || String(req.headers.upgrade).toLowerCase() !== TUNNEL_PROTOCOL || port < 1 || port > 65535) {
    refuse(400, "BAD_TUNNEL");
    return;
  }
  let host: string;
  try {
    host = svc.endpoint(m[1]!).host;
  } catch (e) {
    refuse(
      e instanceof FirebreakError && e.code === "SANDBOX_NOT_FOUND" ? 404 : 409,
      (e as FirebreakError).code ?? "SANDBOX_STATE_INVALID",
    );
    return;
  }
  const id = m[1]!;
  // A frozen (idle) sandbox is thawed; the connection's packets wait in its tap meanwhile.
  svc.runtime.touch(id);
  const upstream = net.connect({ host, port });
  upstream.setNoDelay(true);
  // INVARIANT: a tunnel lives no longer than its sandbox's running state
  // (the stateListeners hook below) nor than the daemon.
  const open = tunnels.get(id) ?? new Set<Duplex>();
  tunnels.set(id, open);
  open.add(upstream);
  upstream.once("close", () => {
    svc.runtime.touch(id); // idle from the last connection's end
    open.delete(upstream);
    if (!open.size && tunnels.get(id) === open) tunnels.delete(id);
  });
  const onError = (e: NodeJS.ErrnoException) => {
    upstream.destroy();
    if (!socket.destroyed) refuse(502, e.code ?? "CONNECT_FAILED");
  };
  upstream.once("error", onError);
  socket.on("error", () => upstream.destroy());
  upstream.once("connect", () => {
    upstream.off("error", onError);
    upstream.on("error", () => socket.destroy());
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: ${TUNNEL_PROTOCOL}\r\nconnection: Upgrade\r\n\r\n`,
    );
    if (head.length) upstream.write(head);
    upstream.on("close", () => socket.destroy());
    socket.on("close", () => upstream.destroy());
    // INVARIANT: a tunnel lasts no longer than its client's side. The control
    // plane never half-closes one (it destroys it: a request aborted, the
    // sandbox killed or paused), so its end closes the guest's side at once,
    // never a FIN that waits for the guest: a killed VM never answers it and
    // a hostile guest would not, and either would hold this socket open.
    socket.once("end", () => upstream.destroy());
    socket.pipe(upstream);
    upstream.pipe(socket);
  });
}

const TEMPLATE_PATH = /^\/templates\/([a-z0-9][a-z0-9-]{0,39})\/image$/;

/** GET and PUT /templates/<name>/image (template-transfer.ts); errors answer JSON with the node's code. */
async function templateTransfer(svc: NodeService, req: http.IncomingMessage, res: http.ServerResponse) {
  const m = TEMPLATE_PATH.exec(req.url ?? "");
  try {
    if (!m) throw new FirebreakError("TEMPLATE_NOT_FOUND", "no such template route");
    const config = svc.runtime.config;
    if (req.method === "GET") return await exportTemplate(config, m[1]!, res);
    if (req.method === "PUT") {
      const r = await importTemplate(config, m[1]!, req);
      res.writeHead(r.installed ? 201 : 200, { "content-type": "application/json" }).end(JSON.stringify(r));
      // The snapshot is made off the hot path, so the next create here restores.
      svc.prepareSnapshotSoon(r.name);
      return;
    }
    res.writeHead(405, { "content-type": "text/plain" }).end("GET or PUT\n");
  } catch (e) {
    req.resume();
    const code = e instanceof FirebreakError ? e.code : "INTERNAL";
    if (!res.headersSent) {
      res
        .writeHead(code === "TEMPLATE_NOT_FOUND" ? 404 : code === "INTERNAL" ? 500 : 400, {
          "content-type": "application/json",
        })
        .end(JSON.stringify({ code, message: (e as Error).message }));
    } else res.destroy();
  }
}

/** Starts the daemon's listener. */
export async function startDaemon(opts: DaemonOptions): Promise<RunningDaemon> {
  const secret = Buffer.from(opts.secret);
  if (secret.length < 32)
    throw new FirebreakError("INTERNAL", "the node credential must be at least 32 characters");
  const connect = connectNodeAdapter({
    routes: routes(opts.service),
    readMaxBytes: 64 * 1024 * 1024,
    interceptors: [traceCalls],
  });
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!bearerOk(req, secret)) {
      res.writeHead(401, { "content-type": "text/plain" }).end("node credential required\n");
      return;
    }
    if (req.url?.startsWith("/sandboxes/")) {
      res
        .writeHead(426, { upgrade: TUNNEL_PROTOCOL, "content-type": "text/plain" })
        .end("open a tunnel (Upgrade)\n");
    } else if (req.url?.startsWith("/templates/")) void templateTransfer(opts.service, req, res);
    else connect(req, res);
  };
  const onUpgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on("error", () => {});
    if (!bearerOk(req, secret)) {
      socket.end("HTTP/1.1 401 Unauthorized\r\nconnection: close\r\n\r\n");
      return;
    }
    tunnel(opts.service, tunnels, req, socket, head);
  };
  const tunnels: TunnelTable = new Map();
  const endTunnels = (id: string) => {
    for (const s of tunnels.get(id) ?? []) s.destroy();
  };
  const onState = (id: string, state: string) => {
    if (state !== "running") endTunnels(id);
  };
  opts.service.runtime.stateListeners.add(onState);
  // A sandbox with a tunnel open is in use: the idle freezer leaves it alone.
  const busy = (id: string) => (tunnels.get(id)?.size ?? 0) > 0;
  opts.service.runtime.busyChecks.add(busy);
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
        opts.service.runtime.stateListeners.delete(onState);
        opts.service.runtime.busyChecks.delete(busy);
        server.close(() => resolve());
        server.closeAllConnections();
        for (const id of [...tunnels.keys()]) endTunnels(id);
      }),
  };
}
