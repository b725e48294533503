// The control plane's error catalog: every error on the wire is
// `{ error: { code, message, requestId } }` with one of these codes and its
// status. docs/API.md lists them all (errors.test.ts keeps the two in sync).
// Codes never change meaning; new ones may be added.
import { EgressError, FirebreakError } from "@firebreak/node-agent";

export const API_ERRORS = {
  UNAUTHENTICATED: { status: 401, description: "The API key is missing, unknown or revoked." },
  FORBIDDEN: { status: 403, description: "The key is valid but lacks the scope this route needs." },
  NOT_FOUND: {
    status: 404,
    description: "No such resource for this tenant (another tenant's ids answer this too, never 403).",
  },
  TEMPLATE_NOT_FOUND: { status: 404, description: "No built template with that name." },
  VALIDATION_FAILED: {
    status: 400,
    description: "The request is malformed: bad JSON, wrong types, unknown fields, values out of range.",
  },
  WEBHOOK_DESTINATION_FORBIDDEN: {
    status: 400,
    description:
      "A webhook URL whose host is (or resolves to) a loopback, link-local, private or special-purpose address, or one of the platform's own; the operator allows these with FIREBREAK_WEBHOOK_ALLOW_PRIVATE=1.",
  },
  PAYLOAD_TOO_LARGE: { status: 413, description: "The JSON body is larger than 1 MiB." },
  CONFLICT: {
    status: 409,
    description: "The action is not allowed in the sandbox's current state (e.g. pausing a paused sandbox).",
  },
  QUOTA_EXCEEDED: {
    status: 429,
    description:
      "A tenant limit (maxSandboxes, maxVcpus, maxMemoryMib) would be exceeded; the message names it.",
  },
  RATE_LIMITED: {
    status: 429,
    description: "Too many requests for this tenant (requestsPerMinute); retry after Retry-After seconds.",
  },
  CAPACITY_EXHAUSTED: { status: 503, description: "The node has no room for another sandbox of that shape." },
  NODE_UNAVAILABLE: {
    status: 503,
    description:
      "The node holding the sandbox did not answer (down, restarting or unreachable); retry later.",
  },
  SANDBOX_BOOT_FAILED: { status: 502, description: "The VM did not boot or its agent did not become ready." },
  AGENT_ERROR: {
    status: 502,
    description: "The sandbox's guest agent answered with an error or not at all.",
  },
  GUEST_RESPONSE_INVALID: {
    status: 502,
    description:
      "Something in the sandbox answered with bytes that are not a valid answer (status outside 200-599, malformed or oversized headers, a Connect frame that does not parse).",
  },
  GUEST_RESPONSE_TOO_LARGE: {
    status: 502,
    description: "An answer from the sandbox that the control plane reads whole is larger than its limit.",
  },
  TEMPLATE_BUILD_FAILED: {
    status: 422,
    description: "A template build failed (spec invalid or a step failed).",
  },
  NOT_IMPLEMENTED: {
    status: 501,
    description:
      "A feature of the E2B API that Firebreak does not serve (yet); the message names it (E2B routes only).",
  },
  INTERNAL: { status: 500, description: "An unexpected internal error (logged with the request id)." },
} as const;

export type ApiErrorCode = keyof typeof API_ERRORS;
export type ApiStatus = (typeof API_ERRORS)[ApiErrorCode]["status"];

/** An error the API answers on purpose. Routes throw it; the error handler renders it. */
export class ApiError extends Error {
  readonly code: ApiErrorCode;
  readonly status: ApiStatus;
  /** Extra response headers (Retry-After). */
  readonly headers: Record<string, string>;
  constructor(
    code: ApiErrorCode,
    message: string,
    opts: { cause?: unknown; headers?: Record<string, string> } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "ApiError";
    this.code = code;
    this.status = API_ERRORS[code].status;
    this.headers = opts.headers ?? {};
  }
}

/** The node's error codes (FirebreakError) on the wire. */
const NODE_CODES: Record<FirebreakError["code"], ApiErrorCode> = {
  KERNEL_MISSING: "INTERNAL",
  NOT_ROOT: "INTERNAL",
  QEMU_MISSING: "INTERNAL",
  TEMPLATE_NOT_FOUND: "TEMPLATE_NOT_FOUND",
  TEMPLATE_SPEC_INVALID: "VALIDATION_FAILED",
  TEMPLATE_BUILD_FAILED: "TEMPLATE_BUILD_FAILED",
  NO_SPACE: "CAPACITY_EXHAUSTED",
  SANDBOX_NOT_FOUND: "NOT_FOUND",
  SANDBOX_STATE_INVALID: "CONFLICT",
  SANDBOX_BOOT_FAILED: "SANDBOX_BOOT_FAILED",
  SANDBOX_CRASHED: "CONFLICT",
  SNAPSHOT_NOT_FOUND: "NOT_FOUND",
  SHAPE_INVALID: "VALIDATION_FAILED",
  CAPACITY_EXHAUSTED: "CAPACITY_EXHAUSTED",
  AGENT_ERROR: "AGENT_ERROR",
  NODE_UNAVAILABLE: "NODE_UNAVAILABLE",
  NODE_AUTH_FAILED: "INTERNAL",
  INTERNAL: "INTERNAL",
};

/** The egress module's codes (EgressError) on the wire. */
const EGRESS_CODES: Record<EgressError["code"], ApiErrorCode> = {
  EGRESS_POLICY_INVALID: "VALIDATION_FAILED",
  EGRESS_CIDR_RESERVED: "VALIDATION_FAILED",
  EGRESS_SERVICE_UNKNOWN: "VALIDATION_FAILED",
  EGRESS_SERVICE_FORBIDDEN: "VALIDATION_FAILED",
  EGRESS_SERVICE_INVALID: "VALIDATION_FAILED",
  EGRESS_SANDBOX_UNKNOWN: "CONFLICT",
  EGRESS_APPLY_FAILED: "INTERNAL",
};

/** Any error as an ApiError: node errors keep their message; unknown errors become INTERNAL. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof FirebreakError)
    return new ApiError(NODE_CODES[e.code] ?? "INTERNAL", e.message, { cause: e });
  if (e instanceof EgressError && EGRESS_CODES[e.code] !== "INTERNAL")
    return new ApiError(EGRESS_CODES[e.code], e.message, { cause: e });
  return new ApiError("INTERNAL", "internal error; the server log has the details under this request id", {
    cause: e,
  });
}
