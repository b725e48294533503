// Guest agent (envd) errors as API errors.
import { Code, ConnectError } from "@connectrpc/connect";
import { ApiError, toApiError } from "../errors.ts";
import { readBounded } from "../relay/read-bounded.ts";

/** Error text read from the agent: the rest is not read. */
const MAX_ERROR_BODY_BYTES = 4096;

export function fromEnvd(e: unknown, what: string): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof ConnectError) {
    const msg = `${what}: ${e.rawMessage}`;
    // The host's client could not decode what the agent sent: the guest's
    // fault, not the caller's (Connect reports it as invalid_argument).
    if (e.rawMessage.startsWith("cannot decode message")) {
      return new ApiError("GUEST_RESPONSE_INVALID", msg, { cause: e });
    }
    switch (e.code) {
      case Code.NotFound:
        return new ApiError("NOT_FOUND", msg, { cause: e });
      case Code.AlreadyExists:
      case Code.FailedPrecondition:
        return new ApiError("CONFLICT", msg, { cause: e });
      case Code.InvalidArgument:
        return new ApiError("VALIDATION_FAILED", msg, { cause: e });
      case Code.PermissionDenied:
      case Code.Unauthenticated:
        return new ApiError("FORBIDDEN", msg, { cause: e });
      // The host client's own limit (readMaxBytes): a message from the guest was too large.
      case Code.ResourceExhausted:
        if (e.rawMessage.includes("readMaxBytes"))
          return new ApiError("GUEST_RESPONSE_TOO_LARGE", msg, { cause: e });
        return new ApiError("AGENT_ERROR", msg, { cause: e });
      default:
        return new ApiError("AGENT_ERROR", msg, { cause: e });
    }
  }
  const api = toApiError(e);
  if (api.code === "INTERNAL")
    return new ApiError("AGENT_ERROR", `${what}: ${(e as Error).message}`, { cause: e });
  return api;
}

/** The agent's REST errors (/files) by HTTP status. */
export async function fromEnvdResponse(res: Response, what: string): Promise<ApiError> {
  // SECURITY: the agent writes this body; only its first bytes are read.
  const { bytes } = await readBounded(res.body, MAX_ERROR_BODY_BYTES).catch(() => ({
    bytes: Buffer.alloc(0),
  }));
  const text = bytes.toString("utf8").slice(0, 500);
  let message = text;
  try {
    const j = JSON.parse(text) as { message?: unknown };
    if (typeof j?.message === "string" && j.message) message = j.message.slice(0, 500);
  } catch {
    // plain text
  }
  const msg = `${what}: ${message || res.statusText}`;
  if (res.status === 404) return new ApiError("NOT_FOUND", msg);
  if (res.status === 400) return new ApiError("VALIDATION_FAILED", msg);
  if (res.status === 401 || res.status === 403) return new ApiError("FORBIDDEN", msg);
  if (res.status === 409) return new ApiError("CONFLICT", msg);
  if (res.status === 507) return new ApiError("CAPACITY_EXHAUSTED", msg);
  return new ApiError("AGENT_ERROR", msg);
}
