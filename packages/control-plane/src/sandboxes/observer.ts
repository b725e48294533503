// What the sandbox service tells the rest of the control plane as it works
// (metrics, mostly): one small interface, so the service does not know who
// listens. Observers must not throw and must not block (they run inline).
import type { TrafficBytes } from "../node/node-client.ts";
import type { SandboxRecord, StartPath } from "../store/store.ts";

export interface CreateOutcome {
  tenantId: string;
  template: string;
  /** The path the node took; null when it never started. */
  path: StartPath | null;
  outcome: "started" | "failed";
  /** The API error code of a failure. */
  code?: string;
  /** From the request to running (or to the failure), as the control plane measured it. */
  ms: number;
}

export interface MeteredDelta {
  cpuSeconds: number;
  memoryGibSeconds: number;
  traffic: TrafficBytes;
}

export interface SandboxObserver {
  created?(e: CreateOutcome): void;
  /** Usage was metered for a sandbox: what was added since its last sample. */
  metered?(rec: SandboxRecord, delta: MeteredDelta): void;
}
