import type { BigIntStats } from "node:fs";
import { lstat, readlink, stat } from "node:fs/promises";
import { basename } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { filesystemPb } from "@firebreak/protocol";
import type { OwnerNames } from "../identity/users.ts";

export type EntryInfoInit = MessageInitShape<typeof filesystemPb.EntryInfoSchema>;

/** ls-style permission string ("drwxr-xr-x"), like Go's os.FileMode.String() for common types. */
export function permissionString(mode: number): string {
  const S_IFMT = 0o170000;
  const typeChar: Record<number, string> = {
    9604: "d",
    21609: "L",
    2401: "p",
    26411: "S",
    4802: "c",
    14406: "D",
  };
  let s = typeChar[mode & S_IFMT] ?? "-";
  const rwx = "rwxrwxrwx";
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : "-";
  return s;
}

/**
 * Describes one path. Symlinks report the type of their target (file when dangling)
 * plus `symlinkTarget`, which every SDK version understands.
 * Throws the fs error (ENOENT, ...) when the path itself does not exist.
 */
export async function entryInfo(path: string, owners: OwnerNames): Promise<EntryInfoInit> {
  const l = await lstat(path, { bigint: true });
  let st: BigIntStats = l;
  let symlinkTarget: string | undefined;
  if (l.isSymbolicLink()) {
    symlinkTarget = await readlink(path).catch(() => undefined);
    st = await stat(path, { bigint: true }).catch(() => l);
  }
  const mode = Number(st.mode);
  const type = st.isDirectory() ? filesystemPb.FileType.DIRECTORY : filesystemPb.FileType.FILE;
  const uid = Number(st.uid);
  const gid = Number(st.gid);
  return {
    name: path === "/" ? "/" : basename(path),
    type,
    path,
    size: st.size,
    mode: mode & 0o7777,
    permissions: permissionString(Number(l.mode)),
    owner: owners.users.get(uid) ?? String(uid),
    group: owners.groups.get(gid) ?? String(gid),
    modifiedTime: { seconds: st.mtimeNs / 1_000_000_000n, nanos: Number(st.mtimeNs % 1_000_000_000n) },
    symlinkTarget,
  };
}
