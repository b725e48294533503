import type { IncomingMessage, ServerResponse } from "node:http";
import { basename } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import type { Busboy } from "busboy";
import type { FsExecutor } from "../filesystem/fs-executor.ts";
import { type Metadata, metadataFromHeaders, metadataProblem } from "../filesystem/xattr-metadata.ts";
import { resolveUserPath } from "../identity/paths.ts";
import type { UserInfo } from "../identity/users.ts";
import { fsFailure } from "./fs-status.ts";
import { sendError, sendJson } from "./respond.ts";

type UploadedEntry = { path: string; name: string; type: "file"; metadata?: Metadata };

/** The acting user, the executor that runs file operations as that user, and the default workdir. */
export type FilesContext = { user: UserInfo; exec: FsExecutor; defaultWorkdir: string };

function fail(res: ServerResponse, err: unknown, path: string, user: UserInfo): void {
  const { status, message } = fsFailure(err, path, user.name);
  sendError(res, status, message);
}

/**
 * GET /files: streams a file's bytes (gzip when the client accepts it), read
 * with the user's rights and pulled from disk only as fast as the client reads.
 */
export async function downloadFile(
  req: IncomingMessage,
  res: ServerResponse,
  rawPath: string | null,
  ctx: FilesContext,
): Promise<void> {
  const path = resolveUserPath(rawPath ?? "", ctx.user.home, ctx.defaultWorkdir);
  let opened: { size: number; stream: Readable };
  try {
    opened = await ctx.exec.openRead(path);
  } catch (err) {
    return fail(res, err, path, ctx.user);
  }
  const gzip = /\bgzip\b/.test(String(req.headers["accept-encoding"] ?? ""));
  const headers: Record<string, string | number> = {
    "content-type": "application/octet-stream",
    "content-disposition": `inline; filename=${JSON.stringify(basename(path))}`,
    vary: "Accept-Encoding",
  };
  if (gzip) headers["content-encoding"] = "gzip";
  else headers["content-length"] = opened.size;
  res.writeHead(200, headers);
  try {
    if (gzip) await pipeline(opened.stream, createGzip(), res);
    else await pipeline(opened.stream, res);
  } catch {
    opened.stream.destroy();
    res.destroy();
  }
}

/**
 * POST /files: multipart (field `file`; the part's filename is the path when the
 * query has none, as the SDK does for multi-file writes) or a raw body
 * (`application/octet-stream`, optionally `Content-Encoding: gzip`). Streamed to
 * disk with the user's rights; `X-Metadata-<key>` headers become the files'
 * metadata (envd >= 0.6.2).
 */
export async function uploadFiles(
  req: IncomingMessage,
  res: ServerResponse,
  rawPath: string | null,
  ctx: FilesContext,
): Promise<void> {
  const metadata = metadataFromHeaders(req.headersDistinct);
  const problem = metadata ? metadataProblem(metadata) : undefined;
  if (problem) {
    req.resume();
    return sendError(res, 400, `invalid metadata: ${problem}`);
  }
  const entryFor = (path: string, stored: Metadata | undefined): UploadedEntry => ({
    path,
    name: basename(path),
    type: "file",
    ...(stored ? { metadata: stored } : {}),
  });

  const contentType = String(req.headers["content-type"] ?? "");
  if (!contentType.startsWith("multipart/form-data")) {
    if (!rawPath) {
      req.resume();
      return sendError(res, 400, "query parameter 'path' is required for a raw upload");
    }
    const path = resolveUserPath(rawPath, ctx.user.home, ctx.defaultWorkdir);
    const encoding = String(req.headers["content-encoding"] ?? "").toLowerCase();
    const body = encoding === "gzip" ? req.pipe(createGunzip()) : req;
    let stored: Metadata | undefined;
    try {
      stored = await ctx.exec.writeFile(path, body, metadata);
    } catch (err) {
      req.resume();
      return fail(res, err, path, ctx.user);
    }
    return sendJson(res, 200, [entryFor(path, stored)]);
  }

  // Loaded on first use: most uploads from current SDKs are raw octet-stream.
  const { default: busboy } = await import("busboy");
  let parser: Busboy;
  try {
    parser = busboy({ headers: req.headers, preservePath: true });
  } catch (err) {
    return sendError(res, 400, `invalid multipart request: ${(err as Error).message}`);
  }
  const written: UploadedEntry[] = [];
  const seen = new Set<string>();
  const writes: Promise<void>[] = [];
  let failure: { status: number; message: string } | undefined;
  const accept = (target: string | null | undefined, stream: Readable) => {
    if (!target) {
      failure = { status: 400, message: "query parameter 'path' or a part filename is required" };
      stream.resume();
      return;
    }
    const path = resolveUserPath(target, ctx.user.home, ctx.defaultWorkdir);
    if (seen.has(path)) {
      failure = { status: 400, message: `one upload cannot write '${path}' twice` };
      stream.resume();
      return;
    }
    seen.add(path);
    const index = written.length;
    written.push(entryFor(path, undefined));
    writes.push(
      ctx.exec.writeFile(path, stream, metadata).then(
        (stored) => {
          written[index] = entryFor(path, stored);
        },
        (err: unknown) => {
          failure ??= fsFailure(err, path, ctx.user.name);
          stream.resume();
        },
      ),
    );
  };
  parser.on("file", (field, stream, info) => {
    if (field !== "file" || failure) {
      stream.resume();
      return;
    }
    accept(rawPath || info.filename, stream);
  });
  // A `file` part without a filename (a form field, as `form.append("file", "text")`
  // sends it) is the file's content too, as envd takes it; busboy buffers such
  // parts up to its field limit (1 MiB).
  parser.on("field", (field, value, info) => {
    if (field !== "file" || failure) return;
    if (info.valueTruncated) {
      failure = {
        status: 413,
        message: "a 'file' part without a filename is limited to 1 MiB; send it with a filename",
      };
      return;
    }
    accept(rawPath, Readable.from([Buffer.from(value)]));
  });
  try {
    await pipeline(req, parser);
  } catch (err) {
    return sendError(res, 400, `invalid multipart request: ${(err as Error).message}`);
  }
  await Promise.all(writes);
  if (failure) return sendError(res, failure.status, failure.message);
  if (written.length === 0) return sendError(res, 400, "multipart body has no 'file' field");
  sendJson(res, 200, written);
}
