import { createReadStream, createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { basename, dirname } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createGzip } from "node:zlib";
import type { Busboy } from "busboy";
import { giveToUser, makeDirsForUser } from "../filesystem/ownership.ts";
import { resolveUserPath } from "../identity/paths.ts";
import type { UserInfo } from "../identity/users.ts";
import { fsErrorStatus } from "./fs-status.ts";
import { sendError, sendJson } from "./respond.ts";

type UploadedEntry = { path: string; name: string; type: "file" };

function fsFailure(res: ServerResponse, err: unknown, path: string): void {
  const status = fsErrorStatus(err);
  const message =
    status === 404
      ? `path '${path}' does not exist`
      : status === 507
        ? `not enough disk space to write '${path}'`
        : `cannot access '${path}': ${(err as Error).message}`;
  sendError(res, status, message);
}

/** GET /files: streams a file's bytes (gzip when the client accepts it). */
export async function downloadFile(
  req: IncomingMessage,
  res: ServerResponse,
  rawPath: string | null,
  user: UserInfo,
): Promise<void> {
  if (!rawPath) return sendError(res, 400, "query parameter 'path' is required");
  const path = resolveUserPath(rawPath, user.home);
  let size: number;
  try {
    const s = await stat(path);
    if (s.isDirectory())
      return sendError(res, 400, `path '${path}' is a directory: download files one by one`);
    size = s.size;
  } catch (err) {
    return fsFailure(res, err, path);
  }
  const gzip = /\bgzip\b/.test(String(req.headers["accept-encoding"] ?? ""));
  const headers: Record<string, string | number> = {
    "content-type": "application/octet-stream",
    "content-disposition": `attachment; filename=${JSON.stringify(basename(path))}`,
  };
  if (gzip) headers["content-encoding"] = "gzip";
  else headers["content-length"] = size;
  const source = createReadStream(path);
  try {
    await new Promise<void>((resolve, reject) => {
      source.once("open", () => resolve());
      source.once("error", reject);
    });
  } catch (err) {
    return fsFailure(res, err, path);
  }
  res.writeHead(200, headers);
  try {
    if (gzip) await pipeline(source, createGzip(), res);
    else await pipeline(source, res);
  } catch {
    res.destroy();
  }
}

/** Writes a stream to `path` (parents created), owned by the user. */
async function writeUserFile(path: string, body: Readable, user: UserInfo): Promise<void> {
  await makeDirsForUser(dirname(path), user);
  await pipeline(body, createWriteStream(path, { mode: 0o644 }));
  await giveToUser(path, user);
}

/**
 * POST /files: multipart (field `file`; the part's filename is the path when the
 * query has none, as the SDK does for multi-file writes) or a raw body
 * (`application/octet-stream`, optionally `Content-Encoding: gzip`). Streams to disk.
 */
export async function uploadFiles(
  req: IncomingMessage,
  res: ServerResponse,
  rawPath: string | null,
  user: UserInfo,
): Promise<void> {
  const contentType = String(req.headers["content-type"] ?? "");
  if (!contentType.startsWith("multipart/form-data")) {
    if (!rawPath) return sendError(res, 400, "query parameter 'path' is required for a raw upload");
    const path = resolveUserPath(rawPath, user.home);
    const encoding = String(req.headers["content-encoding"] ?? "").toLowerCase();
    const body = encoding === "gzip" ? req.pipe(createGunzip()) : req;
    try {
      await writeUserFile(path, body, user);
    } catch (err) {
      return fsFailure(res, err, path);
    }
    return sendJson(res, 200, [{ path, name: basename(path), type: "file" }] satisfies UploadedEntry[]);
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
  const writes: Promise<void>[] = [];
  let failure: { err: unknown; path: string } | undefined;
  parser.on("file", (field, stream, info) => {
    if (field !== "file") {
      stream.resume();
      return;
    }
    const target = rawPath || info.filename;
    if (!target) {
      failure ??= { err: Object.assign(new Error("no path"), { code: "EINVAL" }), path: "" };
      stream.resume();
      return;
    }
    const path = resolveUserPath(target, user.home);
    const entry: UploadedEntry = { path, name: basename(path), type: "file" };
    written.push(entry);
    writes.push(
      writeUserFile(path, stream, user).catch((err) => {
        failure ??= { err, path };
        stream.resume();
      }),
    );
  });
  try {
    await pipeline(req, parser);
  } catch (err) {
    return sendError(res, 400, `invalid multipart request: ${(err as Error).message}`);
  }
  await Promise.all(writes);
  if (failure) {
    if (failure.path === "")
      return sendError(res, 400, "query parameter 'path' or a part filename is required");
    return fsFailure(res, failure.err, failure.path);
  }
  if (written.length === 0) return sendError(res, 400, "multipart body has no 'file' field");
  sendJson(res, 200, written);
}
