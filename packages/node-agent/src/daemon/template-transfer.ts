// Templates travel between nodes by content address: a node that lacks one
// receives the image from a node that has it (relayed by the control plane,
// off the hot path), checks it against its sha256 and installs it under the
// same key. Raw HTTP on the daemon's listener, beside the node API:
//
//   GET /templates/<name>/image   body: rootfs.ext4; head: key, manifest, sha256, length
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
    "content-type": "application/octet-stream",
    "content-length": String(size),
    [HEADER_KEY]: t.key,
    [HEADER_MANIFEST]: Buffer.from(JSON.stringify(t.manifest)).toString("base64url"),
    [HEADER_SHA256]: sha256,
  });
  const stream = fh.createReadStream({ highWaterMark: CHUNK });
  stream.on("error", () => res.destroy());
  res.on("close", () => stream.destroy());
  stream.pipe(res);
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
  const length = Number(req.headers["content-length"]);
  if (!isTemplateName(name) || !KEY_RE.test(key) || !/^[0-9a-f]{64}$/.test(sha256)) {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", "a template import needs a name, a key and a sha256");
  }
  if (!Number.isSafeInteger(length) || length <= 0 || length > 256 * 2 ** 30) {
    throw new FirebreakError("TEMPLATE_SPEC_INVALID", "a template import needs its length (Content-Length)");
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
      for await (const chunk of req as AsyncIterable<Buffer>) {
        h.update(chunk);
        if (pos + chunk.length > length)
          throw new FirebreakError("TEMPLATE_SPEC_INVALID", "more bytes than announced");
        // Zero blocks become holes: an image of mostly free space stays small on disk.
        if (!isZero(chunk)) await fh.write(chunk, 0, chunk.length, pos);
        pos += chunk.length;
      }
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
