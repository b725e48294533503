// Guest agent (envd) errors as API errors.
import { Code, ConnectError } from "@connectrpc/connect";
import { ApiError, toApiError } from "../errors.ts";

export function fromEnvd(e: unknown, what: string): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof ConnectError) {
    const msg = `${what}: ${e.rawMessage}`;
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
  const text = (await res.text().catch(() => "")).slice(0, 500);
  let message = text;
  try {
    const j = JSON.parse(text) as { message?: string };
    if (j.message) message = j.message;
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
