// Which ports of a sandbox are public (served through ingress without a token).
// Stored in the sandbox's event log (`port_public` events: {port, public}), so
// the setting survives a control plane restart and every change is audited,
// without a schema change; a per-process cache answers the proxy's lookups.
// INVARIANT: one control plane per database (server.ts locks it), so this
// cache is the only writer's view and cannot go stale.
import type { Store } from "../store/store.ts";

export const PORT_PUBLIC_EVENT = "port_public";
/**
 * E2B semantics for a sandbox's ports, set at create by the E2B routes:
 * `{allPublic, maskRequestHost?}` (every port public unless E2B's
 * `allowPublicTraffic: false`; the Host header the app sees; refusals in E2B's
 * error shape).
 */
export const PORTS_E2B_EVENT = "ports_e2b";

export interface PortSettings {
  ports: Set<number>;
  /** Created through E2B's API (its port semantics apply). */
  e2b: boolean;
  allPublic: boolean;
  /** E2B's maskRequestHost: the Host the app sees (`${PORT}` is the port). */
  maskRequestHost: string | undefined;
  /** E2B's autoResume: a request to a paused sandbox resumes it. */
  autoResume: boolean;
}

export class PublicPorts {
  readonly #store: Store;
  readonly #cache = new Map<string, Promise<PortSettings>>();

  constructor(store: Store) {
    this.#store = store;
  }

  #load(sandboxId: string): Promise<PortSettings> {
    let ports = this.#cache.get(sandboxId);
    if (!ports) {
      ports = this.#read(sandboxId);
      this.#cache.set(sandboxId, ports);
      ports.catch(() => this.#cache.delete(sandboxId));
    }
    return ports;
  }

  async #read(sandboxId: string): Promise<PortSettings> {
    const ports = new Set<number>();
    const settings: PortSettings = {
      ports,
      e2b: false,
      allPublic: false,
      maskRequestHost: undefined,
      autoResume: false,
    };
    for (const e of await this.#store.listEvents(sandboxId)) {
      if (e.type === PORTS_E2B_EVENT) {
        settings.e2b = true;
        settings.allPublic = e.detail["allPublic"] === true;
        const mask = e.detail["maskRequestHost"];
        settings.maskRequestHost = typeof mask === "string" ? mask : undefined;
        settings.autoResume = e.detail["autoResume"] === true;
      }
      if (e.type !== PORT_PUBLIC_EVENT) continue;
      const port = Number(e.detail["port"]);
      if (e.detail["public"] === true) ports.add(port);
      else ports.delete(port);
    }
    return settings;
  }

  async isPublic(sandboxId: string, port: number): Promise<boolean> {
    const s = await this.#load(sandboxId);
    return s.allPublic || s.ports.has(port);
  }

  /** Everything the ingress needs to know about a sandbox's ports. */
  settings(sandboxId: string): Promise<PortSettings> {
    return this.#load(sandboxId);
  }

  async list(sandboxId: string): Promise<number[]> {
    return [...(await this.#load(sandboxId)).ports].sort((a, b) => a - b);
  }

  /** Sets E2B port semantics for a sandbox (at its create). */
  async setE2b(
    sandboxId: string,
    allPublic: boolean,
    maskRequestHost: string | undefined,
    autoResume = false,
  ): Promise<void> {
    const s = await this.#load(sandboxId);
    await this.#store.addEvent(sandboxId, {
      at: new Date().toISOString(),
      type: PORTS_E2B_EVENT,
      detail: { allPublic, autoResume, ...(maskRequestHost !== undefined ? { maskRequestHost } : {}) },
    });
    s.e2b = true;
    s.allPublic = allPublic;
    s.maskRequestHost = maskRequestHost;
    s.autoResume = autoResume;
  }

  /** Preconditions: the caller checked that the sandbox is the caller's and live. */
  async set(sandboxId: string, port: number, isPublic: boolean, by: string): Promise<void> {
    const { ports } = await this.#load(sandboxId);
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
