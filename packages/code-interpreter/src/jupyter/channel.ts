// A small bounded channel: the producer awaits push() while the consumer is
// behind, so a slow reader slows the socket loop instead of growing memory.

export class Channel<T> implements AsyncIterable<T> {
  readonly #items: T[] = [];
  readonly #capacity: number;
  #closed = false;
  #wakeReader: (() => void) | undefined;
  #wakeWriters: (() => void)[] = [];

  constructor(capacity = 64) {
    this.#capacity = capacity;
  }

  /** Resolves once the item is queued and the queue is below capacity again. */
  async push(item: T): Promise<void> {
    if (this.#closed) return;
    this.#items.push(item);
    this.#wakeReader?.();
    while (this.#items.length >= this.#capacity && !this.#closed) {
      await new Promise<void>((r) => this.#wakeWriters.push(r));
    }
  }

  /** No more items; the reader drains what is queued, then ends. */
  close(): void {
    this.#closed = true;
    this.#wakeReader?.();
    for (const w of this.#wakeWriters.splice(0)) w();
  }

  get closed(): boolean {
    return this.#closed;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.#items.shift();
      if (item !== undefined) {
        if (this.#items.length < this.#capacity) for (const w of this.#wakeWriters.splice(0)) w();
        yield item;
        continue;
      }
      if (this.#closed) return;
      await new Promise<void>((r) => {
        this.#wakeReader = r;
      });
      this.#wakeReader = undefined;
    }
  }
}
