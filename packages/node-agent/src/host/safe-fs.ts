// File writes of the root node process that never follow a link. Every
// directory the node writes in is root's, so nothing should be planted there;
// these make a planted link an error instead of a write through it.
import { constants as O } from "node:fs";
import fs from "node:fs/promises";

/** Opens `file` for writing, creating or truncating it, refusing a symlink (ELOOP). */
export function openNoFollow(file: string, mode = 0o600): Promise<fs.FileHandle> {
  return fs.open(file, O.O_WRONLY | O.O_CREAT | O.O_TRUNC | O.O_NOFOLLOW, mode);
}

/** Opens `file` for reading, refusing a symlink (ELOOP). */
export function openReadNoFollow(file: string): Promise<fs.FileHandle> {
  return fs.open(file, O.O_RDONLY | O.O_NOFOLLOW);
}

/**
 * Writes `data` to a fresh temp file beside `file` (O_EXCL: never an existing
 * path, link or not) and renames it over `file`.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.rm(tmp, { force: true });
  const fh = await fs.open(tmp, O.O_WRONLY | O.O_CREAT | O.O_EXCL | O.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(data);
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
}
