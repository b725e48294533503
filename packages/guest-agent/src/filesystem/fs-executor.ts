import type { Readable } from "node:stream";
import type { EntryRecord } from "./entry-record.ts";
import * as ops from "./fs-ops.ts";
import type { Metadata } from "./xattr-metadata.ts";

/**
 * Runs file operations as one user. Two implementations: `localExecutor` (in the
 * agent's own process: root acting as root, or a non-root agent in development)
 * and the per-user file worker client (`fs-worker/worker-client.ts`).
 * SECURITY: every file operation a request makes goes through the executor of
 * the request's user; nothing else in the agent touches a path a request names.
 */
export interface FsExecutor {
  stat(path: string): Promise<EntryRecord>;
  /** Throws unless `path` is a directory the user may enter. */
  checkEnterable(path: string): Promise<void>;
  makeDir(path: string): Promise<{ created: boolean; entry?: EntryRecord }>;
  move(source: string, destination: string): Promise<EntryRecord>;
  remove(path: string): Promise<void>;
  listDir(path: string, depth: number): Promise<EntryRecord[]>;
  /** The stream is pull-based: bytes are read as the consumer asks for them. Destroy it to stop. */
  openRead(path: string): Promise<{ size: number; stream: Readable }>;
  /** Resolves with the metadata the file has afterwards. */
  writeFile(path: string, body: Readable, metadata: Metadata | undefined): Promise<Metadata | undefined>;
  watch(
    path: string,
    opts: ops.WatchOptions,
    onEvent: (ev: ops.WatchEvent) => void,
    onError: (err: Error) => void,
  ): Promise<ops.WatchHandle>;
}

export const localExecutor: FsExecutor = {
  stat: ops.statEntry,
  checkEnterable: ops.checkEnterable,
  makeDir: ops.makeDir,
  move: ops.movePath,
  remove: ops.removePath,
  listDir: ops.listDir,
  openRead: ops.openRead,
  writeFile: ops.writeFile,
  watch: ops.startWatch,
};
