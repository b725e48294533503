// Errors the node raises carry a stable code from the catalog (docs/ERRORS.md)
// and a message that says how to fix the problem.
export const ERROR_CODES = {
  KERNEL_MISSING: "The guest kernel is not prepared and could not be prepared.",
  NOT_ROOT: "The node needs root (namespaces, taps, nftables, cgroups).",
  QEMU_MISSING: "QEMU >= 10 (shared copy-on-write snapshots) is not installed where the node looks for it.",
  TEMPLATE_NOT_FOUND: "No template with that name or spec file.",
  TEMPLATE_SPEC_INVALID: "The template spec does not validate.",
  TEMPLATE_BUILD_FAILED: "A template build step failed.",
  NO_SPACE: "Not enough free disk space in the state directory.",
  SANDBOX_NOT_FOUND: "No sandbox with that id on this node.",
  SANDBOX_STATE_INVALID: "The action is not allowed in the sandbox's current state.",
  SANDBOX_BOOT_FAILED: "The VM did not boot or its agent did not become ready.",
  SANDBOX_CRASHED: "The VM exited unexpectedly.",
  SNAPSHOT_NOT_FOUND: "No snapshot with that id on this node (never made, or deleted).",
  SHAPE_INVALID: "The requested vCPUs, memory or disk are out of range.",
  CAPACITY_EXHAUSTED: "The node has no room for another sandbox of that shape.",
  AGENT_ERROR: "The guest agent answered with an error.",
  NODE_UNAVAILABLE: "The node daemon did not answer (down, restarting or unreachable).",
  NODE_AUTH_FAILED: "The node daemon refused the caller's credential.",
  INTERNAL: "An unexpected internal error.",
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class FirebreakError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FirebreakError";
    this.code = code;
  }
}
