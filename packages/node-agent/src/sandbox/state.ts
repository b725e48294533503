// A sandbox on a node is a state machine: every transition is listed here and
// anything else is refused with a specific error.
import { FirebreakError } from "../errors.ts";

/**
 * warm: restored into a pool, no identity yet, not visible to users until claimed.
 * standby: everything but the guest is ready (slot, network, cgroup, disk
 * layer, QEMU waiting for a snapshot's state); a claim resumes the start.
 */
export type SandboxState =
  | "starting"
  | "standby"
  | "warm"
  | "running"
  | "pausing"
  | "paused"
  | "resuming"
  | "stopping"
  | "stopped"
  | "crashed"
  | "failed";

const TRANSITIONS: Record<SandboxState, readonly SandboxState[]> = {
  starting: ["standby", "warm", "running", "failed", "stopping", "crashed"],
  standby: ["starting", "stopping", "crashed"],
  warm: ["running", "stopping", "crashed"],
  running: ["pausing", "stopping", "crashed"],
  // A fork pauses the parent for a moment and returns it to running; a
  // snapshot's own VM is saved and then stopped.
  pausing: ["paused", "running", "failed", "stopping"],
  paused: ["resuming", "stopping"],
  // A failed resume keeps the saved state (paused); a kill while resuming stops it.
  resuming: ["running", "paused", "stopping"],
  stopping: ["stopped"],
  stopped: [],
  crashed: [],
  failed: [],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function assertTransition(id: string, from: SandboxState, to: SandboxState): void {
  if (!canTransition(from, to)) {
    throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${from}; it cannot become ${to}`);
  }
}

export function isFinal(s: SandboxState): boolean {
  return TRANSITIONS[s].length === 0;
}
