// Sandbox lifecycle: the typed actions routes call (create, get, list, kill,
// setTimeout, pause, resume, fork), the reaper, the usage sampler, and the
// recovery pass after a restart. Routes never reach the node directly.

import {
  EgressError,
  type EgressPolicy,
  type NormalizedPolicy,
  normalizePolicy,
} from "@firebreak/node-agent";
import type { Logger } from "pino";
import { newId, newSandboxToken, sha256 } from "../auth/keys.ts";
import type { ControlPlaneConfig } from "../config.ts";
import { ApiError, toApiError } from "../errors.ts";
import type { EnvdAccess, NodeClient, PrivateService, UsageSample } from "../node/node-client.ts";
import {
  isFinalState,
  type ListSandboxesQuery,
  type SandboxRecord,
  type SandboxState,
  type Store,
  type Tenant,
  type UsageRecord,
} from "../store/store.ts";
import { Meter } from "../usage/meter.ts";
import { assertTransition, stateAfterLoss } from "./state.ts";

export interface Caller {
  keyId: string;
  tenant: Tenant;
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
}

const iso = (ms = Date.now()) => new Date(ms).toISOString();

export class SandboxService {
  readonly #store: Store;
  readonly #node: NodeClient;
  readonly #config: ControlPlaneConfig;
  readonly #log: Logger;
  readonly #meters = new Map<string, Meter>();
  readonly #locks = new Map<string, Promise<unknown>>();
  #timers: NodeJS.Timeout[] = [];
  #sampling = false;
  #reaping = false;
  #closed = false;

  constructor(store: Store, node: NodeClient, config: ControlPlaneConfig, log: Logger) {
    this.#store = store;
    this.#node = node;
    this.#config = config;
    this.#log = log;
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

  list(q: ListSandboxesQuery) {
    return this.#store.listSandboxes(q);
  }

  async events(tenantId: string, id: string) {
    await this.get(tenantId, id);
    return this.#store.listEvents(id);
  }

  /** The guest agent's access token while the sandbox lives. */
  accessToken(rec: SandboxRecord): string | undefined {
    if (isFinalState(rec.state) || !rec.nodeSandboxId) return undefined;
    return this.#node.accessToken(rec.nodeSandboxId);
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
    return this.#node.envd(rec.nodeSandboxId, user);
  }

  envdEndpoint(rec: SandboxRecord) {
    if (rec.state !== "running" || !rec.nodeSandboxId) return undefined;
    try {
      return this.#node.envdEndpoint(rec.nodeSandboxId);
    } catch {
      return undefined;
    }
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

  async create(caller: Caller, req: CreateRequest): Promise<SandboxRecord> {
    this.#checkTimeout(req.timeoutMs);
    let parent: SandboxRecord | undefined;
    if (req.parentToken !== undefined) {
      parent = await this.#store.findSandboxByTokenHash(sha256(req.parentToken));
      if (!parent || parent.tenantId !== caller.tenant.id) {
        throw new ApiError(
          "VALIDATION_FAILED",
          "X-Firebreak-Sandbox-Token does not belong to a sandbox of this tenant; send the token the platform gave the sandbox (FIREBREAK_SANDBOX_TOKEN) or omit the header",
        );
      }
    }
    const templateShape = await this.#node.templateShape(req.template);
    if (!templateShape) {
      throw new ApiError(
        "TEMPLATE_NOT_FOUND",
        `no built template named ${req.template}; list them with GET /v1/templates or build it with POST /v1/templates {"name": "${req.template}"}`,
      );
    }
    // A create that names no shape gets the template's (code-interpreter: 2 vCPU, 1024 MiB).
    const vcpus = req.vcpus ?? templateShape.vcpus;
    const memoryMib = req.memoryMib ?? templateShape.memoryMib;
    const networkPolicy = req.networkPolicy
      ? await this.#checkPolicy(caller.tenant.id, req.networkPolicy, "network.policy")
      : null;
    const id = newId();
    const { token, hash } = newSandboxToken();
    const now = iso();
    let rec: SandboxRecord = {
      id,
      tenantId: caller.tenant.id,
      nodeId: this.#node.id,
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
      parentId: parent?.id ?? null,
      rootId: parent?.rootId ?? id,
      tokenHash: hash,
      envdTokenHash: null,
      createdByKey: caller.keyId,
      networkPolicy,
    };
    const quota = await this.#store.insertSandboxWithinQuota(rec, caller.tenant.limits);
    if (!quota.ok) throw new ApiError("QUOTA_EXCEEDED", quota.message);
    await this.#event(id, "requested", {
      template: req.template,
      vcpus,
      memoryMib,
      timeoutMs: req.timeoutMs,
      key: caller.keyId,
      ...(parent ? { parentId: parent.id, rootId: rec.rootId } : {}),
    });
    const meter = new Meter();
    this.#meters.set(id, meter);
    await this.#store.putInterimUsage(this.#usage(rec, meter, Date.now(), false));

    return this.#withLock(id, async () => {
      await this.#event(id, "scheduled", { node: this.#node.id });
      rec = await this.#transition(rec, "starting", {}, "scheduled on a node", "start");
      try {
        const started = await this.#node.create({
          template: req.template,
          vcpus,
          memoryMib,
          envVars: { ...req.envVars, FIREBREAK_SANDBOX_ID: id, FIREBREAK_SANDBOX_TOKEN: token },
          ...(networkPolicy ? { network: { policy: networkPolicy, tenant: caller.tenant.id } } : {}),
        });
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
          },
          "ready",
          "start",
        );
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
    const meter = this.#meters.get(rec.id) ?? new Meter();
    if (lastSample) meter.add(lastSample);
    const endedAt = iso(endMs);
    const ended = await this.#store.endSandbox(
      rec.id,
      { state, endedAt, endReason: reason, endedBy: by },
      this.#usage(rec, meter, endMs, true, reason),
    );
    this.#meters.delete(rec.id);
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
      rec = await this.#transition(rec, "stopping", {}, reason, "kill");
      await this.#event(id, "kill", { by, reason });
      let sample: UsageSample | undefined;
      try {
        if (rec.nodeSandboxId) sample = await this.#node.kill(rec.nodeSandboxId, reason);
      } catch (e) {
        this.#log.error({ sandboxId: id, err: e }, "node kill failed");
      }
      await this.#end(rec, "killed", reason, by, sample);
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

  /** Private services a tenant may bind (null: every service, for admins). */
  async services(tenantId: string | null): Promise<PrivateService[]> {
    const all = await this.#node.listServices();
    return tenantId === null ? all : all.filter((s) => !s.tenants || s.tenants.includes(tenantId));
  }

  async networkPolicy(tenantId: string, id: string): Promise<NormalizedPolicy> {
    const rec = await this.get(tenantId, id);
    return rec.networkPolicy ?? normalizePolicy({});
  }

  /** Replaces the egress policy of a running sandbox; in force when this resolves. */
  async updateNetworkPolicy(tenantId: string, id: string, input: EgressPolicy): Promise<NormalizedPolicy> {
    await this.get(tenantId, id);
    const policy = await this.#checkPolicy(tenantId, input, "policy");
    return this.#withLock(id, async () => {
      const rec = await this.get(tenantId, id);
      if (rec.state !== "running" || !rec.nodeSandboxId) {
        throw new ApiError(
          "CONFLICT",
          `sandbox ${id} is ${rec.state}; its egress policy changes only while it runs`,
        );
      }
      const applied = await this.#node.updatePolicy(rec.nodeSandboxId, policy).catch((e) => {
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

  async pause(tenantId: string, id: string): Promise<SandboxRecord> {
    await this.get(tenantId, id);
    return this.#withLock(id, async () => {
      let rec = await this.get(tenantId, id);
      assertTransition(id, rec.state, "paused", "pause");
      const sample = await this.#node.pause(rec.nodeSandboxId!).catch((e) => {
        throw toApiError(e);
      });
      const meter = this.#meters.get(id) ?? new Meter();
      if (sample) meter.add(sample);
      meter.suspend();
      this.#meters.set(id, meter);
      // INVARIANT: paused sandboxes do not expire (timeoutAt null); resume restarts the timeout.
      rec = await this.#transition(rec, "paused", { timeoutAt: null }, "paused by request", "pause");
      await this.#store.putInterimUsage(this.#usage(rec, meter, Date.now(), false));
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
      const quota = await this.#store.checkQuota(rec.tenantId, rec, 1, limits);
      if (!quota.ok) throw new ApiError("QUOTA_EXCEEDED", quota.message);
      const r = await this.#node.resume(rec.nodeSandboxId!).catch((e) => {
        throw toApiError(e);
      });
      const t = timeoutMs ?? rec.timeoutMs;
      await this.#event(id, "resumed", { path: r.path, totalMs: r.totalMs });
      rec = await this.#transition(
        rec,
        "running",
        { timeoutMs: t, timeoutAt: iso(Date.now() + t) },
        "resumed by request",
        "resume",
      );
      return rec;
    });
  }

  async fork(caller: Caller, id: string, count: number): Promise<SandboxRecord[]> {
    await this.get(caller.tenant.id, id);
    return this.#withLock(id, async () => {
      const parent = await this.get(caller.tenant.id, id);
      if (parent.state !== "running")
        throw new ApiError("CONFLICT", `cannot fork sandbox ${id}: it is ${parent.state}`);
      const quota = await this.#store.checkQuota(parent.tenantId, parent, count, caller.tenant.limits);
      if (!quota.ok) throw new ApiError("QUOTA_EXCEEDED", quota.message);
      await this.#event(id, "fork", { count });
      const children = await this.#node.fork(parent.nodeSandboxId!, count).catch((e) => {
        throw toApiError(e);
      });
      const out: SandboxRecord[] = [];
      const unlimited = {
        maxSandboxes: Number.MAX_SAFE_INTEGER,
        maxVcpus: Number.MAX_SAFE_INTEGER,
        maxMemoryMib: Number.MAX_SAFE_INTEGER,
        requestsPerMinute: 0,
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
          networkPolicy: null, // the node gives forks its default policy
        };
        // Checked above for the whole fork; the children exist already.
        await this.#store.insertSandboxWithinQuota(child, unlimited);
        await this.#event(child.id, "requested", { forkOf: parent.id, key: caller.keyId });
        await this.#event(child.id, "started", { path: "snapshot", totalMs: c.totalMs, phases: c.phases });
        await this.#event(child.id, "ready", { path: "snapshot", timeoutAt: child.timeoutAt });
        const meter = new Meter();
        this.#meters.set(child.id, meter);
        await this.#store.putInterimUsage(this.#usage(child, meter, now, false));
        out.push(child);
      }
      return out;
    });
  }

  // ---------------------------------------------------------------- background: reaper, sampler, recovery

  /** Ends sandboxes the control plane recorded as live whose VM is gone; keeps adopted paused ones. */
  async recover(): Promise<{ ended: string[]; adopted: string[] }> {
    const ended: string[] = [];
    const adopted: string[] = [];
    for (const rec of await this.#store.listLiveSandboxes()) {
      const status = rec.nodeSandboxId ? this.#node.status(rec.nodeSandboxId) : undefined;
      const interim = await this.#store.getUsage(rec.id);
      const meter = interim ? Meter.restore(interim) : new Meter();
      if (rec.state === "paused" && status?.state === "paused") {
        this.#meters.set(rec.id, meter);
        await this.#event(rec.id, "adopted", { reason: "control plane restarted; paused sandbox kept" });
        adopted.push(rec.id);
        continue;
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

  async #sample(rec: SandboxRecord): Promise<void> {
    if (!rec.nodeSandboxId) return;
    const sample = await this.#node.usageSample(rec.nodeSandboxId);
    const meter = this.#meters.get(rec.id);
    if (!meter || !sample) return;
    meter.add(sample);
    await this.#store.putInterimUsage(this.#usage(rec, meter, sample.at, false));
  }

  /** One sampler pass: interim usage of every running sandbox; VMs that died are ended as crashed. */
  async sampleAll(): Promise<void> {
    if (this.#sampling) return;
    this.#sampling = true;
    try {
      for (const rec of await this.#store.listLiveSandboxes()) {
        if (rec.state !== "running" || !rec.nodeSandboxId) continue;
        if (this.#locks.has(rec.id)) continue; // an action is in progress
        const status = this.#node.status(rec.nodeSandboxId);
        if (status.state === "gone") {
          await this.#withLock(rec.id, async () => {
            const now = await this.#store.getSandbox(rec.id);
            if (now?.state !== "running") return;
            await this.#event(rec.id, "crashed", { reason: status.reason });
            await this.#end(now, "crashed", "crashed", "node", undefined);
          });
          continue;
        }
        await this.#sample(rec).catch((e) =>
          this.#log.warn({ sandboxId: rec.id, err: e }, "usage sample failed"),
        );
      }
    } finally {
      this.#sampling = false;
    }
  }

  /** One reaper pass: kills every running sandbox whose timeout has passed. */
  async reap(): Promise<void> {
    if (this.#reaping) return;
    this.#reaping = true;
    try {
      const now = Date.now();
      const expired = (await this.#store.listLiveSandboxes()).filter(
        (r) => r.state === "running" && r.timeoutAt !== null && Date.parse(r.timeoutAt) <= now,
      );
      await Promise.all(
        expired.map((r) =>
          this.#kill(r.id, "reaper", "timeout").catch((e) =>
            this.#log.error({ sandboxId: r.id, err: e }, "reaper kill failed"),
          ),
        ),
      );
    } finally {
      this.#reaping = false;
    }
  }

  start(): void {
    const every = (ms: number, fn: () => Promise<void>) => {
      const t = setInterval(() => {
        if (!this.#closed) fn().catch((e) => this.#log.error({ err: e }, "background pass failed"));
      }, ms);
      t.unref();
      this.#timers.push(t);
    };
    every(this.#config.reaperIntervalMs, () => this.reap());
    every(this.#config.usageIntervalMs, () => this.sampleAll());
  }

  /** Stops the background passes; ends running sandboxes (billed, reason shutdown); paused ones stay. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    await Promise.all([...this.#locks.values()]);
    const live = await this.#store.listLiveSandboxes();
    await Promise.all(
      live
        .filter((r) => r.state === "running")
        .map((r) => this.#kill(r.id, "control-plane", "shutdown").catch(() => {})),
    );
  }
}
