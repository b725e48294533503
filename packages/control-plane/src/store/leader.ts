// Background work that must run once across control-plane replicas (the
// reaper, the usage sampler) runs on the holder of a named lease in the store.
// A LeaseKeeper tries its leases every ttl/3: it acquires a free or expired
// lease, renews its own, and knows when it stops holding one.
//
// INVARIANT: isHolder() is never true after the store may have handed the
// lease to someone else. The local deadline is counted from the moment the
// request was sent (monotonic clock) plus the ttl, which is no later than the
// expiry the store recorded (it added the ttl on receipt, by its own clock).
// A holder that stalls (GC, SIGSTOP, a slow database) past the deadline stops
// believing it holds the lease before anyone else can take it.
//
// The lease makes the work run once in the normal case; it is not what makes
// it correct. A pass that overlaps its successor's (a stalled holder waking
// up mid-pass) is still safe: every end is exactly-once in the store
// (endSandbox) and state changes are conditional on the state read.
import os from "node:os";
import { performance } from "node:perf_hooks";
import type { Store } from "./store.ts";

export interface LeaseKeeperOptions {
  store: Store;
  /** Lease names to keep (e.g. "reaper", "sampler"). */
  names: readonly string[];
  /** How long a lease lasts without renewal. Renewed every ttlMs / 3. */
  ttlMs: number;
  /** @default newHolderId() */
  holder?: string;
  /** Called when this process starts or stops holding a lease. */
  onChange?: (name: string, held: boolean) => void;
  /** Called when a try fails (the database is unreachable); the lease lapses at its deadline. */
  onError?: (name: string, e: unknown) => void;
}

/** Unique per process start: host, pid, and randomness (a restarted pid is another holder). */
export function newHolderId(): string {
  return `${os.hostname()}/${process.pid}/${Math.random().toString(36).slice(2, 10)}`;
}

export class LeaseKeeper {
  readonly holder: string;
  readonly #store: Store;
  readonly #names: readonly string[];
  readonly #ttlMs: number;
  readonly #onChange: ((name: string, held: boolean) => void) | undefined;
  readonly #onError: ((name: string, e: unknown) => void) | undefined;
  /** Monotonic deadline (performance.now()) per held lease. */
  readonly #until = new Map<string, number>();
  /** What onChange was last told. */
  readonly #told = new Map<string, boolean>();
  #timer: NodeJS.Timeout | undefined;
  #round: Promise<void> | undefined;
  #stopped = false;

  constructor(opts: LeaseKeeperOptions) {
    if (!Number.isInteger(opts.ttlMs) || opts.ttlMs < 3) {
      throw new Error(`lease ttl must be a whole number of milliseconds >= 3, got ${opts.ttlMs}`);
    }
    this.#store = opts.store;
    this.#names = opts.names;
    this.#ttlMs = opts.ttlMs;
    this.holder = opts.holder ?? newHolderId();
    this.#onChange = opts.onChange;
    this.#onError = opts.onError;
  }

  /** Tries every lease once (awaited), then keeps trying every ttl/3. */
  async start(): Promise<void> {
    await this.tick();
    if (this.#stopped) return;
    this.#timer = setInterval(() => void this.tick(), Math.max(1, Math.floor(this.#ttlMs / 3)));
    this.#timer.unref();
  }

  isHolder(name: string): boolean {
    const until = this.#until.get(name);
    return until !== undefined && performance.now() < until;
  }

  /** One round over every lease; a round still running is awaited instead of starting another. */
  tick(): Promise<void> {
    this.#round ??= this.#tryAll().finally(() => {
      this.#round = undefined;
    });
    return this.#round;
  }

  async #tryAll(): Promise<void> {
    await Promise.all(
      this.#names.map(async (name) => {
        const sentAt = performance.now();
        try {
          const l = await this.#store.tryLease(name, this.holder, this.#ttlMs);
          if (this.#stopped) return;
          if (l.held) this.#until.set(name, sentAt + this.#ttlMs);
          else this.#until.delete(name);
        } catch (e) {
          this.#onError?.(name, e); // keep the old deadline: it lapses by itself
        }
        this.#tell(name);
      }),
    );
  }

  #tell(name: string): void {
    const held = this.isHolder(name);
    if ((this.#told.get(name) ?? false) !== held) {
      this.#told.set(name, held);
      this.#onChange?.(name, held);
    }
  }

  /** Stops renewing and releases every lease held, so another replica takes over at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#round;
    this.#until.clear();
    // Every name, not only those believed held: a try in flight at stop() may have won one.
    await Promise.all(
      this.#names.map((name) =>
        this.#store.releaseLease(name, this.holder).catch((e) => this.#onError?.(name, e)),
      ),
    );
    for (const name of this.#names) this.#tell(name);
  }
}
