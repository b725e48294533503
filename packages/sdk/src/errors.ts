// Errors the SDK raises: one class with a machine-readable code, plus a few
// subclasses for the outcomes callers most often branch on. Codes are stable;
// messages are for people and say how to fix the problem.

/** Codes the server answers with (`{ error: { code, message, requestId } }`). */
export const API_ERROR_CODES = [
  "UNAUTHENTICATED",
  "FORBIDDEN",
  "NOT_FOUND",
  "VALIDATION_FAILED",
  "WEBHOOK_DESTINATION_FORBIDDEN",
  "PAYLOAD_TOO_LARGE",
  "QUOTA_EXCEEDED",
  "RATE_LIMITED",
  "CONFLICT",
  "TEMPLATE_NOT_FOUND",
  "CAPACITY_EXHAUSTED",
  "SANDBOX_BOOT_FAILED",
  "AGENT_ERROR",
  "GUEST_RESPONSE_INVALID",
  "GUEST_RESPONSE_TOO_LARGE",
  "TEMPLATE_BUILD_FAILED",
  "INTERNAL",
] as const;

/** Codes the SDK raises itself, before or without a server answer. */
export const CLIENT_ERROR_CODES = [
  /** No base URL or API key: pass one, or set FIREBREAK_URL / FIREBREAK_API_KEY. */
  "CONFIG_MISSING",
  /** The server could not be reached (not running, wrong URL, network). */
  "CONNECTION_FAILED",
  /** A request took longer than `requestTimeoutMs`. */
  "REQUEST_TIMEOUT",
  /** The caller aborted the request through its AbortSignal. */
  "ABORTED",
  /** The server answered with something the contract does not allow. */
  "BAD_RESPONSE",
] as const;

export type ApiErrorCode = (typeof API_ERROR_CODES)[number];
export type ClientErrorCode = (typeof CLIENT_ERROR_CODES)[number];
/**
 * Every code an SDK error can carry. Servers may add codes (for example node
 * codes such as `TEMPLATE_BUILD_FAILED`), so unknown strings are allowed too.
 */
export type FirebreakErrorCode = ApiErrorCode | ClientErrorCode | (string & {});

export interface FirebreakApiErrorInit {
  code: FirebreakErrorCode;
  message: string;
  /** HTTP status; 0 when no response was received (client-side codes). */
  status?: number;
  requestId?: string;
  cause?: unknown;
}

/** Any error from the Firebreak API or the SDK talking to it. */
export class FirebreakApiError extends Error {
  readonly code: FirebreakErrorCode;
  /** HTTP status; 0 when no response was received. */
  readonly status: number;
  /** The server's request id (quote it when reporting a problem). */
  readonly requestId: string | undefined;

  constructor(init: FirebreakApiErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "FirebreakApiError";
    this.code = init.code;
    this.status = init.status ?? 0;
    this.requestId = init.requestId;
  }
}

/** 401: the API key is missing, malformed, unknown or revoked. */
export class AuthenticationError extends FirebreakApiError {
  override readonly name = "AuthenticationError";
}
/** 403: the key lacks the scope the operation needs. */
export class PermissionError extends FirebreakApiError {
  override readonly name = "PermissionError";
}
/** 404: no such sandbox, key, template or command for this tenant. */
export class NotFoundError extends FirebreakApiError {
  override readonly name = "NotFoundError";
}
/** 400 / 413: the request is malformed or too large. */
export class ValidationError extends FirebreakApiError {
  override readonly name = "ValidationError";
}
/** 409: the operation is wrong for the current state (e.g. pausing a paused sandbox). */
export class ConflictError extends FirebreakApiError {
  override readonly name = "ConflictError";
}
/** 429: a tenant limit or the request rate limit was hit. */
export class LimitError extends FirebreakApiError {
  override readonly name = "LimitError";
}
/** 422: a template build failed (invalid spec, or a build step failed). */
export class TemplateBuildError extends FirebreakApiError {
  override readonly name = "TemplateBuildError";
}
/** 5xx: the server or a node failed (capacity, boot failure, guest agent, internal). */
export class ServerError extends FirebreakApiError {
  override readonly name = "ServerError";
}

type ErrorClass = new (init: FirebreakApiErrorInit) => FirebreakApiError;

const BY_CODE: Record<string, ErrorClass> = {
  UNAUTHENTICATED: AuthenticationError,
  FORBIDDEN: PermissionError,
  NOT_FOUND: NotFoundError,
  TEMPLATE_NOT_FOUND: NotFoundError,
  VALIDATION_FAILED: ValidationError,
  WEBHOOK_DESTINATION_FORBIDDEN: ValidationError,
  PAYLOAD_TOO_LARGE: ValidationError,
  CONFLICT: ConflictError,
  QUOTA_EXCEEDED: LimitError,
  RATE_LIMITED: LimitError,
  CAPACITY_EXHAUSTED: ServerError,
  SANDBOX_BOOT_FAILED: ServerError,
  AGENT_ERROR: ServerError,
  GUEST_RESPONSE_INVALID: ServerError,
  GUEST_RESPONSE_TOO_LARGE: ServerError,
  TEMPLATE_BUILD_FAILED: TemplateBuildError,
  INTERNAL: ServerError,
};

const BY_STATUS: Record<number, FirebreakErrorCode> = {
  400: "VALIDATION_FAILED",
  401: "UNAUTHENTICATED",
  403: "FORBIDDEN",
  404: "NOT_FOUND",
  409: "CONFLICT",
  413: "PAYLOAD_TOO_LARGE",
  422: "TEMPLATE_BUILD_FAILED",
  429: "RATE_LIMITED",
  502: "SANDBOX_BOOT_FAILED",
  503: "CAPACITY_EXHAUSTED",
};

/** The error for a code (and status), as the most specific class. */
export function apiError(init: FirebreakApiErrorInit): FirebreakApiError {
  const cls =
    BY_CODE[init.code] ??
    (init.status && init.status >= 500
      ? ServerError
      : init.status
        ? BY_CODE[BY_STATUS[init.status] ?? ""]
        : undefined) ??
    FirebreakApiError;
  return new cls(init);
}

/** The code a status implies when a response carries no error body. */
export function codeForStatus(status: number): FirebreakErrorCode {
  return BY_STATUS[status] ?? (status >= 500 ? "INTERNAL" : "BAD_RESPONSE");
}

/** True when `e` is a Firebreak SDK error (with `code`, when given). */
export function isFirebreakApiError(e: unknown, code?: FirebreakErrorCode): e is FirebreakApiError {
  return e instanceof FirebreakApiError && (code === undefined || e.code === code);
}
