import { type FSWatcher, watch } from "node:fs";
import { access } from "node:fs/promises";
import { join } from "node:path";
import { filesystemPb } from "@firebreak/protocol";

export type FsEvent = { name: string; type: filesystemPb.EventType };

/**
 * Watches a directory with fs.watch (inotify). inotify cannot tell a rename from a
 * create/remove pair through fs.watch, so "rename" notifications are reported as
 * CREATE when the path exists afterwards and REMOVE when it does not; "change" is WRITE.
 */
export class DirWatcher {
  #watcher: FSWatcher;
  #closed = false;

  constructor(
    dir: string,
    recursive: boolean,
    onEvent: (ev: FsEvent) => void,
    onError: (err: Error) => void,
  ) {
    // Events are classified asynchronously (rename needs a stat) but delivered in order.
    let chain: Promise<void> = Promise.resolve();
    this.#watcher = watch(dir, { recursive, persistent: false }, (kind, filename) => {
      if (this.#closed || filename === null) return;
      const name = filename.toString();
      chain = chain.then(async () => {
        let type: filesystemPb.EventType = filesystemPb.EventType.WRITE;
        if (kind === "rename") {
          type = await access(join(dir, name)).then(
            () => filesystemPb.EventType.CREATE,
            () => filesystemPb.EventType.REMOVE,
          );
        }
        if (!this.#closed) onEvent({ name, type });
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

const MAX_BUFFERED_EVENTS = 10_000;

type Polled = { watcher: DirWatcher; events: FsEvent[]; error?: Error };

/** Watchers created with CreateWatcher and drained with GetWatcherEvents. */
export class WatcherRegistry {
  #watchers = new Map<string, Polled>();

  create(dir: string, recursive: boolean): string {
    const id = crypto.randomUUID();
    const entry: Polled = {
      events: [],
      watcher: new DirWatcher(
        dir,
        recursive,
        (ev) => {
          if (entry.events.length < MAX_BUFFERED_EVENTS) entry.events.push(ev);
        },
        (err) => {
          entry.error = err;
        },
      ),
    };
    this.#watchers.set(id, entry);
    return id;
  }

  /** Returns and clears buffered events; undefined for an unknown id. */
  drain(id: string): { events: FsEvent[]; error?: Error } | undefined {
    const entry = this.#watchers.get(id);
    if (!entry) return undefined;
    const events = entry.events;
    entry.events = [];
    return { events, error: entry.error };
  }

  remove(id: string): boolean {
    const entry = this.#watchers.get(id);
    if (!entry) return false;
    entry.watcher.close();
    this.#watchers.delete(id);
    return true;
  }

  closeAll(): void {
    for (const id of [...this.#watchers.keys()]) this.remove(id);
  }
}
