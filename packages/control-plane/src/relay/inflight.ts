// Requests a proxy holds open to a sandbox, by sandbox id, so they can be
// closed the moment the sandbox stops running (killed, crashed, paused): the
// VM is gone and its network with it, so nothing would ever end them.
export interface Closable {
  destroy(): void;
  once(event: "close", fn: () => void): unknown;
}

export class InflightBySandbox {
  readonly #open = new Map<string, Set<Closable>>();

  /** Tracks `c` until it closes. */
  add(sandboxId: string, c: Closable): void {
    let set = this.#open.get(sandboxId);
    if (!set) {
      set = new Set();
      this.#open.set(sandboxId, set);
    }
    set.add(c);
    c.once("close", () => {
      set.delete(c);
      if (!set.size && this.#open.get(sandboxId) === set) this.#open.delete(sandboxId);
    });
  }

  /** Closes everything open to a sandbox; returns how many. */
  closeAll(sandboxId: string): number {
    const set = this.#open.get(sandboxId);
    if (!set) return 0;
    this.#open.delete(sandboxId);
    for (const c of set) c.destroy();
    return set.size;
  }

  count(sandboxId: string): number {
    return this.#open.get(sandboxId)?.size ?? 0;
  }
}
