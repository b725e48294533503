// Errors raised by the sandbox network module. Codes are stable and
// machine-readable; messages say how to fix the problem.

export type NetworkErrorCode =
  | "NETWORK_INVALID_SPEC"
  | "NETWORK_INVALID_POOL"
  | "NETWORK_POOL_EXHAUSTED"
  | "NETWORK_SLOT_IN_USE"
  | "NETWORK_SANDBOX_EXISTS"
  | "NETWORK_CREATE_FAILED"
  | "NETWORK_DESTROY_FAILED";

export class NetworkError extends Error {
  readonly code: NetworkErrorCode;
  constructor(code: NetworkErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NetworkError";
    this.code = code;
  }
}
