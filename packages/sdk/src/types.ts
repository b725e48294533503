// Wire shapes of the Firebreak REST API v1, as the SDK returns them.

export type SandboxState = "starting" | "running" | "paused" | "stopping" | "killed" | "crashed" | "failed";
export type StartPath = "warm" | "snapshot" | "cold";

/** A sandbox as the server describes it. Timestamps are ISO 8601 strings. */
export interface SandboxInfo {
  id: string;
  tenantId: string;
  template: string;
  state: SandboxState;
  vcpus: number;
  memoryMib: number;
  metadata: Record<string, string>;
  /** Token for the sandbox's in-guest agent (returned by create, connect and get only). */
  envdAccessToken?: string;
  /**
   * Opens the sandbox's private ports through ingress (header
   * `X-Firebreak-Ingress-Token`, or `?token=` in a browser). It cannot run
   * commands: hand it to browsers, never the envd token. Absent once ended.
   */
  ingressToken?: string;
  createdAt: string;
  readyAt: string | null;
  endedAt?: string;
  endReason?: string;
  /** Who ended it (a key id, "reaper", "node"...), when it has ended. */
  endedBy?: string;
  /** The lifetime set at create or by setTimeout(). */
  timeoutMs?: number;
  /** When the reaper kills it (null while paused). */
  timeoutAt: string | null;
  /** How it started: claimed from a warm pool, restored from a snapshot, or booted cold (null until ready). */
  startPath: StartPath | null;
  timings: { totalMs: number; phases: Record<string, number> } | null;
  parentId?: string;
  rootId: string;
}

export interface SandboxEvent {
  at: string;
  type: string;
  detail: Record<string, unknown>;
}

export interface ProcessInfo {
  pid: number;
  cmd: string;
  args: string[];
  tag?: string;
}

export type EntryType = "file" | "dir" | "symlink";

export interface EntryInfo {
  name: string;
  path: string;
  type: EntryType;
  size: number;
  mode: number;
  modifiedAt: string | null;
  symlinkTarget?: string;
}

export interface TemplateInfo {
  name: string;
  key: string;
  builtAt: string;
  imageBytes: number;
  /** Locked Debian packages (name=version). */
  packages: string[];
  /** The tenant that owns it; null for an operator template, which every tenant may use. */
  tenantId?: string | null;
}

export type KeyScope = "sandboxes" | "templates" | "admin";

export interface ApiKeyInfo {
  id: string;
  name: string;
  tenantId: string;
  scopes: KeyScope[];
  createdAt: string;
  revokedAt: string | null;
  /** The key that minted it: revoking that key revokes this one too. null for keys made on the host. */
  createdByKey?: string | null;
}

/** A key as returned once, at creation: `key` is the secret. */
export interface CreatedApiKey extends ApiKeyInfo {
  key: string;
}

export interface UsageGroup {
  /** The group's value (null for sandboxes without that metadata key). */
  key: string | null;
  sandboxes: number;
  lifetimeSeconds: number;
  cpuSeconds: number;
  memoryGibSeconds: number;
  peakMemoryMib: number;
  /** Network bytes per destination class, summed over the group. */
  traffic: Traffic;
}

export interface UsageRecord {
  sandboxId: string;
  tenantId: string;
  template: string;
  vcpus: number;
  memoryMib: number;
  createdAt: string;
  readyAt: string | null;
  endedAt: string | null;
  lifetimeSeconds: number;
  startPath: StartPath | null;
  cpuSeconds: number;
  memoryPeakMib: number;
  memoryGibSeconds: number;
  endReason: string | null;
  metadata: Record<string, string>;
  parentId: string | null;
  rootId: string;
  /** False for interim records of a sandbox still running. */
  final: boolean;
  /** Network bytes per destination class, up to the last sample. */
  traffic: Traffic;
}

/**
 * Network bytes per destination class: `tx` from the guest, `rx` to it.
 * private: allowed private ranges and bound services; sandbox: sandbox
 * networks; ingress: connections into the sandbox through the ingress proxy.
 */
export interface Traffic {
  internet: { tx: number; rx: number };
  private: { tx: number; rx: number };
  sandbox: { tx: number; rx: number };
  ingress: { tx: number; rx: number };
}

/** What a sandbox's guest may reach (default: nothing). See docs/API.md, Network. */
export interface EgressPolicy {
  /** Public internet. @default false */
  internet?: boolean;
  /** CIDR/port rules, e.g. { cidr: "10.0.0.0/8", ports: [5432], protocol: "tcp" }. */
  allow?: { cidr: string; ports?: number[] | "any"; protocol?: "tcp" | "udp" | "any" }[];
  /** Names the platform resolver answers: "api.example.com" or "*.example.com". */
  allowDomains?: string[];
  /** Private services (GET /v1/services) to bind. */
  services?: string[];
  /** Cap per direction, kilobytes per second. */
  bandwidthKBps?: number;
  /** Sandbox networks of the tenant to join. */
  networks?: string[];
}

/** A policy as enforced: every default filled, CIDRs canonical. */
export interface NormalizedEgressPolicy {
  internet: boolean;
  allow: { cidr: string; ports: number[] | "any"; protocol: "tcp" | "udp" | "any" }[];
  allowDomains: string[];
  services: string[];
  bandwidthKBps?: number;
  networks: string[];
}

/** A private service the operator declared. `inject.value` is "***" for non-admin keys. */
export interface PrivateService {
  name: string;
  address: string;
  port: number;
  protocol: "tcp" | "http";
  tenants?: string[];
  inject?: { header: string; value: string };
}

/** One line of a template build's progress stream. */
export interface BuildProgress {
  step: string;
  index: number;
  total: number;
  detail?: string;
}
