// Small helpers for declaring routes: JSON bodies and the error response every route can give.
import type { ZodType } from "zod";
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
