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
  createdAt: string;
  readyAt: string | null;
  endedAt?: string | null;
  endReason?: string | null;
  timeoutAt: string;
  startPath: StartPath;
  timings: { totalMs: number; phases: Record<string, number> };
  parentId?: string | null;
  rootId: string;
}

export interface SandboxEvent {
  at: string;
  type: string;
  detail?: unknown;
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
  modifiedAt: string;
}

export interface TemplateInfo {
  name: string;
  key: string;
  builtAt: string;
  imageBytes: number;
  /** Number of locked Debian packages. */
  packages: number;
}

export type KeyScope = "sandboxes" | "templates" | "admin";

export interface ApiKeyInfo {
  id: string;
  name: string;
  tenantId: string;
  scopes: KeyScope[];
  createdAt: string;
  revokedAt?: string | null;
  lastUsedAt?: string | null;
}

/** A key as returned once, at creation: `key` is the secret. */
export interface CreatedApiKey extends ApiKeyInfo {
  key: string;
}

export interface UsageGroup {
  key: string;
  sandboxes: number;
  lifetimeSeconds: number;
  cpuSeconds: number;
  memoryGibSeconds: number;
  peakMemoryMib: number;
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
  startPath: StartPath;
  cpuSeconds: number;
  memoryPeakMib: number;
  memoryGibSeconds: number;
  endReason: string | null;
  metadata: Record<string, string>;
  parentId: string | null;
  rootId: string;
  /** False for interim records of a sandbox still running. */
  final: boolean;
}

/** One line of a template build's progress stream. */
export interface BuildProgress {
  step: string;
  index: number;
  total: number;
  detail?: string;
}
