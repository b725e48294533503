// Applies egress policies to sandbox namespaces and runs the host-side parts:
// the platform resolver (one listener per sandbox on the host end of its veth)
// and the credential-injecting HTTP proxies of bound private services. One
// manager per node process. See README.md.
import { readFileSync } from "node:fs";
import fs from "node:fs/promises";
import { isIPv4 } from "node:net";
import * as dnsPacket from "dns-packet";
import { loadConfig } from "../config.ts";
import { CommandError, run } from "../host/exec.ts";
import { formatIpv4, parseIpv4 } from "../network/address-pool.ts";
import { NFT_TABLE, TRAFFIC_CLASSES, type TrafficClass } from "../network/nft-ruleset.ts";
import { cidrBounds, cidrContains, hostIpv4Addresses, specialRangeOf, wallCidrs } from "../network/walls.ts";
import {
  type DnsAnswer,
  type DnsLimits,
  type DnsQuery,
  queryUpstream,
  RCODE,
  reply,
  SandboxDnsListener,
  type Upstream,
} from "./dns-server.ts";
import { EgressError } from "./errors.ts";
import { type ConnectionGate, InjectProxy, type InjectProxyLimits } from "./inject-proxy.ts";
import {
  allowCovers,
  DEFAULT_POLICY,
  domainAllowed,
  type EgressPolicy,
  type NormalizedPolicy,
  normalizePolicy,
} from "./policy.ts";
import {
  type DnsElement,
  type PeerRoute,
  renderDnsElements,
  renderPolicy,
  type ServiceRoute,
} from "./policy-nft.ts";
import { type PrivateService, ServiceRegistry } from "./service-registry.ts";

/** The parts of a sandbox network the manager needs (a `SandboxNetwork` has them all). */
export interface EgressTarget {
  sandboxId: string;
  netnsPath: string;
  hostVeth: string;
  hostAddress: string;
  sandboxAddress: string;
}

export interface AttachOptions {
  /**
   * The policy (validated here). Its `grantedBy` says who made it: "admin"
   * may open private ranges. @default the manager's default policy (deny all)
   */
  policy?: unknown;
  /** The sandbox's tenant, for service bindings restricted to tenants. */
  tenant?: string;
  /** Where the platform grant (`policy.platform`) leads, with the sandbox's own credential. */
  platform?: PlatformTarget;
}

/**
 * The Firebreak API as a sandbox with the platform grant reaches it: the
 * control plane's address as this node reaches it, and the sandbox's own
 * platform credential. SECURITY: the credential never enters the guest: the
 * node's proxy adds it (PLATFORM_HEADER) to every request the guest sends to
 * PLATFORM_SERVICE_NAME, replacing any the guest sent.
 */
export interface PlatformTarget {
  address: string;
  port: number;
  token: string;
}

/** The name a sandbox with the platform grant reaches the API at (port: the control plane's). */
export const PLATFORM_SERVICE_NAME = "platform.firebreak.internal";
/** The header the node's proxy sets to the sandbox's platform credential. */
export const PLATFORM_HEADER = "x-firebreak-platform-token";

export interface EgressManagerOptions {
  /** Where the service registry file lives (`services.json`); omitted: in memory. */
  stateDir?: string;
  /**
   * Resolver that answers allowed names.
   * @default FIREBREAK_DNS_UPSTREAM ("host" or "host:port"), else the first nameserver of /etc/resolv.conf
   */
  upstream?: Upstream;
  /** Policy of sandboxes created without one. @default deny all */
  defaultPolicy?: unknown;
  /** The host pool (a wall for every sandbox). @default FIREBREAK_HOST_POOL, else 10.211.0.0/16 */
  hostPool?: string;
  /** Per-sandbox resolver limits. @default DEFAULT_DNS_LIMITS */
  dnsLimits?: Partial<DnsLimits>;
  /**
   * Addresses one sandbox's resolver keeps in its nft set at once. SECURITY: a
   * zone that answers every name with a new address cannot grow the set
   * (kernel memory) without bound; beyond this, new addresses are left out of
   * answers until old ones expire. @default 4096
   */
  maxResolvedAddresses?: number;
  /** Per-sandbox injection proxy limits. @default DEFAULT_INJECT_LIMITS */
  injectLimits?: Partial<InjectProxyLimits>;
  log?: (line: string) => void;
}

export interface TrafficCounters {
  bytes: number;
  packets: number;
}
/** Bytes and packets per class, `tx` from the guest and `rx` to it. */
export interface SandboxTraffic {
  tx: Record<TrafficClass, TrafficCounters>;
  rx: Record<TrafficClass, TrafficCounters>;
  /** Packets refused: by a hard wall, by the policy (default deny), spoofed. */
  denied: { wall: number; policy: number; spoofed: number };
  /**
   * Resolver: queries answered; refused (names the policy does not allow:
   * NXDOMAIN); filtered (addresses dropped from answers: private, walled or
   * malformed); limited (dropped by the rate limit or REFUSED while too many
   * were pending, and TCP connections over the limit); malformed (not a query).
   */
  dns: { queries: number; refused: number; filtered: number; limited: number; malformed: number };
}

interface Binding {
  service: PrivateService;
  serviceAddress: string;
  proxy?: InjectProxy;
}

interface State {
  target: EgressTarget;
  tenant: string | undefined;
  platform: PlatformTarget | undefined;
  policy: NormalizedPolicy;
  bindings: Map<string, Binding>;
  nextServiceIndex: number;
  dns: SandboxDnsListener;
  /** Resolver answers in the nft set: address -> names it answered for, expiry (ms epoch). */
  dnsAddrs: Map<string, { names: Set<string>; expiresAt: number }>;
  dnsRefused: number;
  /** Addresses dropped from upstream answers. */
  dnsFiltered: number;
  /** Addresses not admitted because the sandbox holds the most it may. */
  dnsLimited: number;
  /** Resolver answers waiting for the next nft run (one run admits them all). */
  admitQueue: AdmitRequest[];
  admitScheduled: boolean;
  /** Connections to this sandbox's injection proxies (one budget for all of them). */
  proxyGate: ConnectionGate;
  queue: Promise<unknown>;
  /** Sandbox networks this sandbox is a member of (tenant-scoped keys). */
  netKeys: Set<string>;
  /** Peer sandbox id -> the address this sandbox reaches it at. */
  peerAddrs: Map<string, string>;
  nextPeerIndex: number;
}

interface AdmitRequest {
  name: string;
  elements: DnsElement[];
  done: (err?: Error) => void;
}

/** Per-sandbox service addresses: 169.254.16.1 upwards (a wall: reachable only through their DNAT). */
const SERVICE_BASE = parseIpv4("169.254.16.0");
const SERVICE_MAX = 4_000;
/** Per-sandbox addresses of peers on sandbox networks: 169.254.32.1 upwards. */
const PEER_BASE = parseIpv4("169.254.32.0");
const PEER_MAX = 4_000;
/** Peers are named `<sandboxId>.<network>.fb`. */
export const PEER_DOMAIN = "fb";
const netKey = (tenant: string | undefined, network: string) => `${tenant ?? ""}/${network}`;
/** TTL the resolver gives private service names. */
const SERVICE_TTL_S = 30;
const MAX_ANSWER_TTL_S = 86_400;
/** Question types asked upstream for allowed names; any other type gets an empty answer (NODATA). */
const UPSTREAM_TYPES = new Set(["A", "CNAME", "TXT", "MX", "SRV", "CAA"]);
/** CNAME records followed from the question's name. */
const MAX_CNAME_CHAIN = 8;
/** A host name as the resolver accepts it: LDH labels (and "_" for SRV), 253 characters at most. */
const HOST_NAME_RE = /^(?=.{1,253}$)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*$/;
/** How often the host's own addresses are read again for the resolver's answer filter. */
const HOST_ADDRESSES_TTL_MS = 5_000;

/** A query name in the resolver's form (lowercase, no trailing dot), or undefined if it is not a host name. */
function hostName(raw: string): string | undefined {
  const n = raw.toLowerCase().replace(/\.$/, "");
  return HOST_NAME_RE.test(n) ? n : undefined;
}

/** An upstream record as dns-packet decodes it (any type); only these fields are read. */
interface UpstreamRecord {
  type: string;
  name: string;
  class?: string;
  ttl?: number;
  data?: unknown;
}

const clampTtl = (ttl: number | undefined) => Math.min(Math.max(Math.floor(ttl ?? 0), 0), MAX_ANSWER_TTL_S);

/** A copy of an upstream record with only the fields the guest gets, or undefined if it cannot be encoded. */
function cleanRecord(a: UpstreamRecord, ttl: number): UpstreamRecord | undefined {
  const rec: UpstreamRecord = { type: a.type, name: a.name, class: "IN", ttl, data: a.data };
  try {
    dnsPacket.encode({
      type: "response",
      id: 0,
      flags: 0,
      questions: [],
      answers: [rec as dnsPacket.Answer],
    });
    return rec;
  } catch {
    return undefined;
  }
}

/** The resolver for allowed names: an IPv4 address (replies are matched by address and port). */
export function defaultUpstream(): Upstream {
  const env = process.env["FIREBREAK_DNS_UPSTREAM"];
  if (env) {
    const [host, port] = env.split(":");
    const p = port ? Number(port) : 53;
    if (host && isIPv4(host) && Number.isInteger(p) && p >= 1 && p <= 65_535) return { host, port: p };
  }
  try {
    const m = /^nameserver\s+(\d+\.\d+\.\d+\.\d+)/m.exec(readFileSync("/etc/resolv.conf", "utf8"));
    if (m) return { host: m[1]!, port: 53 };
  } catch {}
  return { host: "127.0.0.1", port: 53 };
}

export class EgressManager {
  readonly registry: ServiceRegistry;
  upstream: Upstream;
  readonly #defaultPolicy: NormalizedPolicy;
  readonly #log: (line: string) => void;
  readonly #states = new Map<string, State>();
  /** Policies of sandboxes whose network is gone for a while (paused), to re-attach with. */
  readonly #parked = new Map<
    string,
    { policy: NormalizedPolicy; tenant: string | undefined; platform: PlatformTarget | undefined }
  >();
  /** Sandbox networks: tenant/name -> member sandbox ids. */
  readonly #networks = new Map<string, Set<string>>();
  readonly #hostPool: string;
  readonly #dnsLimits: Partial<DnsLimits>;
  readonly #injectLimits: Partial<InjectProxyLimits>;
  readonly #maxResolved: number;
  /** The walls as address ranges (static, host pool, host addresses), re-read every few seconds. */
  #walls: { ranges: [number, number][]; hostAddresses: string[]; at: number } | undefined;

  private constructor(registry: ServiceRegistry, opts: EgressManagerOptions) {
    this.registry = registry;
    this.upstream = opts.upstream ?? defaultUpstream();
    this.#defaultPolicy =
      opts.defaultPolicy === undefined ? DEFAULT_POLICY : normalizePolicy(opts.defaultPolicy);
    this.#hostPool = opts.hostPool ?? loadConfig().hostPool;
    this.#dnsLimits = opts.dnsLimits ?? {};
    this.#injectLimits = opts.injectLimits ?? {};
    this.#maxResolved = opts.maxResolvedAddresses ?? 4_096;
    this.#log = opts.log ?? (() => {});
  }

  static async open(opts: EgressManagerOptions = {}): Promise<EgressManager> {
    return new EgressManager(await ServiceRegistry.open(opts.stateDir), opts);
  }

  /**
   * Validates a policy for a tenant without applying it: the policy's own
   * shape, and that every named service exists and may be bound by `tenant`.
   * Throws EgressError.
   */
  validate(policy: unknown, tenant?: string): NormalizedPolicy {
    const p = policy === undefined ? this.#defaultPolicy : normalizePolicy(policy);
    // SECURITY: the host's own addresses are special too (and walled for
    // everyone); normalizePolicy checked the static list.
    if (p.grantedBy !== "admin") {
      for (const [i, r] of p.allow.entries()) {
        const host = this.#wallState().hostAddresses.find((a) => cidrContains(r.cidr, a));
        if (host) {
          throw new EgressError(
            "EGRESS_CIDR_RESERVED",
            `egress policy: allow.${i}.cidr ${r.cidr} holds ${host}, an address of this host (a hard wall no policy opens); a tenant's policy reaches public addresses only`,
          );
        }
      }
    }
    for (const name of p.services) this.registry.resolveBinding(name, tenant);
    return p;
  }

  #wallState(): { ranges: [number, number][]; hostAddresses: string[] } {
    const now = Date.now();
    if (!this.#walls || now - this.#walls.at > HOST_ADDRESSES_TTL_MS) {
      const hostAddresses = hostIpv4Addresses();
      this.#walls = {
        ranges: wallCidrs(this.#hostPool, hostAddresses).map(cidrBounds),
        hostAddresses,
        at: now,
      };
    }
    return this.#walls;
  }

  /** Where an upstream answer's address may go: the internet, an admin's private rule, or nowhere. */
  #classify(addr: number, policy: NormalizedPolicy): "public" | "admin-allowed" | "drop" {
    // SECURITY: walls (host pool, host addresses, metadata, loopback, ...) never
    // enter an answer; private and special ranges only where an admin's rule
    // opens them (and then the rule, not the resolver, decides the ports).
    if (this.#wallState().ranges.some(([a, b]) => addr >= a && addr <= b)) return "drop";
    if (!specialRangeOf(addr)) return "public";
    return policy.grantedBy === "admin" && allowCovers(policy, addr) ? "admin-allowed" : "drop";
  }

  /** The policy in force for a sandbox (undefined: not attached). */
  policyOf(sandboxId: string): NormalizedPolicy | undefined {
    return this.#states.get(sandboxId)?.policy;
  }

  attached(): string[] {
    return [...this.#states.keys()];
  }

  /** What to attach a copy of this sandbox with (fork children inherit the policy and tenant). */
  optionsOf(
    sandboxId: string,
  ): { policy: EgressPolicy; tenant?: string; platform?: PlatformTarget } | undefined {
    const st = this.#states.get(sandboxId) ?? this.#parked.get(sandboxId);
    if (!st) return undefined;
    return {
      policy: st.policy,
      ...(st.tenant !== undefined ? { tenant: st.tenant } : {}),
      ...(st.platform ? { platform: st.platform } : {}),
    };
  }

  /**
   * Starts the sandbox's resolver, binds its services and loads its policy.
   * Preconditions: the sandbox network exists (its base ruleset loaded).
   * On failure nothing of this call remains.
   */
  async attach(target: EgressTarget, opts: AttachOptions = {}): Promise<void> {
    if (this.#states.has(target.sandboxId)) {
      throw new EgressError(
        "EGRESS_APPLY_FAILED",
        `sandbox ${target.sandboxId} already has an egress policy`,
      );
    }
    const parked = this.#parked.get(target.sandboxId);
    this.#parked.delete(target.sandboxId);
    const tenant = opts.tenant ?? parked?.tenant;
    const policy = this.validate(opts.policy ?? parked?.policy, tenant);
    const st: State = {
      target,
      tenant,
      platform: checkPlatform(opts.platform ?? parked?.platform),
      policy: DEFAULT_POLICY,
      bindings: new Map(),
      nextServiceIndex: 0,
      dns: new SandboxDnsListener(target.hostAddress, target.sandboxAddress, (q) => this.#answer(st, q), {
        limits: this.#dnsLimits,
        log: (l) => this.#log(`sandbox ${target.sandboxId}: ${l}`),
      }),
      dnsAddrs: new Map(),
      dnsRefused: 0,
      dnsFiltered: 0,
      dnsLimited: 0,
      admitQueue: [],
      admitScheduled: false,
      proxyGate: { open: 0 },
      queue: Promise.resolve(),
      netKeys: new Set(),
      peerAddrs: new Map(),
      nextPeerIndex: 0,
    };
    this.#states.set(target.sandboxId, st);
    try {
      // Forwarding on the host end only (not host-wide): the guest's allowed
      // egress may leave through the host; walls and policy live in the namespace.
      await fs.writeFile(`/proc/sys/net/ipv4/conf/${target.hostVeth}/forwarding`, "1");
      await st.dns.start();
      await this.#apply(st, policy);
    } catch (e) {
      await this.detach(target.sandboxId);
      if (e instanceof EgressError) throw e;
      throw new EgressError(
        "EGRESS_APPLY_FAILED",
        `egress setup for sandbox ${target.sandboxId} failed: ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  /**
   * Replaces the policy of a running sandbox. In force when this resolves
   * (one nft transaction, a few ms): new connections and every further packet
   * of existing guest connections are judged by the new policy.
   */
  async update(
    sandboxId: string,
    policy: unknown,
    opts: { tenant?: string; platform?: PlatformTarget } = {},
  ): Promise<NormalizedPolicy> {
    const st = this.#states.get(sandboxId);
    if (!st)
      throw new EgressError("EGRESS_SANDBOX_UNKNOWN", `sandbox ${sandboxId} has no network on this node`);
    const tenant = opts.tenant ?? st.tenant;
    const p = this.validate(policy, tenant);
    if (opts.platform) st.platform = checkPlatform(opts.platform);
    await this.#apply(st, p);
    st.tenant = tenant;
    return p;
  }

  /**
   * Stops the resolver and proxies of a sandbox. Its nft state dies with its
   * namespace. Idempotent. `keepPolicy`: the next attach of this sandbox id
   * without a policy gets this one back (pause/resume).
   */
  async detach(sandboxId: string, opts: { keepPolicy?: boolean } = {}): Promise<void> {
    const st = this.#states.get(sandboxId);
    if (!opts.keepPolicy) this.#parked.delete(sandboxId);
    if (!st) return;
    this.#states.delete(sandboxId);
    if (opts.keepPolicy)
      this.#parked.set(sandboxId, { policy: st.policy, tenant: st.tenant, platform: st.platform });
    await st.queue.catch(() => {});
    const affected = this.#leaveNetworks(st);
    await this.#refresh(affected);
    await st.dns.close();
    await Promise.all([...st.bindings.values()].map((b) => b.proxy?.close()));
    st.bindings.clear();
    st.dnsAddrs.clear();
  }

  async close(): Promise<void> {
    await Promise.all([...this.#states.keys()].map((id) => this.detach(id)));
    this.#parked.clear();
  }

  /** Bytes in and out per destination class, from the namespace's named counters. */
  async traffic(sandboxId: string): Promise<SandboxTraffic> {
    const st = this.#states.get(sandboxId);
    if (!st)
      throw new EgressError("EGRESS_SANDBOX_UNKNOWN", `sandbox ${sandboxId} has no network on this node`);
    const res = await run("nsenter", [
      `--net=${st.target.netnsPath}`,
      "nft",
      "-j",
      "list",
      "counters",
      "table",
      "inet",
      NFT_TABLE,
    ]);
    const counters = new Map<string, TrafficCounters>();
    for (const e of (
      JSON.parse(res.stdout) as { nftables: { counter?: { name: string } & TrafficCounters }[] }
    ).nftables) {
      if (e.counter) counters.set(e.counter.name, { bytes: e.counter.bytes, packets: e.counter.packets });
    }
    const get = (n: string) => counters.get(n) ?? { bytes: 0, packets: 0 };
    const tx = {} as Record<TrafficClass, TrafficCounters>;
    const rx = {} as Record<TrafficClass, TrafficCounters>;
    for (const c of TRAFFIC_CLASSES) {
      tx[c] = get(`tx_${c}`);
      rx[c] = get(`rx_${c}`);
    }
    return {
      tx,
      rx,
      denied: {
        wall: get("wall_denied").packets,
        policy: get("egress_denied").packets,
        spoofed: get("spoof_dropped").packets,
      },
      dns: {
        queries: st.dns.stats.queries,
        refused: st.dnsRefused,
        filtered: st.dnsFiltered,
        limited: st.dns.stats.limited + st.dns.stats.tcpRejected + st.dnsLimited,
        malformed: st.dns.stats.malformed,
      },
    };
  }

  /** Runs nft work of one sandbox in order (updates and resolver answers never interleave). */
  #serial<T>(st: State, fn: () => Promise<T>): Promise<T> {
    const next = st.queue.then(fn, fn);
    st.queue = next.catch(() => {});
    return next;
  }

  async #nft(st: State, text: string): Promise<void> {
    try {
      await run("nsenter", [`--net=${st.target.netnsPath}`, "nft", "-f", "-"], {
        input: text,
        timeoutMs: 10_000,
      });
    } catch (e) {
      throw new EgressError(
        "EGRESS_APPLY_FAILED",
        `loading the egress policy of sandbox ${st.target.sandboxId} failed: ${e instanceof CommandError ? e.result.stderr.trim() : (e as Error).message}`,
        { cause: e },
      );
    }
  }

  /** Removes a sandbox from its networks; returns the members that must drop it. */
  #leaveNetworks(st: State): Set<string> {
    const affected = new Set<string>();
    for (const key of st.netKeys) {
      const members = this.#networks.get(key);
      members?.delete(st.target.sandboxId);
      for (const m of members ?? []) affected.add(m);
      if (members && members.size === 0) this.#networks.delete(key);
    }
    st.netKeys = new Set();
    return affected;
  }

  /** Re-renders the policy of other sandboxes whose peer list changed. */
  async #refresh(ids: Iterable<string>): Promise<void> {
    await Promise.all(
      [...ids].map(async (id) => {
        const other = this.#states.get(id);
        if (other)
          await this.#apply(other, other.policy, false).catch((e) =>
            this.#log(`refreshing peers of ${id}: ${(e as Error).message}`),
          );
      }),
    );
  }

  async #apply(st: State, policy: NormalizedPolicy, refreshPeers = true): Promise<void> {
    const before = new Set<string>();
    for (const key of st.netKeys) for (const m of this.#networks.get(key) ?? []) before.add(m);
    await this.#serial(st, () => this.#applyLocked(st, policy));
    if (!refreshPeers) return;
    const after = new Set<string>();
    for (const key of st.netKeys) for (const m of this.#networks.get(key) ?? []) after.add(m);
    const changed = new Set([...before, ...after]);
    changed.delete(st.target.sandboxId);
    await this.#refresh(changed);
  }

  /** Preconditions: runs inside st's serial queue. */
  #applyLocked(st: State, policy: NormalizedPolicy): Promise<void> {
    return (async () => {
      // Bindings: keep the address (and proxy) of every service still bound.
      const old = st.bindings;
      const next = new Map<string, Binding>();
      const made: InjectProxy[] = [];
      try {
        for (const name of policy.services) {
          const service = this.registry.resolveBinding(name, st.tenant);
          const prev = old.get(name);
          if (prev && sameService(prev.service, service)) {
            next.set(name, prev);
            continue;
          }
          const serviceAddress = prev?.serviceAddress ?? this.#newServiceAddress(st);
          const b: Binding = { service, serviceAddress };
          if (service.protocol === "http" && service.inject) {
            b.proxy = new InjectProxy(st.target.hostAddress, st.target.sandboxAddress, service, {
              gate: st.proxyGate,
              limits: this.#injectLimits,
            });
            made.push(b.proxy);
            await b.proxy.start();
          }
          next.set(name, b);
        }
        // The platform grant: the API behind a proxy that adds the sandbox's credential.
        if (policy.platform && st.platform) {
          const service: PrivateService = {
            name: PLATFORM_SERVICE_NAME,
            address: st.platform.address,
            port: st.platform.port,
            protocol: "http",
            inject: { header: PLATFORM_HEADER, value: st.platform.token },
          };
          const prev = old.get(PLATFORM_SERVICE_NAME);
          if (prev && sameService(prev.service, service)) next.set(PLATFORM_SERVICE_NAME, prev);
          else {
            const b: Binding = {
              service,
              serviceAddress: prev?.serviceAddress ?? this.#newServiceAddress(st),
            };
            b.proxy = new InjectProxy(st.target.hostAddress, st.target.sandboxAddress, service, {
              gate: st.proxyGate,
              limits: this.#injectLimits,
            });
            made.push(b.proxy);
            await b.proxy.start();
            next.set(PLATFORM_SERVICE_NAME, b);
          }
        }
        const routes: ServiceRoute[] = [...next.values()].map((b) => ({
          serviceAddress: b.serviceAddress,
          port: b.service.port,
          targetAddress: b.proxy ? st.target.hostAddress : b.service.address,
          targetPort: b.proxy ? b.proxy.port : b.service.port,
        }));
        // Resolver answers stay in the set while a name that produced them is still allowed.
        const now = Date.now();
        const keep: DnsElement[] = [];
        for (const [address, e] of st.dnsAddrs) {
          const names = [...e.names].filter((n) => domainAllowed(policy.allowDomains, n));
          const left = Math.floor((e.expiresAt - now) / 1000);
          if (names.length && left >= 1) {
            e.names = new Set(names);
            keep.push({ address, timeoutS: left });
          } else st.dnsAddrs.delete(address);
        }
        // Peers: the other members of every network this policy joins (same tenant).
        const keys = new Set(policy.networks.map((n) => netKey(st.tenant, n)));
        const peerIds = new Set<string>();
        for (const key of keys) {
          for (const m of this.#networks.get(key) ?? []) if (m !== st.target.sandboxId) peerIds.add(m);
        }
        const peers: PeerRoute[] = [];
        for (const id of peerIds) {
          const other = this.#states.get(id);
          if (!other) continue;
          let addr = st.peerAddrs.get(id);
          if (!addr) {
            if (st.nextPeerIndex >= PEER_MAX)
              throw new EgressError("EGRESS_APPLY_FAILED", "too many peers over this sandbox's life");
            addr = formatIpv4(PEER_BASE + 1 + st.nextPeerIndex++);
            st.peerAddrs.set(id, addr);
          }
          peers.push({ peerAddress: addr, targetAddress: other.target.sandboxAddress });
        }
        if (this.#states.get(st.target.sandboxId) !== st) return;
        await this.#nft(st, renderPolicy(policy, routes, keep, peers));
        // Membership changes only once the rules are in.
        for (const key of st.netKeys) {
          if (keys.has(key)) continue;
          const members = this.#networks.get(key);
          members?.delete(st.target.sandboxId);
          if (members && members.size === 0) this.#networks.delete(key);
        }
        for (const key of keys) {
          const members = this.#networks.get(key) ?? new Set<string>();
          this.#networks.set(key, members);
          members.add(st.target.sandboxId);
        }
        st.netKeys = keys;
      } catch (e) {
        await Promise.all(made.map((p) => p.close()));
        throw e;
      }
      for (const [name, b] of old) if (next.get(name) !== b) await b.proxy?.close();
      st.bindings = next;
      st.policy = policy;
    })();
  }

  /** `<sandboxId>.<network>.fb` -> the address `st` reaches that peer at, if it is one. */
  #peerFor(st: State, name: string): string | undefined {
    const parts = name.split(".");
    if (parts.length !== 3 || parts[2] !== PEER_DOMAIN) return undefined;
    const [id, network] = parts as [string, string, string];
    const key = netKey(st.tenant, network);
    if (!st.netKeys.has(key) || !this.#networks.get(key)?.has(id)) return undefined;
    return st.peerAddrs.get(id);
  }

  #newServiceAddress(st: State): string {
    if (st.nextServiceIndex >= SERVICE_MAX) {
      throw new EgressError("EGRESS_APPLY_FAILED", "too many service bindings over this sandbox's life");
    }
    return formatIpv4(SERVICE_BASE + 1 + st.nextServiceIndex++);
  }

  /**
   * The resolver's decision for one guest query (the listener has checked it
   * is one IN question). Throws only for an upstream failure (SERVFAIL).
   */
  async #answer(st: State, q: DnsQuery): Promise<DnsAnswer> {
    const question = q.questions![0]!;
    const name = hostName(question.name);
    if (name === undefined) {
      st.dnsRefused++;
      return reply(q, RCODE.NXDOMAIN);
    }
    const binding = st.bindings.get(name);
    if (binding) {
      if (question.type !== "A") return reply(q, RCODE.NOERROR);
      return reply(q, RCODE.NOERROR, [
        { type: "A", name: question.name, ttl: SERVICE_TTL_S, class: "IN", data: binding.serviceAddress },
      ]);
    }
    const peer = this.#peerFor(st, name);
    if (peer) {
      if (question.type !== "A") return reply(q, RCODE.NOERROR);
      return reply(q, RCODE.NOERROR, [{ type: "A", name: question.name, ttl: 5, class: "IN", data: peer }]);
    }
    // `internet: true` is the public internet by name too: every name is asked
    // upstream, and only public answers reach the guest (#classify below).
    if (!st.policy.internet && !domainAllowed(st.policy.allowDomains, name)) {
      st.dnsRefused++;
      return reply(q, RCODE.NXDOMAIN);
    }
    // IPv6 is off in every sandbox: an empty answer makes clients use IPv4 at once.
    // Other types than the few that name hosts or carry text are not asked upstream.
    if (question.type === "AAAA" || !UPSTREAM_TYPES.has(question.type)) return reply(q, RCODE.NOERROR);
    const policy = st.policy;
    const up = await queryUpstream(this.upstream, { type: question.type, name, class: "IN" });
    const upRcode = (up.flags ?? 0) & 0xf;
    if (upRcode !== RCODE.NOERROR) {
      return reply(q, upRcode === RCODE.NXDOMAIN ? RCODE.NXDOMAIN : RCODE.SERVFAIL);
    }

    // Only records on the CNAME chain from the question's name, of its type,
    // copied field by field; anything else the upstream sent is dropped.
    const answers: UpstreamRecord[] = [];
    const chain = new Set([name]);
    const records = ((up.answers ?? []) as UpstreamRecord[]).filter(
      (a) => a.class === "IN" || a.class === undefined,
    );
    let current = name;
    for (let i = 0; i < MAX_CNAME_CHAIN && question.type !== "CNAME"; i++) {
      const c = records.find((a) => a.type === "CNAME" && hostName(a.name) === current);
      const target = c && typeof c.data === "string" ? hostName(c.data) : undefined;
      if (!c || !target || chain.has(target)) break;
      const rec = cleanRecord(c, clampTtl(c.ttl));
      if (!rec) break;
      answers.push(rec);
      chain.add(target);
      current = target;
    }
    const elements: (DnsElement & { rec: UpstreamRecord })[] = [];
    let aRecords: UpstreamRecord[] = [];
    let filtered = 0;
    for (const a of records) {
      const owner = hostName(a.name);
      if (a.type !== question.type || owner === undefined || !chain.has(owner)) continue;
      if (a.type !== "A") {
        const rec = cleanRecord(a, clampTtl(a.ttl));
        if (rec) answers.push(rec);
        continue;
      }
      let addr: number;
      try {
        addr = parseIpv4(String(a.data));
      } catch {
        filtered++;
        continue;
      }
      const where = this.#classify(addr, policy);
      if (where === "drop") {
        filtered++;
        continue;
      }
      const rec = cleanRecord(a, where === "public" ? Math.max(clampTtl(a.ttl), 1) : clampTtl(a.ttl));
      if (!rec) {
        filtered++;
        continue;
      }
      rec.data = formatIpv4(addr);
      aRecords.push(rec);
      if (where === "public") elements.push({ address: formatIpv4(addr), timeoutS: rec.ttl!, rec });
    }
    st.dnsFiltered += filtered;
    if (question.type === "A" && aRecords.length === 0 && filtered > 0) {
      // Nothing usable is left: answer like an upstream with no address for the name (NODATA).
      return reply(q, RCODE.NOERROR);
    }
    // With the internet allowed, public addresses pass the firewall without a set entry.
    if (elements.length && !policy.internet) {
      await this.#admit(st, name, elements);
      for (const e of elements) e.rec.ttl = e.timeoutS;
      // A policy update that landed meanwhile took the name away: those addresses are not admitted.
      const gone = new Set(elements.filter((e) => e.timeoutS === 0).map((e) => e.rec));
      if (gone.size) {
        aRecords = aRecords.filter((r) => !gone.has(r));
        if (!aRecords.length) return reply(q, RCODE.NOERROR);
      }
    }
    return reply(q, RCODE.NOERROR, [...answers, ...aRecords] as dnsPacket.Answer[]);
  }

  /**
   * Puts public resolver answers into the sandbox's `dns_allowed` set before
   * the guest gets them, with the answer's TTL. An address already there for
   * at least half its new TTL is not refreshed; the guest then gets the time
   * left instead, so it never caches an address past its entry. Answers that
   * arrive while an nft run is in flight are admitted together by the next one
   * (at most one run per sandbox at a time, however fast the guest asks).
   * Elements' `timeoutS` is lowered in place to what the guest may use; 0: not
   * admitted (the name is no longer allowed, or the sandbox holds the most
   * addresses it may).
   */
  #admit(st: State, name: string, elements: DnsElement[]): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      st.admitQueue.push({ name, elements, done: (e) => (e ? reject(e) : resolve()) });
      if (st.admitScheduled) return;
      st.admitScheduled = true;
      // #flushAdmits settles every request itself and never rejects.
      void this.#serial(st, () => this.#flushAdmits(st));
    });
  }

  /** Preconditions: runs inside st's serial queue. Never rejects. */
  async #flushAdmits(st: State): Promise<void> {
    st.admitScheduled = false;
    const batch = st.admitQueue.splice(0);
    const now = Date.now();
    for (const [address, e] of st.dnsAddrs) if (e.expiresAt <= now) st.dnsAddrs.delete(address);
    /** Addresses to (re)load: address -> seconds, and the names they answer for. */
    const load = new Map<string, { timeoutS: number; names: Set<string> }>();
    const current = this.#states.get(st.target.sandboxId) === st;
    for (const req of batch) {
      // SECURITY: the addresses enter the set only while the name is still allowed
      // (a policy update may have landed while the upstream answered).
      const allowed = current && domainAllowed(st.policy.allowDomains, req.name);
      for (const e of req.elements) {
        if (!allowed) {
          e.timeoutS = 0;
          continue;
        }
        const known = st.dnsAddrs.get(e.address);
        const leftS = known ? Math.floor((known.expiresAt - now) / 1000) : 0;
        if (known && leftS >= 1 && leftS * 2 >= e.timeoutS) {
          known.names.add(req.name);
          e.timeoutS = Math.min(e.timeoutS, leftS);
          continue;
        }
        const queued = load.get(e.address);
        if (!known && !queued && st.dnsAddrs.size + load.size >= this.#maxResolved) {
          st.dnsLimited++;
          e.timeoutS = 0;
          continue;
        }
        if (queued) {
          queued.timeoutS = Math.max(queued.timeoutS, e.timeoutS);
          queued.names.add(req.name);
        } else load.set(e.address, { timeoutS: e.timeoutS, names: new Set([req.name]) });
      }
    }
    let err: Error | undefined;
    if (load.size) {
      try {
        const els = [...load].map(([address, l]) => ({ address, timeoutS: l.timeoutS }));
        const refresh = els
          .map((e) => `delete element inet ${NFT_TABLE} dns_allowed { ${e.address} }`)
          .join("\n");
        // add (exists afterwards) + delete + add: refreshes the timeout of a known address.
        await this.#nft(
          st,
          `${renderDnsElements(els.map((e) => ({ ...e, timeoutS: 1 })))}${refresh}\n${renderDnsElements(els)}`,
        );
        for (const [address, l] of load) {
          const prev = st.dnsAddrs.get(address);
          st.dnsAddrs.set(address, {
            names: new Set([...(prev?.names ?? []), ...l.names]),
            expiresAt: now + l.timeoutS * 1000,
          });
        }
      } catch (e) {
        err = e as Error;
      }
    }
    for (const req of batch) req.done(err);
  }
}

function sameService(a: PrivateService, b: PrivateService): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** A platform target as the node takes it (IPv4 address, port, a credential without line breaks). */
function checkPlatform(p: PlatformTarget | undefined): PlatformTarget | undefined {
  if (!p) return undefined;
  if (!isIPv4(p.address) || !Number.isInteger(p.port) || p.port < 1 || p.port > 65_535) {
    throw new EgressError(
      "EGRESS_POLICY_INVALID",
      `platform target ${p.address}:${p.port} is not an IPv4 address and port`,
    );
  }
  if (!/^[\x21-\x7e]{16,512}$/.test(p.token)) {
    throw new EgressError("EGRESS_POLICY_INVALID", "the platform credential is malformed");
  }
  return { address: p.address, port: p.port, token: p.token };
}
