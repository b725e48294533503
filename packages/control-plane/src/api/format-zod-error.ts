import type { ZodError } from "zod";

/** Zod issues as one message naming each field (at most ten). */
export function formatZodError(e: ZodError): string {
  return e.issues
    .slice(0, 10)
    .map((i) => {
      const where = i.path.length ? i.path.join(".") : "body";
      if (i.code === "unrecognized_keys") return `${where}: unknown field(s) ${i.keys.join(", ")}`;
      return `${where}: ${i.message}`;
    })
    .join("; ");
}
