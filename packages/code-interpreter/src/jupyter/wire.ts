// The Jupyter messaging protocol (version 5.3) on the wire: a message is a
// multipart ZeroMQ message
//
//   [identities..., "<IDS|MSG>", hmac, header, parent_header, metadata, content, buffers...]
//
// where hmac is the hex HMAC-SHA256 (key from the connection file) of the four
// JSON frames. Pure functions: no sockets here.
import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";

export const DELIMITER = "<IDS|MSG>";
export const PROTOCOL_VERSION = "5.3";

export interface MessageHeader {
  msg_id: string;
  session: string;
  username: string;
  date: string;
  msg_type: string;
  version: string;
}

export interface JupyterMessage {
  header: MessageHeader;
  parent_header: Partial<MessageHeader>;
  metadata: Record<string, unknown>;
  content: Record<string, unknown>;
}

export function newMessage(
  msgType: string,
  content: Record<string, unknown>,
  session: string,
  msgId: string = randomUUID(),
): JupyterMessage {
  return {
    header: {
      msg_id: msgId,
      session,
      username: "firebreak",
      date: new Date().toISOString(),
      msg_type: msgType,
      version: PROTOCOL_VERSION,
    },
    parent_header: {},
    metadata: {},
    content,
  };
}

function sign(key: Buffer, frames: Buffer[]): string {
  const h = createHmac("sha256", key);
  for (const f of frames) h.update(f);
  return h.digest("hex");
}

/** The frames to send from a client socket (DEALER: no identities). */
export function encodeMessage(msg: JupyterMessage, key: Buffer): Buffer[] {
  const parts = [msg.header, msg.parent_header, msg.metadata, msg.content].map((p) =>
    Buffer.from(JSON.stringify(p)),
  );
  return [Buffer.from(DELIMITER), Buffer.from(key.length ? sign(key, parts) : ""), ...parts];
}

export class WireError extends Error {}

/**
 * Parses a received multipart message. Throws WireError on a malformed
 * message or a bad signature (the kernel runs the user's code: a message that
 * does not verify is dropped by the caller).
 */
export function decodeMessage(frames: Buffer[], key: Buffer): JupyterMessage {
  const at = frames.findIndex((f) => f.length === DELIMITER.length && f.toString() === DELIMITER);
  if (at < 0) throw new WireError("no <IDS|MSG> delimiter");
  if (frames.length < at + 6) throw new WireError(`too few frames (${frames.length})`);
  const signature = frames[at + 1]!;
  const parts = frames.slice(at + 2, at + 6);
  if (key.length) {
    const want = Buffer.from(sign(key, parts));
    if (signature.length !== want.length || !timingSafeEqual(signature, want)) {
      throw new WireError("bad signature");
    }
  }
  const parsed = parts.map((p, i) => {
    try {
      const v = JSON.parse(p.toString("utf8")) as unknown;
      if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not an object");
      return v as Record<string, unknown>;
    } catch (e) {
      throw new WireError(`frame ${i} is not a JSON object: ${(e as Error).message}`);
    }
  });
  const header = parsed[0] as unknown as MessageHeader;
  if (typeof header.msg_type !== "string") throw new WireError("header without msg_type");
  return {
    header,
    parent_header: parsed[1] as Partial<MessageHeader>,
    metadata: parsed[2]!,
    content: parsed[3]!,
  };
}
