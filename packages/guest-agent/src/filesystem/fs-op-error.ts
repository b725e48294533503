/**
 * Codes of file operation failures: Node errno names (ENOENT, EACCES, ...) or one
 * of these conditions the operations detect themselves.
 */
export const FsCode = {
  NOT_DIR: "FB_NOT_DIR",
  IS_DIR: "FB_IS_DIR",
  EXISTS_NOT_DIR: "FB_EXISTS_NOT_DIR",
  NOT_REGULAR: "FB_NOT_REGULAR",
  NETWORK_MOUNT: "FB_NETWORK_MOUNT",
  TOO_MANY_ENTRIES: "FB_TOO_MANY_ENTRIES",
  DUPLICATE_PATH: "FB_DUPLICATE_PATH",
  WORKER: "FB_WORKER",
} as const;

/**
 * A failed file operation: the code and the path it concerns. Thrown by the
 * operations whether they ran in the agent or in a user's file worker (the
 * worker sends code, path and message over its pipe), and mapped to Connect
 * codes and HTTP statuses in one place each (`fs-errors.ts`, `http/fs-status.ts`).
 */
export class FsOpError extends Error {
  readonly code: string;
  readonly path: string;
  constructor(code: string, path: string, message?: string) {
    super(message ?? `${code} on '${path}'`);
    this.code = code;
    this.path = path;
  }
}

/** Normalises anything thrown by a file operation on `path`. */
export function toFsOpError(err: unknown, path: string): FsOpError {
  if (err instanceof FsOpError) return err;
  const e = err as NodeJS.ErrnoException | undefined;
  return new FsOpError(typeof e?.code === "string" ? e.code : "EIO", path, e?.message ?? String(err));
}
