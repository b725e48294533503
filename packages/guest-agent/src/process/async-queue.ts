/**
 * Unbounded single-consumer queue bridging callbacks (process output, fs events)
 * to an async iterator. Iteration ends after close() once drained, or at once when
 * the signal aborts.
 */
export class AsyncQueue<T> {
  #items: T[] = [];
  #closed = false;
  #wake: (() => void) | undefined;

  /** Items waiting to be drained. */
  get size(): number {
    return this.#items.length;
  }

  push(item: T): void {
    if (this.#closed) return;
    this.#items.push(item);
    this.#notify();
  }

  close(): void {
    this.#closed = true;
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async *drain(signal?: AbortSignal): AsyncGenerator<T> {
    const onAbort = () => this.#notify();
    signal?.addEventListener("abort", onAbort);
    try {
      for (;;) {
        if (signal?.aborted) return;
        const item = this.#items.shift();
        if (item !== undefined) {
          yield item;
          continue;
        }
        if (this.#closed) return;
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }
}
