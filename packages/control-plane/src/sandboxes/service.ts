// Sandbox lifecycle: the typed actions routes call (create, get, list, kill,
// setTimeout, pause, resume, fork), the reaper, the usage sampler, and the
// recovery pass after a restart. Routes never reach the node directly.

import type http from "node:http";
import {
  ATTR,
  activeTraceId,
  EgressError,
  type EgressPolicy,
  type NormalizedPolicy,
  normalizePolicy,
  PhaseClock,
  PLATFORM_SERVICE_NAME,
  type PlatformTarget,
  tracer,
} from "@firebreak/node-agent";
import { context, trace } from "@opentelemetry/api";
import type { Logger } from "pino";
import { newId, newSandboxToken, sha256 } from "../auth/keys.ts";
import type { ControlPlaneConfig } from "../config.ts";
import { ApiError, toApiError } from "../errors.ts";
import { type NodeDirectory, NodesFacade } from "../node/directory.ts";
import type {
  EnvdAccess,
  LogChunk,
  LogSource,
  NodeClient,
  NodeSandboxStatus,
  PrivateService,
  UsageSample,
} from "../node/node-client.ts";
import { copyTemplate } from "../node/template-copy.ts";
import { type Candidate, place, placeRandomly } from "../scheduler/placement.ts";
import {
  isFinalState,
  type ListSandboxesQuery,
  type NodeBudget,
  type QuotaResult,
  type SandboxRecord,
  type SandboxState,
  type Store,
  type Tenant,
  type TenantLimits,
  type UsageRecord,
} from "../store/store.ts";
import { Meter } from "../usage/meter.ts";
import { MetricsSeries } from "../usage/metrics-series.ts";
import { OverheadCollector } from "../usage/overhead.ts";
import type { SandboxObserver } from "./observer.ts";
import { isDescendant, type PlatformTokens, policyWithin } from "./platform.ts";
import { assertTransition, stateAfterLoss } from "./state.ts";
import { TemplateAccess } from "./templates.ts";

export interface Caller {
  keyId: string;
  tenant: Tenant;
  /** An admin key: may use every tenant's templates. */
  admin?: boolean;
  /**
   * A sandbox calling through its platform grant (sandboxes/platform.ts): it
   * acts on its own descendants only, and what it creates is its child.
   */
  sandbox?: SandboxRecord;
}

/** Spans of the control plane's work (telemetry: traces). */
const cpTracer = tracer("firebreak-control-plane");

/** Marks the request's span (the HTTP server span) with the sandbox and its tenant. */
function tagSpan(id: string, tenantId: string): void {
  trace.getActiveSpan()?.setAttributes({ [ATTR.sandboxId]: id, [ATTR.tenantId]: tenantId });
}

/** vCPUs and memory held back for resumes and forks in flight (not yet in the store as holding). */
interface Reservation {
  nodeId: string;
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
}

export interface CreateRequest {
  template: string;
  /** @default the template's default shape */
  vcpus?: number | undefined;
  /** @default the template's default shape */
  memoryMib?: number | undefined;
  timeoutMs: number;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  /** X-Firebreak-Sandbox-Token of the sandbox this request came from. */
  parentToken?: string | undefined;
  /** Egress policy (validated again here); the tenant is always the caller's. */
  networkPolicy?: EgressPolicy | undefined;
  /** Start from a snapshot of a sandbox (on the node that holds it) instead of the template's image. */
  fromSnapshot?: { nodeId: string; snapshotId: string } | undefined;
  /** What the reaper does when the timeout passes. @default "kill" */
  onTimeout?: TimeoutAction | undefined;
  /** false: the timeout's pause keeps only the disk (the resume boots afresh). @default true */
  pauseMemory?: boolean | undefined;
  /**
   * Where the sandbox sits in a cost tree when no parent sandbox sent the
   * request: a job's task sandboxes have the job as parent and root.
   * INVARIANT: set only by the control plane itself (src/jobs), never from a
   * request body.
   */
  lineage?: { parentId: string; rootId: string } | undefined;
}

/** What the reaper does with a running sandbox whose timeout passed (E2B's autoPause: "pause"). */
export type TimeoutAction = "kill" | "pause";
/**
 * Event that records a sandbox's timeout action (detail `{onTimeout}`, and
 * `pauseMemory: false` for a filesystem-only pause); the latest one holds.
 */
export const LIFECYCLE_EVENT = "lifecycle";

/** A sandbox stopped running here: it ended, or was paused (its VM is gone either way). */
export type StoppedListener = (sandboxId: string, why: "ended" | "paused") => void;

const iso = (ms = Date.now()) => new Date(ms).toISOString();

export class SandboxService {
  readonly #store: Store;
  readonly #nodes: NodeDirectory;
  /** The nodes as a whole: health, capacity, services, template builds. */
  readonly nodes: NodesFacade;
  readonly #config: ControlPlaneConfig;
  readonly #log: Logger;
  readonly #meters = new Map<string, Meter>();
  readonly #locks = new Map<string, Promise<unknown>>();
  #timers: NodeJS.Timeout[] = [];
  #sampling = false;
  #reaping = false;
  #closed = false;
  /** Node admission: resumes and forks between their check and their store update. */
  readonly #reserved = new Set<Reservation>();
  /** Paused-disk quota: pauses between their check and their store update. */
  readonly #pausing = new Set<{ tenantId: string; memoryMib: number }>();
  /** Who may read, build and delete which template. */
  readonly templates: TemplateAccess;
  readonly #stopped = new Set<StoppedListener>();
  /** Timeout actions other than kill, by sandbox (cache of the lifecycle events). */
  readonly #onTimeout = new Map<string, TimeoutAction>();

  /**
   * Calls `fn` whenever a sandbox stops running (ended or paused), so proxies
   * can close what they hold open to it. Returns the unsubscribe function.
   */
  onStopped(fn: StoppedListener): () => void {
    this.#stopped.add(fn);
    return () => this.#stopped.delete(fn);
  }

  #notifyStopped(id: string, why: "ended" | "paused"): void {
    for (const fn of this.#stopped) {
      try {
        fn(id, why);
      } catch (e) {
        this.#log.error({ sandboxId: id, err: e }, "stopped listener failed");
      }
    }
  }

  /** Pulls the nodes' platform overhead records into the store (usage/overhead.ts). */
  readonly overhead: OverheadCollector;
  /** Per-sandbox CPU, memory, disk and network series from the sampler (usage/metrics-series.ts). */
  readonly metrics = new MetricsSeries();
  readonly #observers = new Set<SandboxObserver>();
  /** The platform grant: credentials, and where nodes reach this API (set once listening). */
  #platform: { tokens: PlatformTokens; endpoint?: { address: string; port: number } } | undefined;

  /** Registers an observer (metrics); returns the unsubscribe function. */
  observe(o: SandboxObserver): () => void {
    this.#observers.add(o);
    return () => this.#observers.delete(o);
  }

  #notify(fn: (o: SandboxObserver) => void): void {
    for (const o of this.#observers) {
      try {
        fn(o);
      } catch (e) {
        this.#log.error({ err: e }, "sandbox observer failed");
      }
    }
  }

  /**
   * Enables the platform grant: its credentials, and the API's address as
   * the nodes reach it (IPv4 and port; without it, `platform: true` is refused).
   */
  setPlatform(tokens: PlatformTokens, endpoint?: { address: string; port: number }): void {
    this.#platform = { tokens, ...(endpoint ? { endpoint } : {}) };
  }

  /** The platform credential of a sandbox, verified: the sandbox id it is for. */
  verifyPlatformToken(token: string | undefined): string | undefined {
    return this.#platform?.tokens.verify(token);
  }

  #platformTarget(id: string): PlatformTarget {
    const ep = this.#platform?.endpoint;
    if (!ep || !this.#platform) {
      throw new ApiError(
        "VALIDATION_FAILED",
        "network.policy.platform: this control plane does not know the address its nodes reach it at; set FIREBREAK_PLATFORM_ADDRESS (IPv4 host:port) on the server or leave platform out",
      );
    }
    return { address: ep.address, port: ep.port, token: this.#platform.tokens.tokenFor(id) };
  }

  constructor(store: Store, nodes: NodeDirectory, config: ControlPlaneConfig, log: Logger) {
    this.#store = store;
    this.#nodes = nodes;
    this.nodes = new NodesFacade(nodes);
    this.#config = config;
    this.#log = log;
    this.templates = new TemplateAccess(store, this.nodes.templates);
    this.overhead = new OverheadCollector(store, nodes, log);
  }

  /** The node that holds a sandbox. */
  #nodeOf(rec: SandboxRecord): NodeClient {
    return this.#nodes.node(rec.nodeId);
  }

  /**
   * A sandbox's meter: this replica's while the store holds the state it
   * last wrote, else continued from the stored raw state (another replica
   * sampled, paused or resumed it since: usage/meter.ts, Meter.current).
   */
  async #meterOf(id: string): Promise<Meter> {
    const meter = Meter.current(this.#meters.get(id), await this.#store.getUsage(id));
    this.#meters.set(id, meter);
    return meter;
  }

  // ---------------------------------------------------------------- admission

  /**
   * What the node may still commit: its capacity times the overcommit ratios,
   * less the reservations of resumes and forks in flight (other than `own`).
   */
  #nodeBudget(nodeId: string, own?: Reservation): NodeBudget {
    const report = this.#nodes.views().find((v) => v.id === nodeId)?.report;
    const cap = { vcpus: report?.vcpus ?? 0, memoryMib: report?.memoryMib ?? 0 };
    let vcpus = cap.vcpus * this.#config.vcpuOvercommit;
    let memoryMib = cap.memoryMib * this.#config.memoryOvercommit;
    for (const r of this.#reserved) {
      if (r === own || r.nodeId !== nodeId) continue;
      vcpus -= r.vcpus;
      memoryMib -= r.memoryMib + r.sandboxes * this.#config.sandboxOverheadMib;
    }
    return { nodeId, vcpus, memoryMib, overheadMib: this.#config.sandboxOverheadMib };
  }

  /** A failed quota or admission check as the error the caller gets. */
  #quotaError(q: Exclude<QuotaResult, { ok: true }>): ApiError {
    if (q.limit === "nodeVcpus" || q.limit === "nodeMemoryMib") {
      return new ApiError("CAPACITY_EXHAUSTED", q.message, {
        headers: { "retry-after": String(this.#config.capacityRetryAfterSeconds) },
      });
    }
    return new ApiError("QUOTA_EXCEEDED", q.message);
  }

  /**
   * Admits `count` sandboxes of a shape that are not yet holding (resume,
   * fork): tenant limits, then the node's budget. The reservation is taken
   * before the check (synchronously), so concurrent admissions see each
   * other; release it once the store records them as holding (or on failure).
   * INVARIANT: the node never commits more than capacity x overcommit.
   */
  async #admit(
    tenantId: string,
    shape: { vcpus: number; memoryMib: number },
    count: number,
    limits: TenantLimits,
    nodeId: string,
  ): Promise<() => void> {
    const r: Reservation = {
      nodeId,
      vcpus: shape.vcpus * count,
      memoryMib: shape.memoryMib * count,
      sandboxes: count,
    };
    this.#reserved.add(r);
    const release = () => this.#reserved.delete(r);
    try {
      const q = await this.#store.checkQuota(tenantId, shape, count, limits, this.#nodeBudget(nodeId, r));
      if (!q.ok) throw this.#quotaError(q);
    } catch (e) {
      release();
      throw e;
    }
    return release;
  }

  /** Serializes actions on one sandbox (a kill during a create waits for the create). */
  async #withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#locks.get(id) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const settled = next.catch(() => {});
    this.#locks.set(id, settled);
    try {
      return await next;
    } finally {
      if (this.#locks.get(id) === settled) this.#locks.delete(id);
    }
  }

  async #event(id: string, type: string, detail: Record<string, unknown> = {}): Promise<void> {
    await this.#store.addEvent(id, { at: iso(), type, detail });
  }

  async #transition(
    rec: SandboxRecord,
    to: SandboxState,
    patch: Partial<SandboxRecord>,
    reason: string,
    action: string,
  ): Promise<SandboxRecord> {
    assertTransition(rec.id, rec.state, to, action);
    const ok = await this.#store.updateSandbox(rec.id, { ...patch, state: to }, [rec.state]);
    if (!ok) throw new ApiError("CONFLICT", `sandbox ${rec.id} changed state while trying to ${action} it`);
    await this.#event(rec.id, "state", { from: rec.state, to, reason });
    return { ...rec, ...patch, state: to };
  }

  // ---------------------------------------------------------------- reads

  /** A sandbox of this tenant. INVARIANT: another tenant's id is NOT_FOUND, never FORBIDDEN. */
  async get(tenantId: string, id: string): Promise<SandboxRecord> {
    const rec = await this.#store.getSandbox(id);
    if (!rec || rec.tenantId !== tenantId) throw new ApiError("NOT_FOUND", `no sandbox ${id}`);
    return rec;
  }

  /**
   * A sandbox the caller may act on: its tenant's, and for a sandbox caller
   * (platform grant) only its own descendants. INVARIANT: anything else is
   * NOT_FOUND, never FORBIDDEN.
   */
  async getFor(caller: Pick<Caller, "tenant" | "sandbox">, id: string): Promise<SandboxRecord> {
    const rec = await this.get(caller.tenant.id, id);
    if (caller.sandbox && !(await isDescendant(this.#store, caller.sandbox.id, rec))) {
      throw new ApiError("NOT_FOUND", `no sandbox ${id}`);
    }
    return rec;
  }

  list(q: ListSandboxesQuery) {
    return this.#store.listSandboxes(q);
  }

  async events(tenantId: string, id: string) {
    await this.get(tenantId, id);
    return this.#store.listEvents(id);
  }

  /**
   * A sandbox's console or start-command output from its node, from `offset`
   * (following: until it ends or `signal`). The node keeps the last bytes of
   * each (a ring), also for a while after the sandbox ended.
   */
  async logs(
    tenantId: string,
    id: string,
    source: LogSource,
    offset: number,
    follow: boolean,
    signal?: AbortSignal,
  ): Promise<AsyncIterable<LogChunk>> {
    const rec = await this.get(tenantId, id);
    const node = this.#nodes.ids().includes(rec.nodeId) ? this.#nodeOf(rec) : undefined;
    if (!rec.nodeSandboxId || !node?.logs) {
      throw new ApiError(
        "NOT_FOUND",
        `sandbox ${id} has no ${source} log (it never started, or its node is gone)`,
      );
    }
    return node.logs(rec.nodeSandboxId, source, offset, follow, signal);
  }

  /** Tokens this replica just learned (creates, forks), so their answers need no node call. */
  readonly #recentTokens = new Map<string, string>();
  #rememberToken(id: string, token: string): void {
    this.#recentTokens.set(id, token);
    if (this.#recentTokens.size > 1024) this.#recentTokens.delete(this.#recentTokens.keys().next().value!);
  }

  /** The guest agent's access token while the sandbox lives (asked of its node). */
  async accessToken(rec: SandboxRecord): Promise<string | undefined> {
    if (isFinalState(rec.state) || !rec.nodeSandboxId) return undefined;
    const recent = this.#recentTokens.get(rec.id);
    if (recent) return recent;
    try {
      return await this.#nodeOf(rec).accessToken(rec.nodeSandboxId);
    } catch {
      return undefined; // its node does not answer: the caller gets no token
    }
  }

  /** A client for the sandbox's guest agent; the sandbox must be running. */
  async envd(tenantId: string, id: string, user?: string): Promise<EnvdAccess> {
    const rec = await this.get(tenantId, id);
    return this.envdOf(rec, user);
  }

  envdOf(rec: SandboxRecord, user?: string): EnvdAccess {
    if (rec.state !== "running" || !rec.nodeSandboxId) {
      throw new ApiError("CONFLICT", `sandbox ${rec.id} is ${rec.state}; commands and files need it running`);
    }
    return this.#nodeOf(rec).envd(rec.nodeSandboxId, user);
  }

  /**
   * An HTTP request to a port inside a running sandbox, over a byte tunnel
   * through its node (which adds nothing: the caller sends the agent's token
   * on its port); undefined when it is not running. The caller writes the
   * body and reads the answer.
   */
  portRequest(
    rec: SandboxRecord,
    port: number,
    pathAndQuery: string,
    init: { method?: string; headers?: http.OutgoingHttpHeaders; maxHeaderSize?: number },
  ): http.ClientRequest | undefined {
    if (rec.state !== "running" || !rec.nodeSandboxId) return undefined;
    return this.#nodeOf(rec).portRequest(rec.nodeSandboxId, port, pathAndQuery, init);
  }

  findByEnvdToken(token: string) {
    return this.#store.findSandboxByEnvdTokenHash(sha256(token));
  }

  // ---------------------------------------------------------------- create

  #checkTimeout(timeoutMs: number): void {
    if (timeoutMs > this.#config.maxTimeoutMs) {
      throw new ApiError(
        "VALIDATION_FAILED",
        `timeoutMs ${timeoutMs} is above this server's maximum of ${this.#config.maxTimeoutMs} ms`,
      );
    }
  }

  /**
   * Creates a sandbox. Its trace has one span per phase (admission,
   * placement, start with the node's phases inside, record), tiling the
   * create without gaps.
   */
  async create(caller: Caller, req: CreateRequest): Promise<SandboxRecord> {
    const t0 = performance.now();
    const clock = new PhaseClock(cpTracer, {
      [ATTR.tenantId]: caller.tenant.id,
      [ATTR.template]: req.template,
    });
    clock.next("admission");
    try {
      const rec = await this.#create(caller, req, clock);
      clock.end();
      this.#notify((o) =>
        o.created?.({
          tenantId: caller.tenant.id,
          template: req.template,
          path: rec.startPath,
          outcome: "started",
          ms: performance.now() - t0,
        }),
      );
      return rec;
    } catch (e) {
      clock.end(e);
      this.#notify((o) =>
        o.created?.({
          tenantId: caller.tenant.id,
          template: req.template,
          path: null,
          outcome: "failed",
          code: toApiError(e).code,
          ms: performance.now() - t0,
        }),
      );
      throw e;
    }
  }

  async #create(caller: Caller, req: CreateRequest, clock: PhaseClock): Promise<SandboxRecord> {
    this.#checkTimeout(req.timeoutMs);
    let parent: SandboxRecord | undefined = caller.sandbox;
    if (caller.sandbox) {
      // A sandbox creating through its platform grant: the child is its own.
    } else if (req.parentToken !== undefined) {
      parent = await this.#store.findSandboxByTokenHash(sha256(req.parentToken));
      if (!parent || parent.tenantId !== caller.tenant.id) {
        throw new ApiError(
          "VALIDATION_FAILED",
          "X-Firebreak-Sandbox-Token does not belong to a sandbox of this tenant; send the token the platform gave the sandbox (FIREBREAK_SANDBOX_TOKEN) or omit the header",
        );
      }
    }
    // INVARIANT: another tenant's template answers exactly like a missing one.
    // (A snapshot's template was checked when its source sandbox was created.)
    if (!req.fromSnapshot && !(await this.templates.readable(req.template, caller))) {
      throw new ApiError(
        "TEMPLATE_NOT_FOUND",
        `no built template named ${req.template}; list them with GET /v1/templates or build it with POST /v1/templates`,
      );
    }
    // A create that names no shape gets the template's (code-interpreter: 2 vCPU, 1024 MiB).
    const shape =
      req.vcpus === undefined || req.memoryMib === undefined
        ? await this.templates.defaultShape(req.template)
        : undefined;
    const vcpus = req.vcpus ?? shape!.vcpus;
    const memoryMib = req.memoryMib ?? shape!.memoryMib;
    let networkPolicy = req.networkPolicy
      ? await this.#checkPolicy(caller.tenant.id, req.networkPolicy, "network.policy")
      : null;
    if (caller.sandbox) {
      // SECURITY: a sandbox cannot widen its own egress through a child.
      const own = caller.sandbox.networkPolicy ?? normalizePolicy({});
      networkPolicy ??= own;
      const wider = policyWithin(networkPolicy, own);
      if (wider) {
        throw new ApiError(
          "FORBIDDEN",
          `network.policy: a sandbox creates children whose egress is within its own; this policy adds ${wider}`,
        );
      }
    }
    clock.next("placement");
    // Placement by activation cost (scheduler/placement.ts): best first, the
    // rest are where the create goes if a node fails to start it.
    const want = {
      template: req.template,
      vcpus,
      memoryMib,
      tenant: caller.tenant.id,
    };
    const capacity = {
      vcpuOvercommit: this.#config.vcpuOvercommit,
      memoryOvercommit: this.#config.memoryOvercommit,
      reservedMemoryMib: 0,
    };
    // A create from a named snapshot goes to the node that holds it.
    const views = this.#nodes.views().filter((v) => !req.fromSnapshot || v.id === req.fromSnapshot.nodeId);
    const placement =
      this.#config.placement === "random"
        ? placeRandomly(views, want, Math.random, capacity)
        : place(views, want, capacity);
    const candidates = placement.candidates;
    if (!candidates.length) {
      throw new ApiError(
        "CAPACITY_EXHAUSTED",
        `no node can take this sandbox now: ${placement.excluded.map((e) => `${e.nodeId}: ${e.reason}`).join("; ") || "no node has joined"}`,
        { headers: { "retry-after": String(this.#config.capacityRetryAfterSeconds) } },
      );
    }
    const id = newId();
    tagSpan(id, caller.tenant.id);
    const platform = networkPolicy?.platform ? this.#platformTarget(id) : undefined;
    const { token, hash } = newSandboxToken();
    const now = iso();
    let chosen = candidates[0]!;
    let rec: SandboxRecord = {
      id,
      tenantId: caller.tenant.id,
      nodeId: chosen.nodeId,
      nodeSandboxId: null,
      template: req.template,
      state: "requested",
      vcpus,
      memoryMib,
      metadata: req.metadata,
      createdAt: now,
      readyAt: null,
      endedAt: null,
      endReason: null,
      endedBy: null,
      timeoutMs: req.timeoutMs,
      timeoutAt: null,
      startPath: null,
      timings: null,
      parentId: parent?.id ?? req.lineage?.parentId ?? null,
      rootId: parent?.rootId ?? req.lineage?.rootId ?? id,
      tokenHash: hash,
      envdTokenHash: null,
      createdByKey: caller.keyId,
      networkPolicy,
      pausedAt: null,
      placement: null,
    };
    // INVARIANT: admitted against the budget of the node it is placed on; a
    // node over its budget is skipped for the next candidate.
    let quota = await this.#store.insertSandboxWithinQuota(
      rec,
      caller.tenant.limits,
      0,
      this.#nodeBudget(chosen.nodeId),
    );
    for (
      let i = 1;
      !quota.ok && (quota.limit === "nodeVcpus" || quota.limit === "nodeMemoryMib") && i < candidates.length;
      i++
    ) {
      chosen = candidates[i]!;
      rec = { ...rec, nodeId: chosen.nodeId };
      quota = await this.#store.insertSandboxWithinQuota(
        rec,
        caller.tenant.limits,
        0,
        this.#nodeBudget(chosen.nodeId),
      );
    }
    if (!quota.ok) throw this.#quotaError(quota);
    await this.#event(id, "requested", {
      template: req.template,
      vcpus,
      memoryMib,
      timeoutMs: req.timeoutMs,
      key: caller.keyId,
      ...(rec.parentId ? { parentId: rec.parentId, rootId: rec.rootId } : {}),
      ...(req.fromSnapshot ? { fromSnapshot: req.fromSnapshot.snapshotId } : {}),
      ...(caller.sandbox ? { bySandbox: caller.sandbox.id } : {}),
      ...(activeTraceId() ? { traceId: activeTraceId() } : {}),
    });
    if (req.onTimeout && req.onTimeout !== "kill") {
      this.#onTimeout.set(id, req.onTimeout);
      await this.#event(id, LIFECYCLE_EVENT, {
        onTimeout: req.onTimeout,
        ...(req.pauseMemory === false ? { pauseMemory: false } : {}),
      });
    }
    const meter = new Meter();
    this.#meters.set(id, meter);
    await this.#store.putInterimUsage(this.#usage(rec, meter, Date.now(), false));

    return this.#withLock(id, async () => {
      const scheduled = (c: Candidate) => ({
        node: c.nodeId,
        path: c.path,
        predictedMs: c.predictedMs,
        reason: c.reason,
      });
      await this.#event(id, "scheduled", {
        ...scheduled(chosen),
        alternatives: candidates.filter((c) => c !== chosen).map(scheduled),
        excluded: placement.excluded,
      });
      rec = await this.#transition(rec, "starting", {}, `scheduled on ${chosen.nodeId}`, "start");
      try {
        const request = {
          template: req.template,
          vcpus,
          memoryMib,
          envVars: {
            ...req.envVars,
            FIREBREAK_SANDBOX_ID: id,
            FIREBREAK_SANDBOX_TOKEN: token,
            // The platform grant: the SDK inside reaches the API here, as this sandbox.
            ...(platform ? { FIREBREAK_URL: `http://${PLATFORM_SERVICE_NAME}:${platform.port}` } : {}),
          },
          ...(networkPolicy
            ? {
                network: {
                  policy: networkPolicy,
                  tenant: caller.tenant.id,
                  admin: networkPolicy.grantedBy === "admin",
                },
              }
            : {}),
          platformId: id,
          ...(req.fromSnapshot ? { fromSnapshot: req.fromSnapshot.snapshotId } : {}),
          ...(platform ? { platform } : {}),
        };
        // A node that does not answer, or has no room after all, hands the
        // create to the next candidate (same sandbox record, billed once).
        let started: Awaited<ReturnType<NodeClient["create"]>> | undefined;
        const startCtx = clock.next("start");
        for (let i = candidates.indexOf(chosen); !started; ) {
          this.#nodes.notePlaced(chosen.nodeId, req.template, { vcpus, memoryMib }, chosen.path === "warm");
          try {
            clock.set(ATTR.nodeId, chosen.nodeId);
            started = await context.with(startCtx, () => this.#nodes.node(chosen.nodeId).create(request));
          } catch (e) {
            const code = toApiError(e).code;
            const next = candidates[++i];
            if (!next || (code !== "NODE_UNAVAILABLE" && code !== "CAPACITY_EXHAUSTED")) throw e;
            await this.#event(id, "rescheduled", { from: chosen.nodeId, code, to: scheduled(next) });
            chosen = next;
            await this.#store.updateSandbox(id, { nodeId: chosen.nodeId }, ["starting"]);
            rec = { ...rec, nodeId: chosen.nodeId };
          }
        }
        clock.set(ATTR.startPath, started.path);
        clock.next("record");
        // Charged from hand-over: what the VM used before is the platform's.
        if (started.handover) (await this.#meterOf(id)).handOver(started.handover);
        const ready = Date.now();
        await this.#event(id, "started", {
          path: started.path,
          totalMs: started.totalMs,
          phases: started.phases,
          ...(started.fallback ? { fallback: started.fallback } : {}),
        });
        rec = await this.#transition(
          rec,
          "running",
          {
            nodeSandboxId: started.id,
            readyAt: iso(ready),
            timeoutAt: iso(ready + req.timeoutMs),
            startPath: started.path,
            timings: { totalMs: started.totalMs, phases: started.phases },
            envdTokenHash: sha256(started.accessToken),
            ...(started.policy ? { networkPolicy: started.policy } : {}),
          },
          "ready",
          "start",
        );
        this.#rememberToken(id, started.accessToken);
        await this.#event(id, "ready", { path: started.path, timeoutAt: rec.timeoutAt });
        this.#log.info({ sandboxId: id, path: started.path, totalMs: started.totalMs }, "sandbox running");
        await this.#sample(rec).catch(() => {});
        return rec;
      } catch (e) {
        const err = toApiError(e);
        await this.#event(id, "start_failed", { code: err.code, message: err.message });
        await this.#end(rec, "failed", "start_failed", "node", undefined);
        this.#log.warn({ sandboxId: id, err: e }, "sandbox failed to start");
        throw err;
      }
    });
  }

  // ---------------------------------------------------------------- ending

  #usage(rec: SandboxRecord, meter: Meter, endMs: number, final: boolean, endReason?: string): UsageRecord {
    const created = Date.parse(rec.createdAt);
    return {
      sandboxId: rec.id,
      tenantId: rec.tenantId,
      template: rec.template,
      vcpus: rec.vcpus,
      memoryMib: rec.memoryMib,
      createdAt: rec.createdAt,
      readyAt: rec.readyAt,
      endedAt: iso(endMs),
      lifetimeSeconds: Math.max(0, Math.round(endMs - created) / 1000),
      startPath: rec.startPath,
      cpuSeconds: meter.cpuSeconds,
      memoryPeakMib: meter.memoryPeakMib,
      memoryGibSeconds: meter.memoryGibSeconds,
      endReason: final ? (endReason ?? null) : null,
      metadata: rec.metadata,
      parentId: rec.parentId,
      rootId: rec.rootId,
      final,
      traffic: meter.traffic,
      chargedFrom: meter.handedOverAt === null ? null : iso(meter.handedOverAt),
      overheadCpuSeconds: meter.overheadCpuSeconds,
      meterState: meter.checkpoint(),
    };
  }

  /** Records the end and the final usage record (exactly once: the store refuses a second end). */
  async #end(
    rec: SandboxRecord,
    state: "killed" | "crashed" | "failed",
    reason: string,
    by: string,
    lastSample: UsageSample | undefined,
    endMs = Date.now(),
  ): Promise<boolean> {
    const meter = await this.#meterOf(rec.id);
    if (lastSample) this.#meterAdd(rec, meter, lastSample);
    const endedAt = iso(endMs);
    const ended = await this.#store.endSandbox(
      rec.id,
      { state, endedAt, endReason: reason, endedBy: by },
      this.#usage(rec, meter, endMs, true, reason),
    );
    this.#meters.delete(rec.id);
    this.metrics.forget(rec.id);
    this.#onTimeout.delete(rec.id);
    this.#notifyStopped(rec.id, "ended");
    // INVARIANT: nothing this replica holds open to an ended sandbox stays
    // open, however it ended (a kill closed them already; a crash did not).
    if (rec.nodeSandboxId) {
      try {
        this.#nodeOf(rec).closeTunnels?.(rec.nodeSandboxId);
      } catch (e) {
        this.#log.warn({ sandboxId: rec.id, err: (e as Error).message }, "tunnels not closed");
      }
    }
    if (ended) {
      await this.#event(rec.id, "state", { from: rec.state, to: state, reason });
      await this.#event(rec.id, "ended", { state, reason, by });
      this.#log.info({ sandboxId: rec.id, state, reason, by }, "sandbox ended");
    }
    return ended;
  }

  async kill(tenantId: string, id: string, by: string, reason = "killed"): Promise<void> {
    await this.get(tenantId, id);
    await this.#kill(id, by, reason);
  }

  async #kill(id: string, by: string, reason: string): Promise<void> {
    await this.#withLock(id, async () => {
      let rec = await this.#store.getSandbox(id);
      if (!rec || isFinalState(rec.state)) return;
      if (rec.state === "requested" || rec.state === "starting") return; // the create's own failure path ends it
      const clock = new PhaseClock(cpTracer, { [ATTR.sandboxId]: id, [ATTR.tenantId]: rec.tenantId });
      clock.next("admission");
      rec = await this.#transition(rec, "stopping", {}, reason, "kill");
      await this.#event(id, "kill", { by, reason });
      let sample: UsageSample | undefined;
      const teardown = clock.next("teardown");
      try {
        const node = this.#nodeOf(rec);
        if (rec.nodeSandboxId)
          sample = await context.with(teardown, () => node.kill(rec!.nodeSandboxId!, reason));
      } catch (e) {
        this.#log.error({ sandboxId: id, err: e }, "node kill failed");
      }
      clock.next("record");
      await this.#end(rec, "killed", reason, by, sample);
      clock.end();
    });
  }

  // ---------------------------------------------------------------- network

  /**
   * A validated, normalized policy whose services the tenant may bind.
   * INVARIANT: a service the tenant may not bind answers exactly like one that
   * does not exist (VALIDATION_FAILED naming it), so tenants cannot probe names.
   */
  async #checkPolicy(tenantId: string, input: EgressPolicy, field: string): Promise<NormalizedPolicy> {
    let policy: NormalizedPolicy;
    try {
      policy = normalizePolicy(input);
    } catch (e) {
      if (e instanceof EgressError) {
        throw new ApiError("VALIDATION_FAILED", `${field}: ${e.message.replace(/^egress policy: /, "")}`);
      }
      throw e;
    }
    if (policy.services.length) {
      const visible = new Set((await this.services(tenantId)).map((s) => s.name));
      for (const name of policy.services) {
        if (!visible.has(name)) {
          throw new ApiError(
            "VALIDATION_FAILED",
            `${field}.services: no private service named ${JSON.stringify(name)} is available to this tenant; list them with GET /v1/services`,
          );
        }
      }
    }
    return policy;
  }

  /** An egress policy as a create would take it (VALIDATION_FAILED naming `field` otherwise). */
  checkPolicy(tenantId: string, input: EgressPolicy, field: string): Promise<NormalizedPolicy> {
    return this.#checkPolicy(tenantId, input, field);
  }

  /** Private services a tenant may bind (null: every service, for admins). */
  async services(tenantId: string | null): Promise<PrivateService[]> {
    const all = await this.nodes.listServices();
    return tenantId === null ? all : all.filter((s) => !s.tenants || s.tenants.includes(tenantId));
  }

  async networkPolicy(tenantId: string, id: string): Promise<NormalizedPolicy> {
    const rec = await this.get(tenantId, id);
    return rec.networkPolicy ?? normalizePolicy({});
  }

  /** Replaces the egress policy of a running sandbox; in force when this resolves. */
  /**
   * `within`: the calling sandbox's own policy (platform grant): SECURITY: a
   * sandbox cannot widen a descendant's egress beyond its own.
   */
  async updateNetworkPolicy(
    tenantId: string,
    id: string,
    input: EgressPolicy,
    within?: NormalizedPolicy,
  ): Promise<NormalizedPolicy> {
    await this.get(tenantId, id);
    const policy = await this.#checkPolicy(tenantId, input, "policy");
    const wider = within ? policyWithin(policy, within) : undefined;
    if (wider) {
      throw new ApiError(
        "FORBIDDEN",
        `policy: a sandbox sets its descendants' egress within its own; this policy adds ${wider}`,
      );
    }
    return this.#withLock(id, async () => {
      const rec = await this.get(tenantId, id);
      if (rec.state !== "running" || !rec.nodeSandboxId) {
        throw new ApiError(
          "CONFLICT",
          `sandbox ${id} is ${rec.state}; its egress policy changes only while it runs`,
        );
      }
      const applied = await this.#nodeOf(rec)
        .updatePolicy(rec.nodeSandboxId, policy, tenantId, policy.grantedBy === "admin")
        .catch((e) => {
          throw toApiError(e);
        });
      await this.#store.updateSandbox(id, { networkPolicy: applied }, ["running"]);
      await this.#event(id, "network_policy", { policy: applied });
      return applied;
    });
  }

  // ---------------------------------------------------------------- timeout, pause, resume, fork

  async setTimeout(tenantId: string, id: string, timeoutMs: number): Promise<SandboxRecord> {
    this.#checkTimeout(timeoutMs);
    await this.get(tenantId, id);
    return this.#withLock(id, async () => {
      const rec = await this.get(tenantId, id);
      if (isFinalState(rec.state) || rec.state === "stopping") {
        throw new ApiError("CONFLICT", `sandbox ${id} is ${rec.state}; its timeout cannot change`);
      }
      const timeoutAt = rec.state === "paused" ? null : iso(Date.now() + timeoutMs);
      await this.#store.updateSandbox(id, { timeoutMs, timeoutAt }, [rec.state]);
      await this.#event(id, "timeout_set", { timeoutMs, timeoutAt });
      return { ...rec, timeoutMs, timeoutAt };
    });
  }

  /**
   * Takes room in the tenant's paused-disk quota (maxPausedMib: paused
   * sandboxes' guest memory, the size their memory file can reach). Taken
   * before the check, like #admit; release once the store has it paused.
   */
  async #admitPause(tenant: Tenant, memoryMib: number): Promise<() => void> {
    const mine = { tenantId: tenant.id, memoryMib };
    this.#pausing.add(mine);
    const release = () => this.#pausing.delete(mine);
    try {
      const used = await this.#store.pausedUsage(tenant.id);
      let inFlight = 0;
      for (const p of this.#pausing) if (p !== mine && p.tenantId === tenant.id) inFlight += p.memoryMib;
      const limit = tenant.limits.maxPausedMib;
      if (used.memoryMib + inFlight + memoryMib > limit) {
        throw new ApiError(
          "QUOTA_EXCEEDED",
          `quota exceeded: maxPausedMib is ${limit}, ${used.memoryMib + inFlight} MiB paused (${used.sandboxes} sandboxes), ${memoryMib} MiB more requested; kill a paused sandbox or ask for a higher limit`,
        );
      }
    } catch (e) {
      release();
      throw e;
    }
    return release;
  }

  /** `memory: false`: keep only the disk; the resume boots the sandbox afresh from it. */
  async pause(caller: Caller, id: string, opts: { memory?: boolean } = {}): Promise<SandboxRecord> {
    const memory = opts.memory !== false;
    const tenantId = caller.tenant.id;
    await this.get(tenantId, id);
    return this.#withLock(id, async () => {
      let rec = await this.get(tenantId, id);
      assertTransition(id, rec.state, "paused", "pause");
      const release = await this.#admitPause(caller.tenant, rec.memoryMib);
      const meter = await this.#meterOf(id);
      const clock = new PhaseClock(cpTracer, { [ATTR.sandboxId]: id, [ATTR.tenantId]: rec.tenantId });
      try {
        const save = clock.next("save");
        const node = this.#nodeOf(rec);
        const sample = await context
          .with(save, () => node.pause(rec.nodeSandboxId!, { memory }))
          .catch((e) => {
            clock.end(e);
            throw toApiError(e);
          });
        clock.next("record");
        if (sample) this.#meterAdd(rec, meter, sample);
        meter.suspend();
        this.metrics.rebase(id);
        this.#notifyStopped(id, "paused");
        this.#meters.set(id, meter);
        // INVARIANT: paused sandboxes do not time out (timeoutAt null); resume restarts the
        // timeout. The reaper ends them after the paused retention instead (reap).
        rec = await this.#transition(
          rec,
          "paused",
          { timeoutAt: null, pausedAt: iso() },
          memory ? "paused by request" : "paused by request (filesystem only)",
          "pause",
        );
      } finally {
        release();
      }
      await this.#store.putInterimUsage(this.#usage(rec, meter, Date.now(), false));
      clock.end();
      return rec;
    });
  }

  async resume(caller: Caller, id: string, timeoutMs?: number): Promise<SandboxRecord> {
    if (timeoutMs !== undefined) this.#checkTimeout(timeoutMs);
    await this.get(caller.tenant.id, id);
    return this.#withLock(id, async () => {
      let rec = await this.get(caller.tenant.id, id);
      assertTransition(id, rec.state, "running", "resume");
      // It already counts towards maxSandboxes; its vCPUs and memory come back.
      const limits = { ...caller.tenant.limits, maxSandboxes: Number.MAX_SAFE_INTEGER };
      const clock = new PhaseClock(cpTracer, { [ATTR.sandboxId]: id, [ATTR.tenantId]: rec.tenantId });
      clock.next("admission");
      const release = await this.#admit(rec.tenantId, rec, 1, limits, rec.nodeId);
      try {
        const restore = clock.next("restore");
        const node = this.#nodeOf(rec);
        const r = await context
          .with(restore, () => node.resume(rec.nodeSandboxId!))
          .catch((e) => {
            clock.end(e);
            throw toApiError(e);
          });
        clock.next("record");
        // A new cgroup: charged from when it runs again; the restore is the platform's.
        if (r.handover) {
          const meter = await this.#meterOf(id);
          meter.handOver(r.handover);
          await this.#store.putInterimUsage(this.#usage(rec, meter, r.handover.at, false));
        }
        const t = timeoutMs ?? rec.timeoutMs;
        await this.#event(id, "resumed", {
          path: r.path,
          totalMs: r.totalMs,
          ...(r.phases ? { phases: r.phases } : {}),
        });
        rec = await this.#transition(
          rec,
          "running",
          { timeoutMs: t, timeoutAt: iso(Date.now() + t), pausedAt: null },
          "resumed by request",
          "resume",
        );
        clock.end();
      } finally {
        release();
      }
      return rec;
    });
  }

  async fork(caller: Caller, id: string, count: number): Promise<SandboxRecord[]> {
    await this.get(caller.tenant.id, id);
    return this.#withLock(id, async () => {
      const parent = await this.get(caller.tenant.id, id);
      if (parent.state !== "running")
        throw new ApiError("CONFLICT", `cannot fork sandbox ${id}: it is ${parent.state}`);
      const release = await this.#admit(parent.tenantId, parent, count, caller.tenant.limits, parent.nodeId);
      try {
        return await this.#forkAdmitted(caller, parent, count);
      } finally {
        release();
      }
    });
  }

  async #forkAdmitted(caller: Caller, parent: SandboxRecord, count: number): Promise<SandboxRecord[]> {
    {
      const id = parent.id;
      await this.#event(id, "fork", { count });
      const clock = new PhaseClock(cpTracer, { [ATTR.sandboxId]: id, [ATTR.tenantId]: parent.tenantId });
      const forking = clock.next("fork");
      const node = this.#nodeOf(parent);
      const children = await context
        .with(forking, () => node.fork(parent.nodeSandboxId!, count))
        .catch((e) => {
          clock.end(e);
          throw toApiError(e);
        });
      clock.next("record");
      const out: SandboxRecord[] = [];
      const unlimited: TenantLimits = {
        maxSandboxes: Number.MAX_SAFE_INTEGER,
        maxVcpus: Number.MAX_SAFE_INTEGER,
        maxMemoryMib: Number.MAX_SAFE_INTEGER,
        requestsPerMinute: 0,
        maxKeys: 0,
        maxPausedMib: 0,
      };
      for (const c of children) {
        const now = Date.now();
        const child: SandboxRecord = {
          ...parent,
          id: newId(),
          nodeSandboxId: c.id,
          state: "running",
          createdAt: iso(now),
          readyAt: iso(now),
          endedAt: null,
          endReason: null,
          endedBy: null,
          timeoutAt: iso(now + parent.timeoutMs),
          startPath: "snapshot",
          timings: { totalMs: c.totalMs, phases: c.phases },
          parentId: parent.id,
          rootId: parent.rootId,
          tokenHash: newSandboxToken().hash,
          envdTokenHash: sha256(c.accessToken),
          createdByKey: caller.keyId,
          // INVARIANT: the policy recorded is the one the node enforces on the child.
          networkPolicy: c.policy ?? parent.networkPolicy,
          pausedAt: null,
        };
        // Checked above for the whole fork; the children exist already.
        await this.#store.insertSandboxWithinQuota(child, unlimited);
        this.#rememberToken(child.id, c.accessToken);
        await this.#event(child.id, "requested", { forkOf: parent.id, key: caller.keyId });
        await this.#event(child.id, "started", { path: "snapshot", totalMs: c.totalMs, phases: c.phases });
        await this.#event(child.id, "ready", { path: "snapshot", timeoutAt: child.timeoutAt });
        const meter = new Meter();
        if (c.handover) meter.handOver(c.handover);
        this.#meters.set(child.id, meter);
        await this.#store.putInterimUsage(this.#usage(child, meter, now, false));
        // A child with the platform grant acts as itself, not as its parent.
        if (child.networkPolicy?.platform && this.#platform?.endpoint) {
          await node
            .updatePolicy(c.id, child.networkPolicy, child.tenantId, false, this.#platformTarget(child.id))
            .catch((e) =>
              this.#log.warn(
                { sandboxId: child.id, err: (e as Error).message },
                "fork child kept its parent's platform credential",
              ),
            );
        }
        out.push(child);
      }
      clock.end();
      return out;
    }
  }

  /**
   * Saves a running sandbox as a node snapshot (the sandbox keeps running).
   * NOT_IMPLEMENTED when its node cannot take named snapshots.
   */
  async snapshot(
    caller: Caller,
    id: string,
  ): Promise<{ nodeId: string; snapshotId: string; source: SandboxRecord }> {
    await this.get(caller.tenant.id, id);
    return this.#withLock(id, async () => {
      const rec = await this.get(caller.tenant.id, id);
      if (rec.state !== "running" || !rec.nodeSandboxId) {
        throw new ApiError("CONFLICT", `cannot snapshot sandbox ${id}: it is ${rec.state}`);
      }
      const node = this.#nodeOf(rec);
      if (!node.snapshotOf) {
        throw new ApiError(
          "NOT_IMPLEMENTED",
          `snapshots of a running sandbox: node ${node.id} does not take named snapshots yet`,
        );
      }
      const { snapshotId } = await node.snapshotOf(rec.nodeSandboxId).catch((e) => {
        throw toApiError(e);
      });
      await this.#event(id, "snapshot", { snapshotId, node: node.id, key: caller.keyId });
      return { nodeId: node.id, snapshotId, source: rec };
    });
  }

  /** Deletes a node snapshot; false when the node has none of that id. */
  async deleteSnapshot(nodeId: string, snapshotId: string): Promise<boolean> {
    const node = this.#nodes.node(nodeId);
    if (!node.deleteSnapshot) return false;
    return node.deleteSnapshot(snapshotId).catch((e) => {
      throw toApiError(e);
    });
  }

  // ---------------------------------------------------------------- background: reaper, sampler, recovery

  /**
   * Asks each node, in one call per node, for the state of the sandboxes the
   * store has as live there. A node that does not answer is left out (its
   * sandboxes are neither confirmed nor ended: its lease decides).
   */
  async #statusByNode(recs: SandboxRecord[]) {
    const byNode = new Map<string, SandboxRecord[]>();
    for (const r of recs) {
      if (!r.nodeSandboxId) continue;
      byNode.set(r.nodeId, [...(byNode.get(r.nodeId) ?? []), r]);
    }
    const out = new Map<string, NodeSandboxStatus>();
    await Promise.all(
      [...byNode].map(async ([nodeId, rs]) => {
        try {
          const got = await this.#nodes.node(nodeId).status(rs.map((r) => r.nodeSandboxId!));
          for (const r of rs) {
            const st = got.get(r.nodeSandboxId!);
            if (st) out.set(r.id, st);
          }
        } catch (e) {
          this.#log.warn({ node: nodeId, err: (e as Error).message }, "node did not report its sandboxes");
        }
      }),
    );
    return out;
  }

  /** Ends sandboxes the control plane recorded as live whose VM is gone; keeps adopted paused ones. */
  async recover(): Promise<{ ended: string[]; adopted: string[] }> {
    const ended: string[] = [];
    const adopted: string[] = [];
    const live = await this.#store.listLiveSandboxes();
    const statuses = await this.#statusByNode(live);
    for (const rec of live) {
      const status = statuses.get(rec.id);
      // A node that did not answer keeps its sandboxes until its lease says otherwise.
      if (!status && rec.nodeSandboxId && !this.#nodes.ids().includes(rec.nodeId) === false) continue;
      const interim = await this.#store.getUsage(rec.id);
      const meter = interim ? Meter.restore(interim) : new Meter();
      if (rec.state === "paused" && status?.state === "paused") {
        this.#meters.set(rec.id, meter);
        await this.#event(rec.id, "adopted", { reason: "control plane restarted; paused sandbox kept" });
        adopted.push(rec.id);
        continue;
      }
      if (status && status.state !== "gone") {
        this.#meters.set(rec.id, meter);
        continue; // its node still runs it (a control plane restart beside a node that stayed up)
      }
      this.#meters.set(rec.id, meter);
      // Usage is known up to the last interim sample: bill until then.
      const lastSeen = Date.parse(interim?.endedAt ?? rec.readyAt ?? rec.createdAt);
      const state = stateAfterLoss(rec.state);
      await this.#event(rec.id, "lost", {
        reason: "control plane restarted and the sandbox's VM is gone",
        was: rec.state,
      });
      await this.#end(rec, state, "control_plane_restart", "control-plane", undefined, lastSeen);
      ended.push(rec.id);
    }
    return { ended, adopted };
  }

  async #sample(rec: SandboxRecord, sample?: UsageSample): Promise<void> {
    if (!rec.nodeSandboxId) return;
    sample ??= await this.#nodeOf(rec).usageSample(rec.nodeSandboxId);
    if (!sample) return;
    const meter = await this.#meterOf(rec.id);
    this.#meterAdd(rec, meter, sample);
    this.metrics.record(rec.id, sample, rec);
    await this.#store.putInterimUsage(this.#usage(rec, meter, sample.at, false));
  }

  /** Adds a sample to a meter and tells observers what it added. */
  #meterAdd(rec: SandboxRecord, meter: Meter, sample: UsageSample): void {
    const before = { cpu: meter.cpuSeconds, gib: meter.memoryGibSeconds, traffic: meter.traffic };
    meter.add(sample);
    if (!this.#observers.size) return;
    const after = meter.traffic;
    const traffic = structuredClone(after);
    for (const c of Object.keys(traffic) as (keyof typeof traffic)[]) {
      traffic[c] = {
        tx: Math.max(0, after[c].tx - before.traffic[c].tx),
        rx: Math.max(0, after[c].rx - before.traffic[c].rx),
      };
    }
    const delta = {
      cpuSeconds: Math.max(0, meter.cpuSeconds - before.cpu),
      memoryGibSeconds: Math.max(0, meter.memoryGibSeconds - before.gib),
      traffic,
    };
    this.#notify((o) => o.metered?.(rec, delta));
  }

  /** One sampler pass: interim usage of every running sandbox; VMs that died are ended as crashed. */
  async sampleAll(): Promise<void> {
    if (this.#sampling) return;
    this.#sampling = true;
    try {
      const running = (await this.#store.listLiveSandboxes()).filter(
        (r) => r.state === "running" && r.nodeSandboxId && !this.#locks.has(r.id),
      );
      const statuses = await this.#statusByNode(running);
      const byNode = new Map<string, SandboxRecord[]>();
      for (const rec of running) {
        const status = statuses.get(rec.id);
        if (status?.state === "gone") {
          await this.#withLock(rec.id, async () => {
            const now = await this.#store.getSandbox(rec.id);
            if (now?.state !== "running") return;
            await this.#event(rec.id, "crashed", { reason: status.reason });
            await this.#end(now, "crashed", "crashed", "node", undefined);
          });
          continue;
        }
        if (status) byNode.set(rec.nodeId, [...(byNode.get(rec.nodeId) ?? []), rec]);
      }
      await Promise.all(
        [...byNode].map(async ([nodeId, recs]) => {
          try {
            const samples = await this.#nodes.node(nodeId).usage(recs.map((r) => r.nodeSandboxId!));
            for (const rec of recs) {
              const u = samples.get(rec.nodeSandboxId!);
              if (u) await this.#sample(rec, u);
            }
          } catch (e) {
            this.#log.warn({ node: nodeId, err: (e as Error).message }, "usage samples failed");
          }
        }),
      );
    } finally {
      this.#sampling = false;
    }
  }

  /**
   * One reaper pass: kills every running sandbox whose timeout has passed,
   * and every paused one paused longer than the paused retention (reason
   * `paused_retention`; its final usage record is written like any end).
   */
  async reap(): Promise<void> {
    if (this.#reaping) return;
    this.#reaping = true;
    try {
      const now = Date.now();
      const live = await this.#store.listLiveSandboxes();
      const expired = live.filter(
        (r) => r.state === "running" && r.timeoutAt !== null && Date.parse(r.timeoutAt) <= now,
      );
      // INVARIANT: nothing stays paused (holding disk) longer than pausedRetentionMs.
      const stale = live.filter(
        (r) =>
          r.state === "paused" &&
          r.pausedAt !== null &&
          Date.parse(r.pausedAt) + this.#config.pausedRetentionMs <= now,
      );
      await Promise.all([
        ...expired.map((r) =>
          this.#expire(r).catch((e) => this.#log.error({ sandboxId: r.id, err: e }, "reaper kill failed")),
        ),
        ...stale.map((r) =>
          this.#kill(r.id, "reaper", "paused_retention").catch((e) =>
            this.#log.error({ sandboxId: r.id, err: e }, "reaper kill of a paused sandbox failed"),
          ),
        ),
      ]);
    } finally {
      this.#reaping = false;
    }
  }

  // ---------------------------------------------------------------- nodes: leases, loss, return, templates

  /**
   * One pass over the node registry (on the `nodes` lease holder): a node
   * whose lease ran out is lost and its live sandboxes end (a final usage
   * record each, billed to their last sample, exactly once); a lost node that
   * reports again is reconciled (what the store no longer wants is killed on
   * it) and active again.
   */
  async watchNodes(): Promise<void> {
    const cluster = this.#nodes;
    if (!("expired" in cluster)) return;
    const c = cluster as unknown as import("../node/cluster.ts").Cluster;
    for (const n of await c.expired()) {
      if (!(await this.#store.updateNode(n.id, { state: "lost" }, ["active", "draining"]))) continue;
      this.#log.warn({ node: n.id, leaseUntil: n.leaseUntil }, "node lost: its lease ran out");
      for (const rec of await this.#store.listLiveSandboxesOnNode(n.id)) {
        await this.#withLock(rec.id, async () => {
          const now = await this.#store.getSandbox(rec.id);
          if (!now || isFinalState(now.state)) return;
          const interim = await this.#store.getUsage(rec.id);
          const lastSeen = Date.parse(interim?.endedAt ?? now.readyAt ?? now.createdAt);
          await this.#event(rec.id, "lost", { reason: `node ${n.id} missed its lease`, was: now.state });
          await this.#end(now, stateAfterLoss(now.state), "node_lost", "control-plane", undefined, lastSeen);
        });
      }
    }
    for (const n of await c.returned()) await this.reconcileNode(n.id);
  }

  /** The registry changed (a node joined or left): reload it now. */
  async nodesChanged(): Promise<void> {
    if ("sync" in this.#nodes) await (this.#nodes as unknown as { sync(): Promise<void> }).sync();
    await this.#nodes.poll();
  }

  /** Keeps a warm pool of a template on one node (its report shows the slots). */
  async setPool(nodeId: string, template: string, size: number, shape: { vcpus: number; memoryMib: number }) {
    // Not awaited: filling takes a restore per VM; the node's report shows progress.
    const node = this.#nodes.node(nodeId);
    node
      .setPool(template, size, shape)
      .catch((e) =>
        this.#log.warn({ node: nodeId, template, err: (e as Error).message }, "warm pool not filled"),
      );
  }

  /** No new sandboxes on a node (running ones stay), or accept again. */
  async drainNode(nodeId: string, draining: boolean): Promise<void> {
    await this.#nodes
      .node(nodeId)
      .drain(draining)
      .catch((e) => {
        throw toApiError(e);
      });
    await this.#store.updateNode(nodeId, { state: draining ? "draining" : "active" }, ["active", "draining"]);
    await this.nodesChanged();
  }

  /**
   * What a node runs that the store no longer wants (ended while the node was
   * away, or never recorded) is killed there; the node is active again.
   */
  async reconcileNode(nodeId: string): Promise<{ killed: string[] }> {
    const node = this.#nodes.node(nodeId);
    const wanted = new Set(
      (await this.#store.listLiveSandboxesOnNode(nodeId)).map((r) => r.nodeSandboxId).filter(Boolean),
    );
    const killed: string[] = [];
    for (const { id } of await node.listSandboxes()) {
      if (wanted.has(id)) continue;
      await node.kill(id, "not wanted: the control plane ended it while its node was away").catch(() => {});
      killed.push(id);
    }
    await this.#store.updateNode(nodeId, { state: "active" }, ["lost"]);
    this.#log.info({ node: nodeId, killed }, "node back: reconciled");
    return { killed };
  }

  /**
   * Every active node gets every template some node has, by content address
   * (node/template-copy.ts), off the hot path (on the `templates` lease holder).
   */
  async distributeTemplates(): Promise<void> {
    const views = this.#nodes.views().filter((v) => v.healthy && !v.report.draining);
    const have = new Map<string, { key: string; from: string }>();
    for (const v of views) {
      for (const t of v.report.templates)
        if (t.image && !have.has(t.name)) have.set(t.name, { key: t.key, from: v.id });
    }
    for (const [name, { key, from }] of have) {
      for (const v of views) {
        if (v.report.templates.some((t) => t.name === name && t.key === key)) continue;
        try {
          const t0 = performance.now();
          await copyTemplate(this.#nodes.node(from), this.#nodes.node(v.id), name);
          this.#log.info(
            { template: name, key, from, to: v.id, ms: Math.round(performance.now() - t0) },
            "template copied",
          );
        } catch (e) {
          this.#log.warn(
            { template: name, from, to: v.id, err: (e as Error).message },
            "template copy failed",
          );
        }
      }
    }
  }

  /** The latest lifecycle event's detail (timeout action, pause kind), if any. */
  async #lifecycle(id: string): Promise<Record<string, unknown> | undefined> {
    const events = await this.#store.listEvents(id);
    return events.filter((e) => e.type === LIFECYCLE_EVENT).at(-1)?.detail;
  }

  /** Whether a timeout pause keeps the memory (its lifecycle event says `pauseMemory: false` when not). */
  async #timeoutPauseMemory(id: string): Promise<boolean> {
    return (await this.#lifecycle(id))?.["pauseMemory"] !== false;
  }

  /** The timeout action of a sandbox: its lifecycle event (cached), else kill. */
  async timeoutAction(id: string): Promise<TimeoutAction> {
    const cached = this.#onTimeout.get(id);
    if (cached) return cached;
    const action = (await this.#lifecycle(id))?.["onTimeout"] === "pause" ? "pause" : "kill";
    if (action !== "kill") this.#onTimeout.set(id, action);
    return action;
  }

  /**
   * A running sandbox whose timeout passed: paused when it asked for that
   * (E2B's autoPause; a pause that fails, for example over the paused quota,
   * kills it instead), else killed.
   */
  async #expire(r: SandboxRecord): Promise<void> {
    if ((await this.timeoutAction(r.id)) === "pause") {
      const tenant = await this.#store.getTenant(r.tenantId);
      if (tenant) {
        try {
          await this.pause({ keyId: "reaper", tenant }, r.id, {
            memory: await this.#timeoutPauseMemory(r.id),
          });
          await this.#event(r.id, "auto_paused", { reason: "timeout" });
          return;
        } catch (e) {
          // Paused or ended meanwhile (another reaper pass, a request): nothing to do.
          if ((await this.#store.getSandbox(r.id))?.state !== "running") return;
          this.#log.warn({ sandboxId: r.id, err: (e as Error).message }, "auto-pause failed; killing");
        }
      }
    }
    await this.#kill(r.id, "reaper", "timeout");
  }

  /**
   * Starts the reaper and the sampler. With several replicas on one store,
   * `runsBackgroundWork` says whether this one should run a pass now (it holds
   * that pass's lease, store/leader.ts). @default every pass runs
   */
  start(
    opts: { runsBackgroundWork?: (pass: "reaper" | "sampler" | "nodes" | "templates") => boolean } = {},
  ): void {
    const runs = opts.runsBackgroundWork ?? (() => true);
    const every = (
      ms: number,
      pass: "reaper" | "sampler" | "nodes" | "templates",
      fn: () => Promise<void>,
    ) => {
      // INVARIANT: a pass never overlaps itself: a tick while it still runs
      // (a template copy on a loaded host outlasts its interval) is skipped.
      let running = false;
      const t = setInterval(() => {
        if (running || this.#closed || !runs(pass)) return;
        running = true;
        fn()
          .catch((e) => this.#log.error({ err: e }, "background pass failed"))
          .finally(() => {
            running = false;
          });
      }, ms);
      t.unref();
      this.#timers.push(t);
    };
    every(this.#config.reaperIntervalMs, "reaper", () => this.reap());
    every(this.#config.usageIntervalMs, "sampler", () => this.sampleAll());
    every(this.#config.usageIntervalMs, "sampler", async () => {
      await this.overhead.collect();
    });
    every(this.#config.nodeWatchIntervalMs, "nodes", () => this.watchNodes());
    every(this.#config.templateSyncIntervalMs, "templates", () => this.distributeTemplates());
  }

  /** Stops the background passes; ends running sandboxes (billed, reason shutdown); paused ones stay. */
  async close(opts: { endOn?: string[] } = {}): Promise<void> {
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    await Promise.all([...this.#locks.values()]);
    // INVARIANT: a control plane that stops ends only the sandboxes of the node
    // it runs itself (firebreak up's own); nodes it shares with other replicas
    // keep theirs.
    const endOn = new Set(opts.endOn ?? []);
    const live = await this.#store.listLiveSandboxes();
    await Promise.all(
      live
        .filter((r) => r.state === "running" && endOn.has(r.nodeId))
        .map((r) => this.#kill(r.id, "control-plane", "shutdown").catch(() => {})),
    );
  }
}
