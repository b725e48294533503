// Reading an answer from a sandbox whole, with a limit. Used where the control
// plane must hold the whole answer (a JSON reply, an error text); everything
// else is streamed.
// SECURITY: the guest decides how long its answers are; reading stops at the
// limit and the rest is cancelled, never buffered.
import { ApiError } from "../errors.ts";

/** JSON answers of the guest agent the control plane parses (the /files upload reply). */
export const MAX_GUEST_JSON_BYTES = 64 * 1024;

/** Up to `maxBytes` of a body; `truncated` when there was more (the rest is not read). */
export async function readBounded(
  body: ReadableStream<Uint8Array> | null,
  maxBytes: number,
): Promise<{ bytes: Buffer; truncated: boolean }> {
  if (!body) return { bytes: Buffer.alloc(0), truncated: false };
  const reader = body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes: Buffer.concat(parts), truncated: false };
      const room = maxBytes - size;
      if (value.byteLength > room) {
        parts.push(value.subarray(0, room));
        return { bytes: Buffer.concat(parts), truncated: true };
      }
      parts.push(value);
      size += value.byteLength;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** A JSON answer of at most `maxBytes`, or GUEST_RESPONSE_TOO_LARGE / GUEST_RESPONSE_INVALID. */
export async function readJsonBounded(res: Response, maxBytes: number, what: string): Promise<unknown> {
  const { bytes, truncated } = await readBounded(res.body, maxBytes);
  if (truncated) {
    throw new ApiError(
      "GUEST_RESPONSE_TOO_LARGE",
      `${what}: the sandbox's answer is larger than ${maxBytes} bytes`,
    );
  }
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch {
    throw new ApiError("GUEST_RESPONSE_INVALID", `${what}: the sandbox's answer is not JSON`);
  }
}
