import { type FSWatcher, watch } from "node:fs";
import { access } from "node:fs/promises";
import { join } from "node:path";
import { EventTypeValue } from "./wire-enums.ts";

export type RawFsEvent = { name: string; type: EventTypeValue };

/**
 * Watches a directory with fs.watch (inotify) with the rights of the calling
 * process. fs.watch cannot tell a rename from a create/remove pair, nor a chmod
 * from a write: "rename" notifications are reported as CREATE when the path
 * exists afterwards and REMOVE when it does not; "change" is WRITE. Events are
 * delivered in order. Throws (EACCES, ENOENT, ...) when the watch cannot start.
 */
export class DirWatcher {
  #watcher: FSWatcher;
  #closed = false;

  constructor(
    dir: string,
    recursive: boolean,
    onEvent: (ev: RawFsEvent) => Promise<void> | void,
    onError: (err: Error) => void,
  ) {
    let chain: Promise<void> = Promise.resolve();
    this.#watcher = watch(dir, { recursive, persistent: false }, (kind, filename) => {
      if (this.#closed || filename === null) return;
      const name = filename.toString();
      chain = chain.then(async () => {
        let type: EventTypeValue = EventTypeValue.WRITE;
        if (kind === "rename") {
          type = await access(join(dir, name)).then(
            () => EventTypeValue.CREATE,
            () => EventTypeValue.REMOVE,
          );
        }
        if (!this.#closed) await onEvent({ name, type });
      });
      chain = chain.catch((err: unknown) => {
        if (!this.#closed) onError(err instanceof Error ? err : new Error(String(err)));
      });
    });
    this.#watcher.on("error", (err) => {
      if (!this.#closed) onError(err);
    });
  }

  close(): void {
    this.#closed = true;
    this.#watcher.close();
  }
}
