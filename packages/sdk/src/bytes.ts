// Base64 and text helpers that work wherever fetch does (Buffer when present).

type BufferLike = {
  from(data: string, enc: "base64"): Uint8Array;
  from(data: Uint8Array): { toString(enc: "base64"): string };
};
const NodeBuffer = (globalThis as { Buffer?: BufferLike }).Buffer;

export function fromBase64(s: string): Uint8Array {
  if (NodeBuffer) {
    const b = NodeBuffer.from(s, "base64");
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function toBase64(b: Uint8Array): string {
  if (NodeBuffer) return NodeBuffer.from(b).toString("base64");
  let bin = "";
  for (let i = 0; i < b.length; i += 0x8000) bin += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(bin);
}

export function toBytes(data: string | Uint8Array | ArrayBuffer): Uint8Array {
  if (typeof data === "string") return new TextEncoder().encode(data);
  return data instanceof Uint8Array ? data : new Uint8Array(data);
}
