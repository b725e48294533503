// The control plane's sandbox state machine. Every transition is listed here;
// anything else is refused (CONFLICT on the wire).
import { ApiError } from "../errors.ts";
import type { SandboxState } from "../store/store.ts";

const TRANSITIONS: Record<SandboxState, readonly SandboxState[]> = {
  // Recorded (quota taken), not yet handed to a node.
  requested: ["starting", "failed"],
  starting: ["running", "failed", "crashed"],
  running: ["paused", "stopping", "crashed"],
  // A paused sandbox whose files vanished (node state dir wiped) is crashed.
  paused: ["running", "stopping", "crashed"],
  stopping: ["killed", "crashed"],
  killed: [],
  crashed: [],
  failed: [],
};

export function canTransition(from: SandboxState, to: SandboxState): boolean {
  return TRANSITIONS[from].includes(to);
}

export function assertTransition(id: string, from: SandboxState, to: SandboxState, action: string): void {
  if (!canTransition(from, to)) {
    throw new ApiError("CONFLICT", `cannot ${action} sandbox ${id}: it is ${from}`);
  }
}

/** What a live sandbox in `state` becomes when the control plane finds its VM gone after a restart. */
export function stateAfterLoss(state: SandboxState): "killed" | "crashed" | "failed" {
  if (state === "requested" || state === "starting") return "failed";
  if (state === "stopping") return "killed";
  return "crashed";
}
