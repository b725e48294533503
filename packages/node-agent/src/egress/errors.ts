// Errors of the egress module. Codes are stable and machine-readable; messages
// say how to fix the problem.

export type EgressErrorCode =
  | "EGRESS_POLICY_INVALID"
  | "EGRESS_CIDR_RESERVED"
  | "EGRESS_SERVICE_UNKNOWN"
  | "EGRESS_SERVICE_FORBIDDEN"
  | "EGRESS_SERVICE_INVALID"
  | "EGRESS_SANDBOX_UNKNOWN"
  | "EGRESS_APPLY_FAILED";

export class EgressError extends Error {
  readonly code: EgressErrorCode;
  constructor(code: EgressErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "EgressError";
    this.code = code;
  }
}
