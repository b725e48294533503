const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;
const S_IFLNK = 0o120000;
const S_IFBLK = 0o060000;
const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;

/**
 * The permission string E2B's envd reports: Go's `os.FileMode.String()` of the
 * entry's lstat mode. One letter per set type bit, in Go's order
 * (d directory, L symlink, D device, p pipe, S socket, u setuid, g setgid,
 * c character device, t sticky), or `-` when none is set; then `rwxrwxrwx`.
 * So a directory is `drwxr-xr-x`, /tmp is `dtrwxrwxrwx`, /dev/null `Dcrw-rw-rw-`,
 * a setuid binary `urwxr-xr-x`.
 */
export function goModeString(stMode: number): string {
  const fmt = stMode & S_IFMT;
  let s = "";
  if (fmt === S_IFDIR) s += "d";
  if (fmt === S_IFLNK) s += "L";
  if (fmt === S_IFBLK || fmt === S_IFCHR) s += "D";
  if (fmt === S_IFIFO) s += "p";
  if (fmt === S_IFSOCK) s += "S";
  if (stMode & 0o4000) s += "u";
  if (stMode & 0o2000) s += "g";
  if (fmt === S_IFCHR) s += "c";
  if (stMode & 0o1000) s += "t";
  if (s === "") s = "-";
  const rwx = "rwxrwxrwx";
  for (let i = 0; i < 9; i++) s += stMode & (1 << (8 - i)) ? rwx[i] : "-";
  return s;
}
