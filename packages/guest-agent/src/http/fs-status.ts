/** HTTP status for a Node fs error, used by the /files routes. */
export function fsErrorStatus(err: unknown): number {
  switch ((err as NodeJS.ErrnoException)?.code) {
    case "ENOENT":
      return 404;
    case "EACCES":
    case "EPERM":
      return 403;
    case "ENOTDIR":
    case "EISDIR":
      return 400;
    case "ENOSPC":
    case "EDQUOT":
      return 507;
    default:
      return 500;
  }
}
