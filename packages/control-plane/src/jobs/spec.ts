// What a job is, as stored in its record (jobs.spec): everything a dispatcher
// needs to run its tasks after a restart. SECURITY: no secret is ever in it:
// a task reaches credentials only through private services bound by its
// egress policy (the node injects them; they never enter the job record or
// the guest). Environment variables are stored as given: they are not secrets.
import type { EgressPolicy } from "@firebreak/node-agent";
import type { RetryPolicy } from "./retry.ts";

/** Where a task's files go and its command runs: `job` under the template user's home. */
export const WORKDIR = "job";

export interface JobFile {
  /** Relative to the task's working directory. */
  path: string;
  sha256: string;
  bytes: number;
  /** File mode (octal digits as a number, e.g. 0o755); absent: as the agent writes it. */
  mode?: number;
}

export interface JobSpec {
  template: string;
  /** A shell command line (/bin/bash -l -c) or an argv run without a shell. */
  command: { cmd: string } | { argv: string[] };
  vcpus: number;
  memoryMib: number;
  /** The egress policy every task's sandbox gets (grantedBy as the submitting key made it); null: deny all. */
  network: EgressPolicy | null;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  /** Each attempt's command is killed after this long (counted from its start, not the sandbox's). */
  taskTimeoutMs: number;
  retry: RetryPolicy;
  /** Tasks of this job running at once. */
  parallelism: number;
  /** Paths collected after the command ends (files, or directories: every file below). */
  outputs: string[];
  /** outputs was not given: the default ("out") is collected when it exists, and not reported missing. */
  outputsDefaulted: boolean;
  files: JobFile[];
  /** Output kept per attempt (stdout and stderr together) before the truncation marker. */
  maxLogBytes: number;
  /** Submitted with an admin key (admin egress policies, every tenant's templates). */
  admin: boolean;
}

export const DEFAULT_OUTPUTS = ["out"];

/** A path in the guest for `p` (relative to the working directory unless absolute). */
export function guestPath(workdir: string, p: string): string {
  if (p.startsWith("/")) return p;
  return `${workdir.replace(/\/+$/, "")}/${p.replace(/^\.\//, "")}`;
}

/** How an artifact is named: relative to the working directory when inside it. */
export function displayPath(workdir: string, abs: string): string {
  const prefix = `${workdir.replace(/\/+$/, "")}/`;
  return abs.startsWith(prefix) ? abs.slice(prefix.length) : abs;
}

/** A relative path that stays below its base: no `..`, no empty or `.` segments, no NUL. */
export function isSafeRelativePath(p: string): boolean {
  if (!p || p.length > 1024 || p.startsWith("/") || p.includes("\u0000")) return false;
  return p.split("/").every((seg) => seg !== "" && seg !== "." && seg !== "..");
}
