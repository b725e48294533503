import { Code, ConnectError } from "@connectrpc/connect";

/** Maps a Node fs error on `path` to a Connect error with a message that names the path. */
export function fsError(err: unknown, path: string): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = err as NodeJS.ErrnoException;
  switch (e?.code) {
    case "ENOENT":
      return new ConnectError(`path '${path}' does not exist`, Code.NotFound);
    case "EEXIST":
    case "ENOTEMPTY":
      return new ConnectError(`path '${path}' already exists`, Code.AlreadyExists);
    case "EACCES":
    case "EPERM":
      return new ConnectError(`permission denied on '${path}'`, Code.PermissionDenied);
    case "ENOTDIR":
      return new ConnectError(`a component of '${path}' is not a directory`, Code.InvalidArgument);
    case "EISDIR":
      return new ConnectError(`path '${path}' is a directory`, Code.InvalidArgument);
    case "ENOSPC":
    case "EDQUOT":
      return new ConnectError(`not enough disk space to write '${path}'`, Code.ResourceExhausted);
    default:
      return new ConnectError(`filesystem error on '${path}': ${e?.message ?? String(err)}`, Code.Internal);
  }
}
