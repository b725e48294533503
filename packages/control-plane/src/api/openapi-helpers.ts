// Small helpers for declaring routes: JSON bodies and the error response every route can give.
import type { output, ZodError, ZodType } from "zod";
import { ApiError } from "../errors.ts";
import { ErrorSchema } from "./schemas.ts";

export const json = <T extends ZodType>(schema: T, description = "OK") => ({
  description,
  content: { "application/json": { schema } },
});

export const body = <T extends ZodType>(schema: T, required = true) => ({
  body: { required, content: { "application/json": { schema } } },
});

/** Every route answers errors in one shape; the status and code are in docs/API.md. */
export const errors = {
  default: {
    description: "Error: {error: {code, message, requestId}} (codes: docs/API.md)",
    content: { "application/json": { schema: ErrorSchema } },
  },
};

export const noContent = { description: "Done" };

export const security: Record<string, string[]>[] = [{ bearer: [] }, { apiKey: [] }];

/**
 * An optional JSON body: the validator skips a request without one, so the
 * schema (and its defaults) is applied here to `{}`.
 */
export function optionalBody<T extends ZodType>(
  schema: T,
  value: unknown,
  format: (e: ZodError) => string,
): output<T> {
  const r = schema.safeParse(value ?? {});
  if (!r.success) throw new ApiError("VALIDATION_FAILED", format(r.error));
  return r.data;
}
