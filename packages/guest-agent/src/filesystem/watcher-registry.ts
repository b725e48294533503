import type { FsExecutor } from "./fs-executor.ts";
import type { WatchEvent, WatchHandle, WatchOptions } from "./fs-ops.ts";

/** Events a polled watcher keeps between two GetWatcherEvents calls; later ones are dropped. */
export const MAX_BUFFERED_EVENTS = 10_000;

type Polled = { handle: WatchHandle; events: WatchEvent[]; error?: Error };

/** Watchers created with CreateWatcher and drained with GetWatcherEvents. */
export class WatcherRegistry {
  #watchers = new Map<string, Polled>();

  /** Starts a watch with the executor of the requesting user; throws when it cannot start. */
  async create(executor: FsExecutor, dir: string, opts: WatchOptions): Promise<string> {
    const id = `w${crypto.randomUUID()}`;
    const entry: Polled = { events: [], handle: { close() {} } };
    entry.handle = await executor.watch(
      dir,
      opts,
      (ev) => {
        if (entry.events.length < MAX_BUFFERED_EVENTS) entry.events.push(ev);
      },
      (err) => {
        entry.error = err;
      },
    );
    this.#watchers.set(id, entry);
    return id;
  }

  /** Returns and clears buffered events; undefined for an unknown id. */
  drain(id: string): { events: WatchEvent[]; error?: Error } | undefined {
    const entry = this.#watchers.get(id);
    if (!entry) return undefined;
    const events = entry.events;
    entry.events = [];
    return { events, ...(entry.error ? { error: entry.error } : {}) };
  }

  remove(id: string): boolean {
    const entry = this.#watchers.get(id);
    if (!entry) return false;
    entry.handle.close();
    this.#watchers.delete(id);
    return true;
  }

  closeAll(): void {
    for (const id of [...this.#watchers.keys()]) this.remove(id);
  }
}
