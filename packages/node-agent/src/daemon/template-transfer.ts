// Templates travel between nodes by content address: a node that lacks one
// receives the image from a node that has it (relayed by the control plane,
// off the hot path), checks it against its sha256 and installs it under the
// same key. Raw HTTP on the daemon's listener, beside the node API:
//
//   GET /templates/<name>/image   body: rootfs.ext4 as records (zero blocks as
//                                 a length only); head: key, manifest, sha256, size
//   PUT /templates/<name>/image   the same head and body; answers {name, key}
//
// SECURITY: the receiving node trusts only bytes whose sha256 matches what
// the sending node reported (the control plane relays both under the node
// credentials); the key is a content address checked by its form; nothing
// is installed until the whole image is written and verified.
import { createHash, randomBytes } from "node:crypto";
import { constants as O } from "node:fs";
import fs from "node:fs/promises";
import type http from "node:http";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { writeFileAtomic } from "../host/safe-fs.ts";
import type { TemplateManifest } from "../image/builder.ts";
import { isTemplateName } from "../image/template-spec.ts";
import { getTemplate } from "../image/template-store.ts";

export const HEADER_KEY = "x-firebreak-template-key";
export const HEADER_MANIFEST = "x-firebreak-template-manifest";
export const HEADER_SHA256 = "x-firebreak-image-sha256";
export const HEADER_BYTES = "x-firebreak-image-bytes";
/** The body: records of [type u8][length u32 BE][data if type 0]; type 1 is a run of zeros. */
export const SPARSE_TYPE = "application/x-firebreak-sparse";
const RECORD_DATA = 0;
const RECORD_ZERO = 1;

const KEY_RE = /^[0-9a-f]{32}$/;
const CHUNK = 1024 * 1024;

/** The image's sha256, computed once and kept beside it (the image never changes). */
export async function imageSha256(config: NodeConfig, key: string): Promise<string> {
  const dir = path.join(paths.imagesDir(config), key);
  const sidecar = path.join(dir, "rootfs.sha256");
  const known = await fs.readFile(sidecar, "utf8").catch(() => "");
  if (/^[0-9a-f]{64}$/.test(known.trim())) return known.trim();
  const h = createHash("sha256");
  const fh = await fs.open(path.join(dir, "rootfs.ext4"), O.O_RDONLY | O.O_NOFOLLOW);
  try {
    const buf = Buffer.alloc(CHUNK);
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
      if (!bytesRead) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  const sum = h.digest("hex");
  await writeFileAtomic(sidecar, sum, 0o444);
  return sum;
}

/** Answers GET /templates/<name>/image. */
export async function exportTemplate(
  config: NodeConfig,
  name: string,
  res: http.ServerResponse,
): Promise<void> {
  const t = isTemplateName(name) ? await getTemplate(config, name) : undefined;
  if (!t) {
    res.writeHead(404, { "content-type": "text/plain" }).end(`no template ${name}\n`);
    return;
  }
  const sha256 = await imageSha256(config, t.key);
  const fh = await fs.open(t.imagePath, O.O_RDONLY | O.O_NOFOLLOW);
  const size = (await fh.stat()).size;
  res.writeHead(200, {
    "content-type": SPARSE_TYPE,
    [HEADER_BYTES]: String(size),
    [HEADER_KEY]: t.key,
    [HEADER_MANIFEST]: Buffer.from(JSON.stringify(t.manifest)).toString("base64url"),
    [HEADER_SHA256]: sha256,
  });
  let gone = false;
  res.on("close", () => {
    gone = true;
  });
  try {
    // Zero blocks go as a record with no payload: a mostly empty image is
    // mostly headers on the wire. Writes wait for the receiver (backpressure).
    const buf = Buffer.alloc(CHUNK);
    for (let pos = 0; pos < size && !gone; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, size - pos), pos);
      if (!bytesRead) break;
      const chunk = buf.subarray(0, bytesRead);
      const head = Buffer.alloc(5);
      head.writeUInt8(isZero(chunk) ? RECORD_ZERO : RECORD_DATA, 0);
      head.writeUInt32BE(bytesRead, 1);
      const ok = res.write(isZero(chunk) ? head : Buffer.concat([head, chunk]));
      if (!ok) await new Promise((r) => res.once("drain", r));
      pos += bytesRead;
    }
    res.end();
  } finally {
    await fh.close();
  }
}

/**
 * Handles PUT /templates/<name>/image: writes the image (holes for zero
 * blocks, so a sparse image stays sparse), verifies length and sha256, and
 * installs it atomically under its key and name.
 */
export async function importTemplate(
  config: NodeConfig,
  name: string,
  req: http.IncomingMessage,
): Promise<{ name: string; key: string; installed: boolean }> {
  const key = String(req.headers[HEADER_KEY] ?? "");
  const sha256 = String(req.headers[HEADER_SHA256] ?? "");
  const length = Number(req.headers[HEADER_BYTES]);
  if (!isTemplateName(name) || !KEY_RE.test(key) || !/^[0-9a-f]{64}$/.test(sha256)) {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", "a template import needs a name, a key and a sha256");
  }
  if (!Number.isSafeInteger(length) || length <= 0 || length > 256 * 2 ** 30) {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", `a template import needs its length (${HEADER_BYTES})`);
  }
  let manifest: TemplateManifest;
  try {
    manifest = JSON.parse(
      Buffer.from(String(req.headers[HEADER_MANIFEST] ?? ""), "base64url").toString("utf8"),
    ) as TemplateManifest;
  } catch {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", "the template manifest does not decode");
  }
  if (manifest.key !== key || manifest.name !== name || manifest.imageBytes !== length) {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", "the manifest does not describe this image");
  }
  const imagesDir = paths.imagesDir(config);
  const final = path.join(imagesDir, key);
  const tag = async () => {
    await fs.mkdir(paths.templatesDir(config), { recursive: true, mode: 0o755 });
    await writeFileAtomic(
      path.join(paths.templatesDir(config), `${name}.json`),
      JSON.stringify({ key }),
      0o644,
    );
  };
  if (await fs.stat(path.join(final, "manifest.json")).catch(() => undefined)) {
    // Already here under this content address: drain and tag.
    req.resume();
    await tag();
    return { name, key, installed: false };
  }
  await fs.mkdir(imagesDir, { recursive: true, mode: 0o755 });
  const staging = path.join(imagesDir, `.import-${process.pid}-${randomBytes(4).toString("hex")}`);
  await fs.mkdir(staging, { mode: 0o700 });
  try {
    const file = path.join(staging, "rootfs.ext4");
    const fh = await fs.open(file, O.O_WRONLY | O.O_CREAT | O.O_EXCL | O.O_NOFOLLOW, 0o600);
    const h = createHash("sha256");
    let pos = 0;
    try {
      // Records: [type u8][length u32 BE] then `length` bytes for data, none for a zero run.
      let pending: Buffer = Buffer.alloc(0);
      for await (const chunk of req as AsyncIterable<Buffer>) {
        pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
        for (;;) {
          if (pending.length < 5) break;
          const type = pending.readUInt8(0);
          const n = pending.readUInt32BE(1);
          // SECURITY: bounded records, never past the announced size.
          if ((type !== RECORD_DATA && type !== RECORD_ZERO) || n === 0 || n > CHUNK || pos + n > length) {
            throw new FirebreakError("TEMPLATE_SPEC_INVALID", "the image stream is malformed");
          }
          if (type === RECORD_ZERO) {
            h.update(zeros(n));
            pos += n;
            pending = pending.subarray(5);
            continue;
          }
          if (pending.length < 5 + n) break;
          const data = pending.subarray(5, 5 + n);
          h.update(data);
          // Only the non-zero 4 KiB blocks are written: the rest stay holes.
          for (let off = 0; off < n; off += 4096) {
            const block = data.subarray(off, Math.min(off + 4096, n));
            if (!isZero(block)) await fh.write(block, 0, block.length, pos + off);
          }
          pos += n;
          pending = pending.subarray(5 + n);
        }
        if (pending.length > CHUNK + 5)
          throw new FirebreakError("TEMPLATE_SPEC_INVALID", "the image stream is malformed");
      }
      if (pending.length)
        throw new FirebreakError("TEMPLATE_SPEC_INVALID", "the image stream ended inside a record");
      await fh.truncate(length);
    } finally {
      await fh.close();
    }
    if (pos !== length) throw new FirebreakError("TEMPLATE_SPEC_INVALID", `got ${pos} of ${length} bytes`);
    const got = h.digest("hex");
    if (got !== sha256)
      throw new FirebreakError("TEMPLATE_SPEC_INVALID", "the image does not match its sha256");
    await fs.chmod(file, 0o444);
    await fs.writeFile(path.join(staging, "rootfs.sha256"), sha256, { mode: 0o444 });
    await fs.writeFile(path.join(staging, "manifest.json"), JSON.stringify(manifest, null, 2), {
      mode: 0o644,
    });
    await fs.chmod(staging, 0o755);
    // INVARIANT: images/<key> appears complete or not at all.
    await fs.rename(staging, final).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== "ENOTEMPTY" && e.code !== "EEXIST") throw e; // another import won
      await fs.rm(staging, { recursive: true, force: true });
    });
    await tag();
    return { name, key, installed: true };
  } catch (e) {
    await fs.rm(staging, { recursive: true, force: true });
    throw e;
  }
}

function isZero(b: Buffer): boolean {
  // Compare against a zero buffer in 4 KiB steps (fast path for free space).
  for (let i = 0; i < b.length; i += 4096) {
    const end = Math.min(i + 4096, b.length);
    if (b.subarray(i, end).compare(ZERO, 0, end - i) !== 0) return false;
  }
  return true;
}

const ZERO = Buffer.alloc(4096);
const ZEROS = Buffer.alloc(CHUNK);

function zeros(n: number): Buffer {
  return ZEROS.subarray(0, n);
}
