// The control plane's only way to reach a node: typed actions and the node's
// reports. LocalNode implements it in-process over NodeRuntime; a network
// client can implement it later. Nothing outside src/node/ touches node internals.
import type http from "node:http";
import type { Client } from "@connectrpc/connect";
import type {
  EgressPolicy,
  LogSource,
  NodeReport,
  NormalizedPolicy,
  OverheadRecord,
  PlatformTarget,
  PrivateService,
  SpanJson,
} from "@firebreak/node-agent";
import type { Filesystem, Process } from "@firebreak/protocol";

export type {
  EgressPolicy,
  LogSource,
  NodeReport,
  NormalizedPolicy,
  OverheadRecord,
  PlatformTarget,
  PrivateService,
};

export type NodeStartPath = "warm" | "snapshot" | "cold";

export interface NodeSandboxInfo {
  /** The node's own id for the sandbox. */
  id: string;
  /** The guest agent's access token (envd). */
  accessToken: string;
  path: NodeStartPath;
  totalMs: number;
  phases: Record<string, number>;
  fallback?: string;
  /** The egress policy the node enforces (normalized). */
  policy?: NormalizedPolicy;
  /** Counters at hand-over: the tenant is charged only for what follows (absent: from the cgroup's start). */
  handover?: UsageSample;
}

export interface NodeCreateRequest {
  template: string;
  vcpus: number;
  memoryMib: number;
  envVars: Record<string, string>;
  /** Egress policy, the tenant whose private services it may bind, and whether an admin made it. */
  network?: { policy: EgressPolicy; tenant: string; admin?: boolean };
  diskMib?: number;
  /** The control plane's id (node logs and traces). */
  platformId?: string;
  /** Start from this node's named snapshot (snapshotOf) instead of the template's image. */
  fromSnapshot?: string;
  /** Where the platform grant leads (policy.platform), with the sandbox's credential. */
  platform?: PlatformTarget;
}

/** Billed traffic classes: internet, private (allowed private ranges and bound services), sandbox (sandbox networks), ingress. */
export const TRAFFIC_CLASSES = ["internet", "private", "sandbox", "ingress"] as const;
export type BilledTrafficClass = (typeof TRAFFIC_CLASSES)[number];
/** Cumulative bytes per class since the sandbox's network was made: tx from the guest, rx to it. */
export type TrafficBytes = Record<BilledTrafficClass, { tx: number; rx: number }>;

export interface UsageSample {
  at: number;
  cpuNanos: number;
  memoryBytes: number;
  memoryPeakBytes: number;
  /** Network counters, when the node has them (absent: unchanged). */
  traffic?: TrafficBytes;
  /** The sandbox's own disk layer on the host, and its size in the guest (when the node reports them). */
  diskUsedBytes?: number;
  diskTotalBytes?: number;
}

/** A chunk of a sandbox's console or start-command output. */
export interface LogChunk {
  offset: number;
  data: Uint8Array;
  skipped: number;
  /** The sandbox ended: nothing more will come. */
  ended: boolean;
}

export type NodeSandboxStatus =
  | { state: "running" | "paused" | "busy" }
  | { state: "gone"; reason: string; crashed: boolean };

export interface EnvdAccess {
  process: Client<typeof Process>;
  filesystem: Client<typeof Filesystem>;
  /** Plain fetch against the agent's REST routes (/files), token attached. */
  fetch: (pathAndQuery: string, init?: RequestInit) => Promise<Response>;
}

export interface TemplateInfo {
  name: string;
  key: string;
  builtAt: string;
  imageBytes: number;
  packages: string[];
  /** The shape a create gets when it names none. @default 1 vCPU, 256 MiB */
  shape?: { vcpus: number; memoryMib: number };
  /** More names the template answers to (code-interpreter: code-interpreter-v1). */
  aliases?: string[];
}

export interface TemplateBuildProgress {
  step: string;
  index: number;
  total: number;
  detail?: string;
}

/**
 * One node, as the control plane sees it. Every call may cross a network:
 * everything is asynchronous and may fail with NODE_UNAVAILABLE.
 */
export interface NodeClient {
  readonly id: string;
  /** Accelerator of the node, from its last report. */
  info(): { accelerator: string; acceleratorReason: string };
  /** Capacity, templates, warm slots, snapshots and recent start latencies (the scheduler's input). */
  report(): Promise<NodeReport>;

  create(req: NodeCreateRequest): Promise<NodeSandboxInfo>;
  /** Replaces a running sandbox's egress policy; in force when it resolves. */
  updatePolicy(
    id: string,
    policy: EgressPolicy,
    tenant: string,
    admin?: boolean,
    platform?: PlatformTarget,
  ): Promise<NormalizedPolicy>;
  /** Private services the operator declared (with their injected credentials). */
  listServices(): Promise<PrivateService[]>;
  putService(s: PrivateService): Promise<PrivateService>;
  /** False when there was no such service. */
  removeService(name: string): Promise<boolean>;
  /** Stops a sandbox; resolves with its last usage sample (taken just before it stopped). */
  kill(id: string, reason: string): Promise<UsageSample | undefined>;
  /**
   * Pauses to disk; resolves with the last usage sample before the pause (the
   * cgroup goes away). `memory: false`: only the disk is kept, and the resume
   * boots the sandbox afresh from it (path "cold").
   */
  pause(id: string, opts?: { memory?: boolean }): Promise<UsageSample | undefined>;
  resume(id: string): Promise<{
    path: NodeStartPath;
    totalMs: number;
    phases?: Record<string, number>;
    handover?: UsageSample;
  }>;
  fork(id: string, count: number): Promise<NodeSandboxInfo[]>;
  /**
   * Saves a running sandbox as a named snapshot (memory and disk) that any
   * number of sandboxes can start from (create `fromSnapshot`); the sandbox
   * keeps running. Absent on nodes that cannot (the E2B route answers 501).
   */
  snapshotOf?(id: string): Promise<{ snapshotId: string }>;
  /** Deletes a named snapshot; false when the node has none of that id. */
  deleteSnapshot?(snapshotId: string): Promise<boolean>;
  /**
   * Closes every connection this client holds open to a sandbox that ended
   * without a kill through it (crashed, its node lost, ended by another
   * replica): what kill and pause do themselves.
   */
  closeTunnels?(id: string): void;
  /** States of many sandboxes in one call (an id the node does not know is `gone`). */
  status(ids: string[]): Promise<Map<string, NodeSandboxStatus>>;
  /** Usage samples of many sandboxes (absent: paused or gone). */
  usage(ids: string[]): Promise<Map<string, UsageSample>>;
  usageSample(id: string): Promise<UsageSample | undefined>;
  /** The guest agent's token while the sandbox lives. */
  accessToken(id: string): Promise<string | undefined>;
  /** Clients for the guest agent, through the node's tunnel, with the agent's token (asked of the node once). */
  envd(id: string, user?: string): EnvdAccess;
  /** An HTTP request to a port inside the sandbox, through the node; the caller writes the body. */
  portRequest(
    id: string,
    port: number,
    pathAndQuery: string,
    init?: { method?: string; headers?: http.OutgoingHttpHeaders },
  ): http.ClientRequest;
  /** Every sandbox the node holds (after a node restart: what it still has). */
  listSandboxes(): Promise<{ id: string; status: NodeSandboxStatus }[]>;

  listTemplates(): Promise<TemplateInfo[]>;
  hasTemplate(name: string): Promise<boolean>;
  buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: TemplateBuildProgress) => void,
  ): Promise<TemplateInfo>;
  deleteTemplate(name: string): Promise<boolean>;
  /** A template's image as a stream (key, manifest and sha256 in its head), for another node. */
  exportTemplate(name: string): Promise<http.IncomingMessage>;
  /** Installs a template from another node's export (verified by its sha256). */
  importTemplate(name: string, image: http.IncomingMessage): Promise<{ key: string; installed: boolean }>;
  /** Keeps `size` VMs of a template restored ahead of time on this node. */
  setPool(template: string, size: number, shape?: { vcpus: number; memoryMib: number }): Promise<void>;
  /** Refuse new sandboxes (running ones stay). */
  drain(draining: boolean): Promise<void>;

  /**
   * Platform overhead records waiting on the node; acknowledges (drops there)
   * what the caller stored before. Absent on nodes without an overhead account.
   */
  overhead?(
    ack: { epoch: string; seq: number } | undefined,
  ): Promise<{ epoch: string; records: OverheadRecord[] }>;
  /** The node's Prometheus metrics (prom-client JSON). */
  metrics?(): Promise<unknown[]>;
  /** Spans of a trace the node recorded. */
  spans?(traceId: string): Promise<SpanJson[]>;
  /** A sandbox's console or start-command output from `offset` (following: until it ends or `signal`). */
  logs?(
    id: string,
    source: LogSource,
    offset: number,
    follow: boolean,
    signal?: AbortSignal,
  ): AsyncIterable<LogChunk>;

  /** Releases this client (an in-process node also stops: running sandboxes end, paused ones stay). */
  close(): Promise<void>;
}
