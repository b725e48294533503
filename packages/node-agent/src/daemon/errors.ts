// FirebreakError <-> ConnectError across the node API: the node's stable code
// travels in a response header, so the control plane maps it exactly as it
// did in-process.
import { Code, ConnectError } from "@connectrpc/connect";
import { EgressError, type EgressErrorCode } from "../egress/index.ts";
import { ERROR_CODES, type ErrorCode, FirebreakError } from "../errors.ts";

export const ERROR_CODE_HEADER = "fb-error-code";

const connectCodes: Partial<Record<ErrorCode, Code>> = {
  SANDBOX_NOT_FOUND: Code.NotFound,
  TEMPLATE_NOT_FOUND: Code.NotFound,
  SNAPSHOT_NOT_FOUND: Code.NotFound,
  SHAPE_INVALID: Code.InvalidArgument,
  TEMPLATE_SPEC_INVALID: Code.InvalidArgument,
  SANDBOX_STATE_INVALID: Code.FailedPrecondition,
  CAPACITY_EXHAUSTED: Code.ResourceExhausted,
  NOT_ROOT: Code.PermissionDenied,
};

/** What the daemon throws back to its caller. */
export function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof FirebreakError) {
    const err = new ConnectError(e.message, connectCodes[e.code] ?? Code.Internal);
    err.metadata.set(ERROR_CODE_HEADER, e.code);
    return err;
  }
  // Egress policy errors carry their own code; pass it on.
  if (e instanceof EgressError) {
    const err = new ConnectError(e.message, Code.InvalidArgument);
    err.metadata.set(ERROR_CODE_HEADER, `EGRESS:${e.code}`);
    return err;
  }
  return new ConnectError((e as Error)?.message ?? String(e), Code.Internal);
}

/** What the caller sees: the node's FirebreakError again (or the egress error's code). */
export function fromConnectError(e: unknown): Error {
  if (!(e instanceof ConnectError)) return e as Error;
  const code = e.metadata.get(ERROR_CODE_HEADER);
  if (code && Object.hasOwn(ERROR_CODES, code)) {
    return new FirebreakError(code as ErrorCode, e.rawMessage, { cause: e });
  }
  if (code?.startsWith("EGRESS:")) {
    return new EgressError(code.slice("EGRESS:".length) as EgressErrorCode, e.rawMessage, { cause: e });
  }
  if (
    e.code === Code.Unavailable ||
    e.code === Code.DeadlineExceeded ||
    e.code === Code.Canceled ||
    unreachable(e)
  ) {
    return new FirebreakError("NODE_UNAVAILABLE", `the node did not answer: ${e.rawMessage}`, { cause: e });
  }
  return new FirebreakError("INTERNAL", e.rawMessage, { cause: e });
}

/** Errors of reaching the node at all (its socket gone, refused, reset): the node did not answer. */
const UNREACHABLE = new Set([
  "ENOENT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);

function unreachable(e: ConnectError): boolean {
  let c: unknown = e.cause;
  for (let depth = 0; c && depth < 5; depth++) {
    const code = (c as NodeJS.ErrnoException).code;
    if (typeof code === "string" && UNREACHABLE.has(code)) return true;
    c = (c as Error).cause;
  }
  return false;
}
