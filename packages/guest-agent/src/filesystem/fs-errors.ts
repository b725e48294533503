import { Code, ConnectError } from "@connectrpc/connect";
import { FsCode, toFsOpError } from "./fs-op-error.ts";

/**
 * Maps a failed file operation to a Connect error whose message names the path
 * (and the user, for permission errors). ENOSPC is `internal`, not
 * `resource_exhausted`: the E2B SDK reads that code as a rate limit.
 */
export function fsError(err: unknown, path: string, user?: string): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = toFsOpError(err, path);
  const p = e.path || path;
  switch (e.code) {
    case "ENOENT":
      return new ConnectError(`path '${p}' does not exist`, Code.NotFound);
    case "EEXIST":
    case "ENOTEMPTY":
      return new ConnectError(`path '${p}' already exists`, Code.AlreadyExists);
    case "EACCES":
    case "EPERM":
      return new ConnectError(
        user ? `permission denied: user '${user}' may not access '${p}'` : `permission denied on '${p}'`,
        Code.PermissionDenied,
      );
    case "ENOTDIR":
      return new ConnectError(`a component of '${p}' is not a directory`, Code.InvalidArgument);
    case "EISDIR":
    case FsCode.IS_DIR:
      return new ConnectError(`path '${p}' is a directory`, Code.InvalidArgument);
    case FsCode.NOT_DIR:
      return new ConnectError(`path '${p}' is not a directory`, Code.InvalidArgument);
    case FsCode.EXISTS_NOT_DIR:
      return new ConnectError(`path '${p}' already exists but it is not a directory`, Code.InvalidArgument);
    case FsCode.NETWORK_MOUNT:
      return new ConnectError(
        `cannot watch '${p}': it is on a network filesystem (NFS, CIFS, SMB, FUSE); pass allowNetworkMounts to watch it anyway`,
        Code.InvalidArgument,
      );
    case FsCode.TOO_MANY_ENTRIES:
      return new ConnectError(
        `${e.message}: list a narrower path or pass a smaller depth`,
        Code.InvalidArgument,
      );
    case "ELOOP":
      return new ConnectError(
        `cyclic symlink or too long a chain of symlinks at '${p}'`,
        Code.FailedPrecondition,
      );
    case "ENAMETOOLONG":
      return new ConnectError(`path '${p}' is too long`, Code.InvalidArgument);
    case "ENOSPC":
    case "EDQUOT":
      return new ConnectError(`not enough disk space to write '${p}'`, Code.Internal);
    default:
      return new ConnectError(`filesystem error on '${p}': ${e.message.slice(0, 500)}`, Code.Internal);
  }
}
