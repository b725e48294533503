// The control plane's only way to reach a node: typed actions and the node's
// reports. LocalNode implements it in-process over NodeRuntime; a network
// client can implement it later. Nothing outside src/node/ touches node internals.
import type { Client } from "@connectrpc/connect";
import type { EgressPolicy, NormalizedPolicy, PrivateService } from "@firebreak/node-agent";
import type { Filesystem, Process } from "@firebreak/protocol";

export type { EgressPolicy, NormalizedPolicy, PrivateService };

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

export interface EnvdEndpoint {
  host: string;
  port: number;
  accessToken: string;
}

export interface NodeCapacity {
  vcpus: number;
  memoryMib: number;
  sandboxes: number;
}

export interface TemplateInfo {
  name: string;
  key: string;
  builtAt: string;
  imageBytes: number;
  packages: string[];
}

export interface TemplateBuildProgress {
  step: string;
  index: number;
  total: number;
  detail?: string;
}

export interface NodeClient {
  readonly id: string;
  info(): { accelerator: string; acceleratorReason: string };
  capacity(): NodeCapacity;

  create(req: {
    template: string;
    vcpus: number;
    memoryMib: number;
    envVars: Record<string, string>;
    /** Egress policy, and the tenant whose private services it may bind. */
    network?: { policy: EgressPolicy; tenant: string };
  }): Promise<NodeSandboxInfo>;
  /** Replaces a running sandbox's egress policy; in force when it resolves. */
  updatePolicy(id: string, policy: EgressPolicy): Promise<NormalizedPolicy>;
  /** Private services the operator declared (with their injected credentials). */
  listServices(): Promise<PrivateService[]>;
  putService(s: PrivateService): Promise<PrivateService>;
  /** False when there was no such service. */
  removeService(name: string): Promise<boolean>;
  /** Stops a sandbox; resolves with its last usage sample (taken just before it stopped). */
  kill(id: string, reason: string): Promise<UsageSample | undefined>;
  /** Pauses to disk; resolves with the last usage sample before the pause (the cgroup goes away). */
  pause(id: string): Promise<UsageSample | undefined>;
  resume(id: string): Promise<{ path: NodeStartPath; totalMs: number }>;
  fork(id: string, count: number): Promise<NodeSandboxInfo[]>;
  status(id: string): NodeSandboxStatus;
  usageSample(id: string): Promise<UsageSample | undefined>;
  /** The sandbox's access token, while the node has it. */
  accessToken(id: string): string | undefined;
  envd(id: string, user?: string): EnvdAccess;
  envdEndpoint(id: string): EnvdEndpoint;

  listTemplates(): Promise<TemplateInfo[]>;
  hasTemplate(name: string): Promise<boolean>;
  /** The shape a create of this template gets when it names none; undefined: no such template. */
  templateShape(name: string): Promise<{ vcpus: number; memoryMib: number } | undefined>;
  buildTemplate(
    source: { name: string } | { spec: unknown },
    onProgress: (p: TemplateBuildProgress) => void,
  ): Promise<TemplateInfo>;
  deleteTemplate(name: string): Promise<boolean>;

  /** Stops every running sandbox (paused ones stay on disk). */
  close(): Promise<void>;
}
