import type { BigIntStats } from "node:fs";
import { lstat, realpath, stat } from "node:fs/promises";
import { basename } from "node:path";
import type { OwnerNames } from "../identity/users.ts";
import { goModeString } from "./file-mode.ts";
import { FileTypeValue } from "./wire-enums.ts";
import { type Metadata, readMetadata } from "./xattr-metadata.ts";

/**
 * One filesystem entry as envd describes it, in a JSON-safe shape (it crosses
 * the pipe from a per-user file worker): 64-bit numbers are decimal strings.
 */
export type EntryRecord = {
  name: string;
  type: FileTypeValue;
  path: string;
  size: string;
  /** Permission bits (`& 0o777`) of the entry, or of a symlink's target. */
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  mtimeSeconds: string;
  mtimeNanos: number;
  symlinkTarget?: string;
  metadata?: Metadata;
};

function typeOf(st: BigIntStats): FileTypeValue {
  if (st.isFile()) return FileTypeValue.FILE;
  if (st.isDirectory()) return FileTypeValue.DIRECTORY;
  if (st.isSymbolicLink()) return FileTypeValue.SYMLINK;
  return FileTypeValue.UNSPECIFIED;
}

/**
 * Describes `path` with the rights of the calling process, the way E2B's envd
 * does: lstat gives name, size, owner, times and the permission string
 * (`Lrwxrwxrwx` for a symlink); a symlink's `symlinkTarget` is its fully
 * resolved absolute path (the link's own path when it cannot be resolved) and its
 * `type`, `mode` and metadata are the target's (type unspecified when dangling).
 * Sockets, pipes and devices are `type` unspecified. Throws the lstat error.
 */
export async function describePath(path: string, owners: OwnerNames): Promise<EntryRecord> {
  const l = await lstat(path, { bigint: true });
  let type = typeOf(l);
  let mode = Number(l.mode & 0o777n);
  let symlinkTarget: string | undefined;
  let metadataPath: string | undefined = path;
  if (l.isSymbolicLink()) {
    symlinkTarget = await realpath(path).catch(() => path);
    const target = await stat(symlinkTarget, { bigint: true }).catch(() => undefined);
    type = target ? typeOf(target) : FileTypeValue.UNSPECIFIED;
    mode = target ? Number(target.mode & 0o777n) : 0;
    metadataPath = target ? symlinkTarget : undefined;
  }
  const uid = Number(l.uid);
  const gid = Number(l.gid);
  const record: EntryRecord = {
    name: path === "/" ? "/" : basename(path),
    type,
    path,
    size: l.size.toString(),
    mode,
    permissions: goModeString(Number(l.mode)),
    owner: owners.users.get(uid) ?? String(uid),
    group: owners.groups.get(gid) ?? String(gid),
    mtimeSeconds: (l.mtimeNs / 1_000_000_000n).toString(),
    mtimeNanos: Number(l.mtimeNs % 1_000_000_000n),
  };
  if (symlinkTarget !== undefined) record.symlinkTarget = symlinkTarget;
  const metadata = metadataPath === undefined ? undefined : await readMetadata(metadataPath);
  if (metadata) record.metadata = metadata;
  return record;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
const isDecimal = (v: unknown): v is string => typeof v === "string" && /^-?\d{1,20}$/.test(v);

/**
 * SECURITY: validates an entry that came from a file worker (a process running
 * as a sandbox user). Returns undefined for anything malformed; never throws.
 */
export function parseEntryRecord(v: unknown): EntryRecord | undefined {
  if (!isObject(v)) return undefined;
  const { name, type, path, size, mode, permissions, owner, group, mtimeSeconds, mtimeNanos } = v;
  if (typeof name !== "string" || typeof path !== "string") return undefined;
  if (type !== 0 && type !== 1 && type !== 2 && type !== 3) return undefined;
  if (!isDecimal(size) || !isDecimal(mtimeSeconds)) return undefined;
  if (typeof mode !== "number" || !Number.isInteger(mode) || mode < 0 || mode > 0o7777) return undefined;
  if (
    typeof mtimeNanos !== "number" ||
    !Number.isInteger(mtimeNanos) ||
    mtimeNanos < 0 ||
    mtimeNanos > 999_999_999
  )
    return undefined;
  if (typeof permissions !== "string" || typeof owner !== "string" || typeof group !== "string")
    return undefined;
  const out: EntryRecord = {
    name,
    type,
    path,
    size,
    mode,
    permissions,
    owner,
    group,
    mtimeSeconds,
    mtimeNanos,
  };
  if (v["symlinkTarget"] !== undefined) {
    if (typeof v["symlinkTarget"] !== "string") return undefined;
    out.symlinkTarget = v["symlinkTarget"];
  }
  if (v["metadata"] !== undefined) {
    const m = v["metadata"];
    if (!isObject(m)) return undefined;
    const md: Metadata = {};
    for (const [k, val] of Object.entries(m)) {
      if (typeof val !== "string") return undefined;
      md[k] = val;
    }
    out.metadata = md;
  }
  return out;
}
