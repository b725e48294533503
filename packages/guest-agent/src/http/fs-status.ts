import { FsCode, toFsOpError } from "../filesystem/fs-op-error.ts";

/** HTTP status and message for a failed file operation, used by the /files routes (envd's wording). */
export function fsFailure(err: unknown, path: string, user?: string): { status: number; message: string } {
  const e = toFsOpError(err, path);
  const p = e.path || path;
  switch (e.code) {
    case "ENOENT":
      return { status: 404, message: `path '${p}' does not exist` };
    case "EACCES":
    case "EPERM":
      return {
        status: 403,
        message: user
          ? `permission denied: user '${user}' may not access '${p}'`
          : `permission denied on '${p}'`,
      };
    case "EISDIR":
    case FsCode.IS_DIR:
      return { status: 400, message: `path '${p}' is a directory` };
    case "ENOTDIR":
      return { status: 400, message: `a component of '${p}' is not a directory` };
    case FsCode.NOT_REGULAR:
      return { status: 400, message: `path '${p}' is not a regular file (a pipe or a socket)` };
    case "ELOOP":
      return { status: 400, message: `cyclic symlink or too long a chain of symlinks at '${p}'` };
    case "ENAMETOOLONG":
      return { status: 400, message: `path '${p}' is too long` };
    case "ENOSPC":
    case "EDQUOT":
      return { status: 507, message: `not enough disk space to write '${p}'` };
    default:
      return { status: 500, message: `cannot access '${p}': ${e.message.slice(0, 500)}` };
  }
}
