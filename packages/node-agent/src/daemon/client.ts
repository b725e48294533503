// A client of one node daemon (server.ts): the typed actions, byte tunnels to
// sandbox ports, and clients for a sandbox's guest agent over those tunnels.
// Used by the control plane (RemoteNode) and by local CLI commands.
import http from "node:http";
import https from "node:https";
import { type Duplex, Readable } from "node:stream";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ACCESS_TOKEN_HEADER, ENVD_PORT, Filesystem, nodePb, Process } from "@firebreak/protocol";
import type { EgressPolicy, NormalizedPolicy, PlatformTarget, PrivateService } from "../egress/index.ts";
import { FirebreakError } from "../errors.ts";
import type { LogSource } from "../sandbox/sandbox-logs.ts";
import { type SpanJson, traceHeaders } from "../telemetry/tracing.ts";
import { fromConnectError } from "./errors.ts";
import type {
  CreateSpec,
  NodeReport,
  ResumedInfo,
  SandboxStatus,
  StartedInfo,
  TemplateInfo,
  Usage,
} from "./node-service.ts";
import type { OverheadRecord } from "./overhead.ts";
import { PSK_CIPHERS, TUNNEL_ERROR_HEADER, TUNNEL_PROTOCOL } from "./server.ts";
import {
  HEADER_BYTES,
  HEADER_KEY,
  HEADER_MANIFEST,
  HEADER_SHA256,
  SPARSE_TYPE,
} from "./template-transfer.ts";

const { Node } = nodePb;

export interface EnvdThroughNode {
  process: Client<typeof Process>;
  filesystem: Client<typeof Filesystem>;
  /** Plain HTTP against the agent's REST routes (/files, /health); the token is added here. */
  fetch: (pathAndQuery: string, init?: RequestInit) => Promise<Response>;
}

export interface NodeAddress {
  /** `unix:<socket path>` or `https://host:port` (TLS-PSK). */
  address: string;
  /** The node credential. */
  secret: string;
}

function usageIn(u: nodePb.UsageSample | undefined): Usage | undefined {
  if (!u) return undefined;
  const traffic = Object.fromEntries(
    Object.entries(u.traffic).map(([k, v]) => [k, { tx: Number(v.tx), rx: Number(v.rx) }]),
  ) as Usage["traffic"];
  return {
    atMs: u.atMs,
    cpuNanos: Number(u.cpuNanos),
    memoryBytes: Number(u.memoryBytes),
    memoryPeakBytes: Number(u.memoryPeakBytes),
    ...(traffic && Object.keys(traffic).length ? { traffic } : {}),
    ...(u.diskUsedBytes !== undefined ? { diskUsedBytes: Number(u.diskUsedBytes) } : {}),
    ...(u.diskTotalBytes !== undefined ? { diskTotalBytes: Number(u.diskTotalBytes) } : {}),
  };
}

function infoIn(i: nodePb.SandboxInfo): StartedInfo {
  return {
    id: i.id,
    accessToken: i.accessToken,
    path: i.path as StartedInfo["path"],
    totalMs: i.totalMs,
    phases: i.phases,
    ...(i.fallback ? { fallback: i.fallback } : {}),
    policy: JSON.parse(i.policyJson || "{}") as NormalizedPolicy,
    ...(i.handover ? { handover: usageIn(i.handover)! } : {}),
  };
}

function statusIn(s: nodePb.SandboxStatus): SandboxStatus {
  return s.state === "gone"
    ? { id: s.id, state: "gone", reason: s.reason, crashed: s.crashed }
    : { id: s.id, state: s.state as "running" | "paused" | "busy" };
}

function templateIn(t: nodePb.TemplateInfo): TemplateInfo {
  return {
    name: t.name,
    key: t.key,
    builtAt: t.builtAt,
    imageBytes: Number(t.imageBytes),
    packages: t.packages,
    shape: { vcpus: t.shape?.vcpus || 1, memoryMib: t.shape?.memoryMib || 256 },
    aliases: t.aliases,
  };
}

export class NodeDaemonClient {
  readonly address: string;
  readonly #secret: string;
  readonly #agent: http.Agent;
  readonly #requestOptions: http.RequestOptions;
  readonly #rpc: Client<typeof Node>;
  readonly #baseUrl: string;

  constructor(target: NodeAddress) {
    this.address = target.address;
    this.#secret = target.secret;
    if (target.address.startsWith("unix:")) {
      const socketPath = target.address.slice(5);
      this.#agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
      this.#requestOptions = { socketPath, agent: this.#agent };
      this.#baseUrl = "http://node";
    } else {
      const psk = Buffer.from(target.secret, "hex");
      this.#agent = new https.Agent({
        keepAlive: true,
        maxSockets: 256,
        ciphers: PSK_CIPHERS,
        minVersion: "TLSv1.2",
        maxVersion: "TLSv1.2",
        // SECURITY: the pre-shared key authenticates the node; there is no certificate.
        pskCallback: () => ({ psk, identity: "firebreak-control-plane" }),
        checkServerIdentity: () => undefined,
      });
      this.#requestOptions = { agent: this.#agent };
      this.#baseUrl = target.address;
    }
    this.#rpc = createClient(Node, this.#transport(this.#baseUrl));
  }

  #transport(baseUrl: string, extra: Interceptor[] = []) {
    const auth: Interceptor = (next) => async (req) => {
      req.header.set("authorization", `Bearer ${this.#secret}`);
      // The caller's trace continues on the node (server.ts traceCalls).
      for (const [k, v] of Object.entries(traceHeaders())) req.header.set(k, v);
      return next(req);
    };
    return createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      nodeOptions: this.#requestOptions,
      useBinaryFormat: false,
      interceptors: [auth, ...extra],
      readMaxBytes: 64 * 1024 * 1024,
    });
  }

  async #call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw fromConnectError(e);
    }
  }

  report(): Promise<NodeReport> {
    return this.#call(async () => {
      const r = await this.#rpc.report({});
      return {
        nodeId: r.nodeId,
        accelerator: r.accelerator,
        acceleratorReason: r.acceleratorReason,
        vcpus: r.vcpus,
        memoryMib: Number(r.memoryMib),
        committedVcpus: r.committedVcpus,
        committedMemoryMib: Number(r.committedMemoryMib),
        freeMemoryMib: Number(r.freeMemoryMib),
        sandboxes: r.sandboxes,
        draining: r.draining,
        version: r.version,
        templates: r.templates.map((t) => ({
          name: t.name,
          key: t.key,
          image: t.image,
          snapshot: t.snapshot,
          snapshotShapes: t.snapshotShapes,
          warm: t.warm,
          recentP50Ms: t.recentP50Ms,
        })),
      };
    });
  }

  create(spec: CreateSpec): Promise<StartedInfo> {
    return this.#call(async () =>
      infoIn(
        await this.#rpc.create({
          template: spec.template,
          ...(spec.shape
            ? { shape: { vcpus: spec.shape.vcpus ?? 0, memoryMib: spec.shape.memoryMib ?? 0 } }
            : {}),
          envVars: spec.envVars ?? {},
          ...(spec.policy
            ? {
                policy: {
                  json: JSON.stringify(spec.policy.policy),
                  tenant: spec.policy.tenant,
                  admin: spec.policy.admin ?? false,
                },
              }
            : {}),
          ...(spec.diskMib !== undefined ? { diskMib: spec.diskMib } : {}),
          platformId: spec.platformId ?? "",
          ...(spec.fromSnapshot !== undefined ? { fromSnapshot: spec.fromSnapshot } : {}),
          ...(spec.platform ? { platform: spec.platform } : {}),
        }),
      ),
    );
  }

  kill(id: string, reason: string): Promise<Usage | undefined> {
    return this.#call(async () => usageIn((await this.#rpc.kill({ id, reason })).last));
  }

  /** memory false: a filesystem-only pause (the resume boots from the disk). */
  pause(id: string, opts: { memory?: boolean } = {}): Promise<Usage | undefined> {
    return this.#call(async () =>
      usageIn((await this.#rpc.pause({ id, reason: "pause", filesystemOnly: opts.memory === false })).last),
    );
  }

  resume(id: string): Promise<ResumedInfo> {
    return this.#call(async () => {
      const r = await this.#rpc.resume({ id, reason: "resume" });
      const handover = usageIn(r.handover);
      return {
        path: r.path === "cold" ? ("cold" as const) : ("snapshot" as const),
        totalMs: r.totalMs,
        phases: r.phases,
        ...(handover ? { handover } : {}),
      };
    });
  }

  fork(id: string, count: number): Promise<StartedInfo[]> {
    return this.#call(async () => (await this.#rpc.fork({ id, count })).children.map(infoIn));
  }

  /** A named snapshot of a running sandbox (it keeps running). */
  snapshot(id: string): Promise<{ snapshotId: string }> {
    return this.#call(async () => ({
      snapshotId: (await this.#rpc.snapshotSandbox({ id, reason: "snapshot" })).snapshotId,
    }));
  }

  deleteSnapshot(snapshotId: string): Promise<void> {
    return this.#call(async () => {
      await this.#rpc.deleteSnapshot({ snapshotId });
    });
  }

  status(ids: string[]): Promise<SandboxStatus[]> {
    return this.#call(async () => (await this.#rpc.status({ ids })).sandboxes.map(statusIn));
  }

  usage(ids: string[]): Promise<Map<string, Usage>> {
    return this.#call(async () => {
      const r = await this.#rpc.usage({ ids });
      return new Map(Object.entries(r.samples).map(([id, u]) => [id, usageIn(u)!]));
    });
  }

  updatePolicy(
    id: string,
    policy: EgressPolicy,
    tenant: string,
    admin = false,
    platform?: PlatformTarget,
  ): Promise<NormalizedPolicy> {
    return this.#call(async () => {
      const r = await this.#rpc.updatePolicy({
        id,
        policy: { json: JSON.stringify(policy), tenant, admin },
        ...(platform ? { platform } : {}),
      });
      return JSON.parse(r.json) as NormalizedPolicy;
    });
  }

  /** Overhead records waiting on the node; acknowledges what the caller stored before. */
  overhead(
    ack: { epoch: string; seq: number } | undefined,
    limit = 1000,
  ): Promise<{ epoch: string; records: OverheadRecord[] }> {
    return this.#call(async () => {
      const r = await this.#rpc.overhead({
        ackEpoch: ack?.epoch ?? "",
        ackSeq: BigInt(ack?.seq ?? 0),
        limit,
      });
      return { epoch: r.epoch, records: r.recordsJson.map((j) => JSON.parse(j) as OverheadRecord) };
    });
  }

  /** The node's Prometheus metrics (prom-client JSON). */
  metrics(): Promise<unknown[]> {
    return this.#call(async () => JSON.parse((await this.#rpc.metrics({})).json) as unknown[]);
  }

  /** Spans of a trace the node recorded. */
  spans(traceId: string): Promise<SpanJson[]> {
    return this.#call(async () =>
      (await this.#rpc.spans({ traceId })).json.map((j) => JSON.parse(j) as SpanJson),
    );
  }

  /** A sandbox's console or start-command output, as chunks (following: until it ends or `signal`). */
  async *logs(
    id: string,
    source: LogSource,
    offset: number,
    follow: boolean,
    signal?: AbortSignal,
  ): AsyncGenerator<{ offset: number; data: Uint8Array; skipped: number; ended: boolean }> {
    try {
      for await (const c of this.#rpc.logs(
        { id, source, offset: BigInt(offset), follow },
        signal ? { signal } : {},
      )) {
        yield { offset: Number(c.offset), data: c.data, skipped: Number(c.skipped), ended: c.ended };
      }
    } catch (e) {
      throw fromConnectError(e);
    }
  }

  listServices(): Promise<PrivateService[]> {
    return this.#call(async () =>
      (await this.#rpc.listServices({})).json.map((j) => JSON.parse(j) as PrivateService),
    );
  }

  putService(s: PrivateService): Promise<PrivateService> {
    return this.#call(
      async () =>
        JSON.parse((await this.#rpc.putService({ json: JSON.stringify(s) })).json) as PrivateService,
    );
  }

  removeService(name: string): Promise<boolean> {
    return this.#call(async () => (await this.#rpc.removeService({ name })).removed);
  }

  listTemplates(): Promise<TemplateInfo[]> {
    return this.#call(async () => (await this.#rpc.listTemplates({})).templates.map(templateIn));
  }

  buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: { step: string; index: number; total: number; detail?: string }) => void,
  ): Promise<TemplateInfo> {
    return this.#call(async () => {
      const req = create(nodePb.BuildRequestSchema, {
        source:
          "name" in source
            ? { case: "name", value: source.name }
            : { case: "specJson", value: JSON.stringify(source.spec) },
      });
      let done: TemplateInfo | undefined;
      for await (const ev of this.#rpc.buildTemplate(req)) {
        if (ev.event.case === "progress") {
          const p = ev.event.value;
          onProgress({
            step: p.step,
            index: p.index,
            total: p.total,
            ...(p.detail ? { detail: p.detail } : {}),
          });
        } else if (ev.event.case === "done") done = templateIn(ev.event.value);
      }
      if (!done) throw new Error("the node ended the build without a result");
      return done;
    });
  }

  deleteTemplate(name: string): Promise<boolean> {
    return this.#call(async () => (await this.#rpc.deleteTemplate({ name })).removed);
  }

  setPool(template: string, size: number, shape?: { vcpus: number; memoryMib: number }): Promise<void> {
    return this.#call(async () => {
      await this.#rpc.setPool({ template, size, ...(shape ? { shape } : {}) });
    });
  }

  drain(draining: boolean): Promise<void> {
    return this.#call(async () => {
      await this.#rpc.drain({ draining });
    });
  }

  /** The guest agent's token while the sandbox lives (undefined: no such sandbox). */
  accessToken(id: string): Promise<string | undefined> {
    return this.#call(async () => (await this.#rpc.accessToken({ id, reason: "" })).json || undefined);
  }

  listSandboxes(): Promise<SandboxStatus[]> {
    return this.#call(async () => (await this.#rpc.listSandboxes({})).sandboxes.map(statusIn));
  }

  /** Opens a byte tunnel to a port inside a sandbox, through the node (server.ts `tunnel`). */
  openTunnel(id: string, port: number): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      const req = this.#raw("GET", `/sandboxes/${encodeURIComponent(id)}/ports/${port}`, {
        connection: "Upgrade",
        upgrade: TUNNEL_PROTOCOL,
      });
      req.on("upgrade", (_res, socket, head) => {
        if (head.length) socket.unshift(head);
        this.#track(id, socket);
        resolve(socket);
      });
      req.on("response", (res) => {
        res.resume();
        const why = String(res.headers[TUNNEL_ERROR_HEADER] ?? res.statusCode);
        const code =
          why === "SANDBOX_NOT_FOUND"
            ? "SANDBOX_NOT_FOUND"
            : res.statusCode === 409
              ? "SANDBOX_STATE_INVALID"
              : "AGENT_ERROR";
        const e = new FirebreakError(
          code,
          `no connection to port ${port} of sandbox ${id}: ${why}`,
        ) as FirebreakError & {
          code: string;
        };
        // What a socket error would say (the relay maps ECONNREFUSED to "nothing answered").
        (e as unknown as { errno?: string }).errno = why;
        reject(e);
      });
      req.on("error", (e) =>
        reject(new FirebreakError("NODE_UNAVAILABLE", `node ${this.address}: ${e.message}`, { cause: e })),
      );
      req.end();
    });
  }

  readonly #tunnels = new Map<string, http.Agent>();
  /** Every tunnel open to each sandbox, pooled or not (an upgraded connection leaves its agent). */
  readonly #open = new Map<string, Set<Duplex>>();

  #track(id: string, socket: Duplex): void {
    let set = this.#open.get(id);
    if (!set) {
      set = new Set();
      this.#open.set(id, set);
    }
    const mine = set;
    mine.add(socket);
    socket.once("close", () => {
      mine.delete(socket);
      if (!mine.size && this.#open.get(id) === mine) this.#open.delete(id);
    });
  }

  /**
   * An HTTP agent whose connections are tunnels to a sandbox port (kept
   * alive and reused). INVARIANT: one agent per sandbox and port, destroyed
   * with the sandbox (closeSandbox), so a stream to an ended sandbox ends
   * at once and a connection is never reused for another sandbox.
   */
  tunnelAgent(id: string, port: number): http.Agent {
    const key = `${id}:${port}`;
    const known = this.#tunnels.get(key);
    if (known) return known;
    const open = () => this.openTunnel(id, port);
    const agent = new (class extends http.Agent {
      override createConnection(
        _options: http.ClientRequestArgs,
        cb?: (err: Error | null, stream: Duplex) => void,
      ): Duplex | null | undefined {
        open().then(
          (s) => cb?.(null, s),
          (e: Error) => cb?.(e, undefined as unknown as Duplex),
        );
        return undefined;
      }
    })({ keepAlive: true, maxSockets: 64 });
    this.#tunnels.set(key, agent);
    return agent;
  }

  /**
   * Closes every connection to a sandbox (it was killed or paused): in-flight
   * streams end now, through the envd proxy and ingress alike, including
   * upgraded ones (WebSockets), which no agent holds any more.
   * INVARIANT: nothing this client opened to a stopped sandbox stays open.
   */
  closeSandbox(id: string): void {
    for (const [key, agent] of this.#tunnels) {
      if (!key.startsWith(`${id}:`)) continue;
      agent.destroy();
      this.#tunnels.delete(key);
    }
    const open = this.#open.get(id);
    this.#open.delete(id);
    for (const socket of open ?? []) socket.destroy();
  }

  /**
   * An HTTP request to a port inside a sandbox, over a tunnel through the
   * node: the guest's answer arrives as it sent it. The caller writes the
   * body (and, for the agent's port, its token).
   */
  portRequest(
    id: string,
    port: number,
    pathAndQuery: string,
    init: { method?: string; headers?: http.OutgoingHttpHeaders; maxHeaderSize?: number } = {},
  ): http.ClientRequest {
    return http.request({
      agent: this.tunnelAgent(id, port),
      host: "sandbox",
      port,
      method: init.method ?? "GET",
      path: pathAndQuery.startsWith("/") ? pathAndQuery : `/${pathAndQuery}`,
      headers: init.headers ?? {},
      ...(init.maxHeaderSize ? { maxHeaderSize: init.maxHeaderSize } : {}),
      insecureHTTPParser: false,
    });
  }

  /** A raw request to the daemon itself (template transfer). */
  #raw(method: string, pathAndQuery: string, headers: http.OutgoingHttpHeaders = {}): http.ClientRequest {
    const opts: http.RequestOptions = {
      ...this.#requestOptions,
      method,
      path: pathAndQuery,
      headers: { ...headers, authorization: `Bearer ${this.#secret}` },
    };
    if (this.#baseUrl.startsWith("https:")) {
      const u = new URL(this.#baseUrl);
      return https.request({ ...opts, host: u.hostname, port: u.port });
    }
    return http.request(opts);
  }

  /** The template's image as a stream, with its key, manifest and sha256 in the head. */
  exportTemplate(name: string): Promise<http.IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = this.#raw("GET", `/templates/${encodeURIComponent(name)}/image`);
      req.on("response", (res) => {
        if (res.statusCode === 200) return resolve(res);
        res.resume();
        reject(
          new FirebreakError(
            res.statusCode === 404 ? "TEMPLATE_NOT_FOUND" : "INTERNAL",
            `node ${this.address} could not export template ${name} (${res.statusCode})`,
          ),
        );
      });
      req.on("error", (e) =>
        reject(new FirebreakError("NODE_UNAVAILABLE", `node ${this.address}: ${e.message}`, { cause: e })),
      );
      req.end();
    });
  }

  /** Installs a template on this node from an export stream (another node's). */
  importTemplate(
    name: string,
    from: http.IncomingMessage,
  ): Promise<{ name: string; key: string; installed: boolean }> {
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = { "content-type": SPARSE_TYPE };
      for (const h of [HEADER_BYTES, HEADER_KEY, HEADER_MANIFEST, HEADER_SHA256]) {
        if (from.headers[h] !== undefined) headers[h] = from.headers[h];
      }
      const req = this.#raw("PUT", `/templates/${encodeURIComponent(name)}/image`, headers);
      req.on("response", (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size <= 64 * 1024) chunks.push(c);
        });
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          if (res.statusCode === 200 || res.statusCode === 201) {
            try {
              return resolve(JSON.parse(text) as { name: string; key: string; installed: boolean });
            } catch {
              // fall through
            }
          }
          reject(
            new FirebreakError(
              "INTERNAL",
              `node ${this.address} refused template ${name}: ${text.slice(0, 300)}`,
            ),
          );
        });
      });
      req.on("error", (e) =>
        reject(new FirebreakError("NODE_UNAVAILABLE", `node ${this.address}: ${e.message}`, { cause: e })),
      );
      from.on("error", (e) => req.destroy(e));
      from.pipe(req);
    });
  }

  /** Clients for a sandbox's guest agent (envd), over tunnels through this node. */
  envd(id: string, token: () => Promise<string>, user?: string): EnvdThroughNode {
    const auth: Interceptor = (next) => async (req) => {
      req.header.set(ACCESS_TOKEN_HEADER, await token());
      if (user) req.header.set("authorization", basic(user));
      return next(req);
    };
    const transport = createConnectTransport({
      baseUrl: `http://sandbox:${ENVD_PORT}`,
      httpVersion: "1.1",
      nodeOptions: { agent: this.tunnelAgent(id, ENVD_PORT) },
      useBinaryFormat: false,
      interceptors: [auth],
      // SECURITY: the guest answers these; a hostile guest must not make the
      // control plane buffer huge messages.
      readMaxBytes: 16 * 1024 * 1024,
    });
    return {
      process: createClient(Process, transport),
      filesystem: createClient(Filesystem, transport),
      fetch: async (p, init = {}) => this.#fetch(id, p, init, await token(), user),
    };
  }

  #fetch(
    id: string,
    pathAndQuery: string,
    init: RequestInit,
    token: string,
    user?: string,
  ): Promise<Response> {
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = {};
      new Headers(init.headers).forEach((v, k) => {
        headers[k] = v;
      });
      headers[ACCESS_TOKEN_HEADER] = token;
      if (user) headers.authorization = basic(user);
      const req = this.portRequest(id, ENVD_PORT, pathAndQuery, {
        method: init.method ?? "GET",
        headers,
        maxHeaderSize: 16 * 1024,
      });
      req.on("response", (res) => {
        const h = new Headers();
        for (let i = 0; i < res.rawHeaders.length; i += 2) {
          try {
            h.append(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
          } catch {
            // a header a Response cannot carry: left out
          }
        }
        const status = res.statusCode ?? 502;
        const bodyless = status === 204 || status === 304 || init.method === "HEAD" || status < 200;
        const body = bodyless ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
        if (!body) res.resume();
        try {
          resolve(new Response(body, { status: status >= 200 && status <= 599 ? status : 502, headers: h }));
        } catch (e) {
          res.destroy();
          reject(e);
        }
      });
      req.on("error", reject);
      // A guest that answers a plain request with 101, or closes without a
      // head, fails this request (a settled promise ignores the rest).
      req.on("upgrade", (_res, socket) => {
        socket.destroy();
        reject(new Error("the guest agent answered 101 Switching Protocols to a plain request"));
      });
      req.on("close", () => reject(new Error("the guest agent closed the connection without answering")));
      init.signal?.addEventListener("abort", () => req.destroy(new Error("aborted")), { once: true });
      const body = init.body;
      if (body === undefined || body === null) req.end();
      else if (typeof body === "string" || body instanceof Uint8Array) req.end(body);
      else if (body instanceof ReadableStream) {
        Readable.fromWeb(body as import("node:stream/web").ReadableStream).pipe(req);
      } else if (body instanceof Blob) {
        void body.arrayBuffer().then((b) => req.end(Buffer.from(b)), reject);
      } else req.end(String(body));
    });
  }

  close(): void {
    this.#agent.destroy();
    for (const a of this.#tunnels.values()) a.destroy();
    this.#tunnels.clear();
    for (const set of this.#open.values()) for (const socket of set) socket.destroy();
    this.#open.clear();
  }
}

function basic(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString("base64")}`;
}
