// Warm pools: VMs already restored from a template's snapshot, reseeded and
// clocked, waiting without an identity. A create takes one (bookkeeping plus
// one control-channel message that swaps in the token and env), and the pool
// refills in the background, off the start path. Because personalization
// happens after the claim, creates that carry env vars still hit the pool.
import type { Sandbox, Shape } from "./node-runtime.ts";
import type { SandboxState } from "./state.ts";

interface Pool {
  key: string;
  shape: Shape;
  target: number;
  ready: Sandbox[];
  filling: number;
  factory: () => Promise<Sandbox>;
  lastError?: string;
}

export interface PoolStatus {
  templateKey: string;
  shape: Shape;
  target: number;
  ready: number;
  filling: number;
  lastError?: string;
}

/** Hooks for the node's metrics: claims (hit or miss) and refills. */
export interface PoolObserver {
  claimed(key: string, shape: Shape, hit: boolean): void;
  filled(key: string, shape: Shape, ms: number): void;
}

export class WarmPools {
  observer: PoolObserver | undefined;
  readonly #pools = new Map<string, Pool>();
  readonly #log: (line: string) => void;
  readonly #inFlight = new Set<Promise<unknown>>();
  #closed = false;
  /** Most pool VMs this node may hold in total (capacity bound). */
  maxTotal: number;

  /** The state a VM waits in (`warm`: restored; `standby`: QEMU waiting for its state). */
  readonly #waiting: SandboxState;

  constructor(log: (line: string) => void, maxTotal = 64, waiting: "warm" | "standby" = "warm") {
    this.#log = log;
    this.maxTotal = maxTotal;
    this.#waiting = waiting;
  }

  static id(key: string, shape: Shape): string {
    return `${key}/${shape.vcpus}x${shape.memoryMib}`;
  }

  configure(key: string, shape: Shape, target: number, factory: () => Promise<Sandbox>): void {
    const id = WarmPools.id(key, shape);
    const pool = this.#pools.get(id);
    if (pool) {
      pool.target = target;
      pool.factory = factory;
    } else this.#pools.set(id, { key, shape, target, ready: [], filling: 0, factory });
  }

  /**
   * Takes a ready VM and personalizes it; undefined when the pool is empty (the
   * caller restores or boots instead). A VM that fails personalization is
   * discarded by the caller's kill and the next one is tried.
   */
  async claim(
    key: string,
    shape: Shape,
    personalize: (sb: Sandbox) => Promise<void>,
  ): Promise<Sandbox | undefined> {
    const pool = this.#pools.get(WarmPools.id(key, shape));
    if (!pool) return undefined;
    for (;;) {
      const sb = pool.ready.shift();
      if (!sb) {
        this.observer?.claimed(key, shape, false);
        this.#refill(pool);
        return undefined;
      }
      if (sb.state !== this.#waiting) continue; // crashed while waiting
      const t0 = performance.now();
      // A standby's start reports its own timings (snapshot path).
      if (this.#waiting === "warm") sb.timings = { path: "warm", totalMs: 0, phases: {} };
      try {
        await personalize(sb);
      } catch (e) {
        this.#log(`warm sandbox ${sb.id} failed personalization: ${(e as Error).message}`);
        sb.discard?.();
        continue;
      }
      if (this.#waiting === "warm" && sb.timings)
        sb.timings.phases["claim"] = Math.round((performance.now() - t0) * 10) / 10;
      this.observer?.claimed(key, shape, true);
      this.#refill(pool);
      return sb;
    }
  }

  /** Fills a pool to its target and resolves when it is full (or a start failed). */
  async fill(key: string, shape: Shape): Promise<void> {
    const pool = this.#pools.get(WarmPools.id(key, shape));
    if (!pool) return;
    while (!this.#closed && pool.ready.length + pool.filling < pool.target && this.#total() < this.maxTotal) {
      pool.filling++;
      try {
        // Not `pool.ready.push(await ...)`: that reads pool.ready before the
        // await, and remove() replaces the array meanwhile (any kill), which
        // stranded the new VM outside the pool, running until close().
        const t0 = performance.now();
        const starting = pool.factory();
        this.#inFlight.add(starting);
        const sb = await starting.finally(() => this.#inFlight.delete(starting));
        // INVARIANT: a VM that finished starting after close() is not kept.
        if (this.#closed) {
          sb.discard?.();
          return;
        }
        pool.ready.push(sb);
        pool.lastError = undefined;
        this.observer?.filled(key, shape, performance.now() - t0);
      } catch (e) {
        pool.lastError = (e as Error).message;
        this.#log(`warm pool ${WarmPools.id(key, shape)}: ${pool.lastError}`);
        return;
      } finally {
        pool.filling--;
      }
    }
  }

  /** Sandboxes waiting in pools (they belong to the runtime; killed at close). */
  remove(sb: Sandbox): void {
    for (const p of this.#pools.values()) p.ready = p.ready.filter((s) => s !== sb);
  }

  /** Pool VMs ready or starting (they hold host capacity). */
  members(): Sandbox[] {
    return [...this.#pools.values()].flatMap((p) => p.ready);
  }

  status(): PoolStatus[] {
    return [...this.#pools.values()].map((p) => ({
      templateKey: p.key,
      shape: p.shape,
      target: p.target,
      ready: p.ready.length,
      filling: p.filling,
      ...(p.lastError ? { lastError: p.lastError } : {}),
    }));
  }

  /** Stops refilling (claims still work on what is ready). */
  stop(): void {
    for (const p of this.#pools.values()) p.target = 0;
  }

  /** Stops for good (node shutdown) and waits for starts in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    this.stop();
    await Promise.allSettled([...this.#inFlight]);
  }

  #total(): number {
    let n = 0;
    for (const p of this.#pools.values()) n += p.ready.length + p.filling;
    return n;
  }

  #refill(pool: Pool): void {
    // Off the start path: the claim has returned by the time this runs.
    setImmediate(() => void this.fill(pool.key, pool.shape));
  }
}
