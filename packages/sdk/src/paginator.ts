// Cursor paging: `for await (const page of paginator)` yields one page at a time.
import type { HttpClient, Query } from "./http.ts";

export class Paginator<T> implements AsyncIterable<T[]> {
  readonly #fetchPage: (cursor: string | undefined) => Promise<{ items: T[]; nextCursor: string | null }>;
  #cursor: string | undefined;
  #hasNext = true;

  /** @internal */
  constructor(fetchPage: (cursor: string | undefined) => Promise<{ items: T[]; nextCursor: string | null }>) {
    this.#fetchPage = fetchPage;
  }

  /** Whether another page may follow. */
  get hasNext(): boolean {
    return this.#hasNext;
  }

  /** The next page (empty once there are none). */
  async nextItems(): Promise<T[]> {
    if (!this.#hasNext) return [];
    const { items, nextCursor } = await this.#fetchPage(this.#cursor);
    this.#cursor = nextCursor ?? undefined;
    this.#hasNext = Boolean(nextCursor);
    return items;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T[]> {
    while (this.#hasNext) yield await this.nextItems();
  }

  /** Every remaining item, across pages. */
  async all(): Promise<T[]> {
    const out: T[] = [];
    for await (const page of this) out.push(...page);
    return out;
  }
}

/** A paginator over `GET path` answering `{ [field]: T[], nextCursor }`. */
export function cursorPaginator<T>(
  http: HttpClient,
  path: string,
  field: string,
  query: Query,
): Paginator<T> {
  return new Paginator<T>(async (cursor) => {
    const r = await http.json<Record<string, unknown>>("GET", path, { query: { ...query, cursor } });
    return {
      items: (r[field] as T[] | undefined) ?? [],
      nextCursor: typeof r["nextCursor"] === "string" && r["nextCursor"] ? r["nextCursor"] : null,
    };
  });
}
