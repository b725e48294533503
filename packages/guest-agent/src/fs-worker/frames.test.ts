import assert from "node:assert/strict";
import { test } from "node:test";
import {
  decodeCount,
  decodeJson,
  encodeCount,
  encodeFrame,
  encodeJson,
  FrameDecoder,
  FrameKind,
} from "./frames.ts";

type Got = { kind: number; id: number; payload: Buffer };

function collect(max?: number) {
  const got: Got[] = [];
  const d = new FrameDecoder((kind, id, payload) => got.push({ kind, id, payload }), max);
  return { got, d };
}

test("frames survive any split, byte by byte or glued together", () => {
  const frames = Buffer.concat([
    encodeJson(FrameKind.Call, 7, { op: "stat", path: "/x" }),
    encodeFrame(FrameKind.End, 8),
    encodeFrame(FrameKind.Chunk, 0xffffffff, Buffer.from([0, 1, 2, 255])),
    encodeCount(FrameKind.Credit, 3, 4),
  ]);
  for (const step of [1, 2, 5, 9, 10, frames.length]) {
    const { got, d } = collect();
    for (let i = 0; i < frames.length; i += step)
      assert.equal(d.push(frames.subarray(i, i + step)), undefined);
    assert.equal(got.length, 4);
    assert.deepEqual(decodeJson(got[0]!.payload), { op: "stat", path: "/x" });
    assert.equal(got[0]!.id, 7);
    assert.equal(got[1]!.kind, FrameKind.End);
    assert.equal(got[1]!.payload.length, 0);
    assert.equal(got[2]!.id, 0xffffffff);
    assert.deepEqual([...got[2]!.payload], [0, 1, 2, 255]);
    assert.equal(decodeCount(got[3]!.payload), 4);
  }
});

test("an oversized frame is a protocol violation and nothing after it is decoded", () => {
  const { got, d } = collect(16);
  const big = Buffer.alloc(9);
  big.writeUInt32BE(17, 0);
  assert.match(d.push(big) ?? "", /17 bytes exceeds the 16-byte limit/);
  assert.match(d.push(encodeFrame(FrameKind.End, 1)) ?? "", /exceeds/);
  assert.equal(got.length, 0);
  // 4 GiB announced: refused before any allocation.
  const { d: d2 } = collect();
  assert.match(d2.push(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 10])) ?? "", /exceeds/);
});

test("malformed JSON and counts decode to undefined instead of throwing", () => {
  assert.equal(decodeJson(Buffer.from("{nope")), undefined);
  assert.equal(decodeCount(Buffer.from([1, 2])), undefined);
});
