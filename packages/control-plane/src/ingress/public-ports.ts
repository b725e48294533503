// Which ports of a sandbox are public (served through ingress without a token).
// Stored in the sandbox's event log (`port_public` events: {port, public}), so
// the setting survives a control plane restart and every change is audited,
// without a schema change; a per-process cache answers the proxy's lookups.
// INVARIANT: one control plane per database (server.ts locks it), so this
// cache is the only writer's view and cannot go stale.
import type { Store } from "../store/store.ts";

export const PORT_PUBLIC_EVENT = "port_public";

export class PublicPorts {
  readonly #store: Store;
  readonly #cache = new Map<string, Promise<Set<number>>>();

  constructor(store: Store) {
    this.#store = store;
  }

  #load(sandboxId: string): Promise<Set<number>> {
    let ports = this.#cache.get(sandboxId);
    if (!ports) {
      ports = this.#read(sandboxId);
      this.#cache.set(sandboxId, ports);
      ports.catch(() => this.#cache.delete(sandboxId));
    }
    return ports;
  }

  async #read(sandboxId: string): Promise<Set<number>> {
    const ports = new Set<number>();
    for (const e of await this.#store.listEvents(sandboxId)) {
      if (e.type !== PORT_PUBLIC_EVENT) continue;
      const port = Number(e.detail["port"]);
      if (e.detail["public"] === true) ports.add(port);
      else ports.delete(port);
    }
    return ports;
  }

  async isPublic(sandboxId: string, port: number): Promise<boolean> {
    return (await this.#load(sandboxId)).has(port);
  }

  async list(sandboxId: string): Promise<number[]> {
    return [...(await this.#load(sandboxId))].sort((a, b) => a - b);
  }

  /** Preconditions: the caller checked that the sandbox is the caller's and live. */
  async set(sandboxId: string, port: number, isPublic: boolean, by: string): Promise<void> {
    const ports = await this.#load(sandboxId);
    await this.#store.addEvent(sandboxId, {
      at: new Date().toISOString(),
      type: PORT_PUBLIC_EVENT,
      detail: { port, public: isPublic, by },
    });
    if (isPublic) ports.add(port);
    else ports.delete(port);
  }

  /** Drops an ended sandbox's entry (its events stay in the log). */
  forget(sandboxId: string): void {
    this.#cache.delete(sandboxId);
  }
}

const byStore = new WeakMap<Store, PublicPorts>();

/** The one PublicPorts of a store (shared by the API route and the proxy). */
export function publicPortsOf(store: Store): PublicPorts {
  let p = byStore.get(store);
  if (!p) {
    p = new PublicPorts(store);
    byStore.set(store, p);
  }
  return p;
}
