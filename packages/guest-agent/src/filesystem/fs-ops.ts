import { constants as fsConstants } from "node:fs";
import {
  access,
  cp,
  lstat,
  mkdir,
  open,
  readdir,
  realpath,
  rename,
  rm,
  stat,
  statfs,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { loadOwnerNames } from "../identity/users.ts";
import { DirWatcher } from "./dir-watcher.ts";
import { describePath, type EntryRecord } from "./entry-record.ts";
import { FsCode, FsOpError, toFsOpError } from "./fs-op-error.ts";
import { EventTypeValue } from "./wire-enums.ts";
import { type Metadata, readMetadata, writeMetadata } from "./xattr-metadata.ts";

/**
 * The file operations of envd's filesystem API and /files, performed with the
 * rights of the calling process. The agent calls them directly for root; for
 * any other user they run in that user's file worker (`fs-worker/`), so every
 * permission check, symlink resolution and file creation is the user's own.
 * Every failure is an FsOpError naming the path it concerns.
 */

/** Deepest ListDir honoured; deeper requests are clamped. */
export const MAX_LIST_DEPTH = 64;
/** Most entries one ListDir returns; more is an error (the answer is built in memory). */
export const MAX_LIST_ENTRIES = 20_000;
/** Download read size (the file worker's chunk size). */
const READ_CHUNK_BYTES = 256 * 1024;
/** Mode of directories created on the way (as envd; the umask applies). */
const DIR_MODE = 0o755;
/** Mode of new files (as envd: 0666 less the umask). */
const FILE_MODE = 0o666;

export type WatchOptions = { recursive: boolean; includeEntry: boolean; allowNetworkMounts: boolean };
export type WatchEvent = { name: string; type: EventTypeValue; entry?: EntryRecord };
export type WatchHandle = { close(): void };

async function guard<T>(path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw toFsOpError(err, path);
  }
}

export async function statEntry(path: string): Promise<EntryRecord> {
  return guard(path, async () => describePath(path, await loadOwnerNames()));
}

/** Throws unless `path` is a directory the caller may enter (a command's cwd). */
export async function checkEnterable(path: string): Promise<void> {
  const st = await guard(path, () => stat(path));
  if (!st.isDirectory()) throw new FsOpError(FsCode.NOT_DIR, path);
  await guard(path, () => access(path, fsConstants.X_OK));
}

/** mkdir -p. `created` is false when a directory is already there. */
export async function makeDir(path: string): Promise<{ created: boolean; entry?: EntryRecord }> {
  return guard(path, async () => {
    const existing = await stat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (existing) {
      if (existing.isDirectory()) return { created: false };
      throw new FsOpError(FsCode.EXISTS_NOT_DIR, path);
    }
    await mkdir(path, { recursive: true, mode: DIR_MODE });
    return { created: true, entry: await describePath(path, await loadOwnerNames()) };
  });
}

/** rename(2), creating the destination's parents; across filesystems, copy then delete. */
export async function movePath(source: string, destination: string): Promise<EntryRecord> {
  await guard(source, () => lstat(source));
  await guard(destination, () => mkdir(dirname(destination), { recursive: true, mode: DIR_MODE }));
  try {
    await rename(source, destination);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw toFsOpError(err, source);
    if (code !== "EXDEV") throw toFsOpError(err, destination);
    await guard(destination, () =>
      cp(source, destination, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true }),
    );
    await guard(source, () => rm(source, { recursive: true }));
  }
  return statEntry(destination);
}

/** rm -rf: a missing path is not an error (envd's behaviour). */
export async function removePath(path: string): Promise<void> {
  await guard(path, () => rm(path, { recursive: true, force: true }));
}

/** Go's sort order for names: bytewise on UTF-8. */
function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/**
 * Lists a directory (a symlink to one is followed) to `depth` levels, depth-first
 * in name order like Go's filepath.WalkDir: each directory's entries sorted by
 * name, a subdirectory's contents right after it. Entry paths are under the
 * requested path. Does not descend through symlinks; skips entries that vanish
 * and subdirectories that cannot be read.
 */
export async function listDir(path: string, depth: number): Promise<EntryRecord[]> {
  const maxDepth = Math.min(Math.max(Math.trunc(depth) || 1, 1), MAX_LIST_DEPTH);
  const real = await guard(path, () => realpath(path));
  const st = await guard(path, () => stat(real));
  if (!st.isDirectory()) throw new FsOpError(FsCode.NOT_DIR, path);
  const owners = await loadOwnerNames();
  const out: EntryRecord[] = [];
  const walk = async (realDir: string, shownDir: string, level: number): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(realDir);
    } catch (err) {
      if (level === 1) throw toFsOpError(err, path);
      return;
    }
    names.sort(byteCompare);
    for (const name of names) {
      const child = join(realDir, name);
      const record = await describePath(child, owners).catch(() => undefined);
      if (!record) continue;
      record.path = join(shownDir, name);
      out.push(record);
      if (out.length > MAX_LIST_ENTRIES) {
        throw new FsOpError(
          FsCode.TOO_MANY_ENTRIES,
          path,
          `listing '${path}' found more than ${MAX_LIST_ENTRIES} entries`,
        );
      }
      // A symlink's record carries its target's type: only real directories are entered.
      if (level < maxDepth && record.type === 2 && record.symlinkTarget === undefined) {
        await walk(child, record.path, level + 1);
      }
    }
  };
  await walk(real, path, 1);
  return out;
}

/**
 * Opens a file for download. O_NONBLOCK so that opening a FIFO cannot hang a
 * thread; FIFOs and sockets are refused, directories too.
 */
export async function openRead(path: string): Promise<{ size: number; stream: Readable }> {
  const fh = await guard(path, () => open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK));
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new FsOpError(FsCode.IS_DIR, path);
    if (st.isFIFO() || st.isSocket()) throw new FsOpError(FsCode.NOT_REGULAR, path);
    return { size: st.size, stream: fh.createReadStream({ highWaterMark: READ_CHUNK_BYTES }) };
  } catch (err) {
    await fh.close().catch(() => {});
    throw toFsOpError(err, path);
  }
}

/**
 * Writes `body` to `path` (parents created, file created or truncated), then
 * replaces its metadata. Returns the metadata read back from the file.
 */
export async function writeFile(
  path: string,
  body: Readable,
  metadata: Metadata | undefined,
): Promise<Metadata | undefined> {
  await guard(path, () => mkdir(dirname(path), { recursive: true, mode: DIR_MODE }));
  const existing = await stat(path).catch(() => undefined);
  if (existing?.isDirectory()) throw new FsOpError(FsCode.IS_DIR, path);
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NONBLOCK;
  const fh = await guard(path, () => open(path, flags, FILE_MODE));
  await guard(path, () => copyInto(body, fh.createWriteStream()));
  await guard(path, () => writeMetadata(path, metadata));
  return readMetadata(path);
}

/**
 * Pipes `body` into `out` with backpressure. Unlike pipeline(), a failed write
 * leaves `body` unconsumed (paused) instead of destroying it: the body is an
 * HTTP request that still has to carry the error answer.
 */
function copyInto(body: Readable, out: Writable): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => {
      body.unpipe(out);
      body.pause();
      out.destroy();
      reject(err);
    };
    out.once("error", fail);
    body.once("error", fail);
    out.once("finish", () => {
      body.off("error", fail);
      resolve();
    });
    body.pipe(out);
  });
}

const NETWORK_FS_MAGIC = new Set([0x6969, 0xff534d42, 0x517b, 0xfe534d42, 0x65735546]);

/** NFS, CIFS, SMB, SMB2 or FUSE, by statfs f_type (envd's list). */
export function isNetworkFilesystem(fsType: number): boolean {
  return NETWORK_FS_MAGIC.has(fsType >>> 0);
}

function carriesEntry(type: EventTypeValue): boolean {
  return type === EventTypeValue.CREATE || type === EventTypeValue.WRITE || type === EventTypeValue.CHMOD;
}

/**
 * Watches a directory. With includeEntry, create/write/chmod events carry the
 * entry when it can still be described (never remove/rename: the path may hold
 * another entry by then). Network filesystems are refused unless allowed.
 */
export async function startWatch(
  path: string,
  opts: WatchOptions,
  onEvent: (ev: WatchEvent) => void,
  onError: (err: Error) => void,
): Promise<WatchHandle> {
  const st = await guard(path, () => stat(path));
  if (!st.isDirectory()) throw new FsOpError(FsCode.NOT_DIR, path);
  if (!opts.allowNetworkMounts) {
    const fs = await guard(path, () => statfs(path));
    if (isNetworkFilesystem(fs.type)) throw new FsOpError(FsCode.NETWORK_MOUNT, path);
  }
  const owners = opts.includeEntry ? await loadOwnerNames() : undefined;
  return guard(
    path,
    async () =>
      new DirWatcher(
        path,
        opts.recursive,
        async ({ name, type }) => {
          const ev: WatchEvent = { name, type };
          if (owners && carriesEntry(type)) {
            const entry = await describePath(join(path, name), owners).catch(() => undefined);
            if (entry) ev.entry = entry;
          }
          onEvent(ev);
        },
        onError,
      ),
  );
}
