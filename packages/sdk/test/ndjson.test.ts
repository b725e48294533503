// NDJSON parsing: lines split anywhere, multi-byte characters split across
// chunks, blank lines, a last line without a newline, and bad lines.
import assert from "node:assert/strict";
import { test } from "node:test";
import { FirebreakApiError, ndjson } from "../src/index.ts";

async function* chunks(...parts: (string | Uint8Array)[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield typeof p === "string" ? new TextEncoder().encode(p) : p;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const v of it) out.push(v);
  return out;
}

test("lines split across chunks at every position parse the same", async () => {
  const text = '{"a":1}\n{"b":"two"}\n\n{"c":[3]}\n';
  const expected = [{ a: 1 }, { b: "two" }, { c: [3] }];
  for (let i = 0; i <= text.length; i++) {
    for (let j = i; j <= text.length; j++) {
      assert.deepEqual(
        await collect(ndjson(chunks(text.slice(0, i), text.slice(i, j), text.slice(j)))),
        expected,
      );
    }
  }
});

test("a multi-byte character split between chunks survives", async () => {
  const bytes = new TextEncoder().encode('{"s":"héllo ✓ 🔥"}\n');
  for (let i = 1; i < bytes.length; i++) {
    const got = await collect(ndjson(chunks(bytes.subarray(0, i), bytes.subarray(i))));
    assert.deepEqual(got, [{ s: "héllo ✓ 🔥" }], `split at byte ${i}`);
  }
});

test("one byte per chunk, and a last line without a newline", async () => {
  const bytes = new TextEncoder().encode('{"x":"ü"}\r\n{"y":2}');
  const parts = [...bytes].map((b) => new Uint8Array([b]));
  assert.deepEqual(await collect(ndjson(chunks(...parts))), [{ x: "ü" }, { y: 2 }]);
});

test("a line that is not JSON is BAD_RESPONSE naming the line", async () => {
  await assert.rejects(collect(ndjson(chunks('{"ok":1}\nnot json\n'))), (e) => {
    assert.ok(e instanceof FirebreakApiError);
    assert.equal(e.code, "BAD_RESPONSE");
    assert.match(e.message, /not json/);
    return true;
  });
});
