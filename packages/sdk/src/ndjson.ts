// Newline-delimited JSON over a byte stream: lines may be split anywhere,
// including inside a multi-byte UTF-8 character.
import { FirebreakApiError } from "./errors.ts";

/** Yields one parsed value per non-empty line of `body`. */
export async function* ndjson<T>(body: AsyncIterable<Uint8Array>): AsyncGenerator<T> {
  const decoder = new TextDecoder("utf-8", { fatal: false });
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let nl = buffer.indexOf("\n");
    while (nl >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (line.trim() !== "") yield parseLine<T>(line);
      nl = buffer.indexOf("\n");
    }
  }
  buffer += decoder.decode();
  if (buffer.trim() !== "") yield parseLine<T>(buffer);
}

function parseLine<T>(line: string): T {
  try {
    return JSON.parse(line) as T;
  } catch (e) {
    throw new FirebreakApiError({
      code: "BAD_RESPONSE",
      message: `the server sent a stream line that is not JSON: ${line.slice(0, 200)}`,
      cause: e,
    });
  }
}
