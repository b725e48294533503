// startServer: the whole control plane in one process (what `firebreak up`
// runs): the store (SQLite in the state dir, or a shared PostgreSQL), the
// local node, the sandbox service (reaper, usage sampler, recovery), the HTTP
// API and the envd proxy. Several processes may share one PostgreSQL
// database (replicas): any of them serves any request, and the background
// passes run on the holder of their lease (store/leader.ts).

import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { initTracing, loadConfig } from "@firebreak/node-agent";
import { getRequestListener } from "@hono/node-server";
import pino, { type Logger } from "pino";
import { createApp } from "./api/app.ts";
import { DEFAULT_TENANT_ID, ensureDefaultTenant, mintAdminKey } from "./auth/admin-recovery.ts";
import { hashApiKey, newId } from "./auth/keys.ts";
import { type ControlPlaneConfig, defaultConfig } from "./config.ts";
import { envdProxy } from "./e2b/envd-proxy.ts";
import { ingressConnectWaitMs, ingressDomain } from "./ingress/config.ts";
import { INGRESS_SECRET_FILE, IngressTokens } from "./ingress/ingress-token.ts";
import { createIngress } from "./ingress/proxy.ts";
import { FileArtifactStore } from "./jobs/artifact-store.ts";
import { defaultJobsConfig, type JobsConfig } from "./jobs/config.ts";
import { JobService } from "./jobs/job-service.ts";
import { createListener } from "./listener.ts";
import { Cluster } from "./node/cluster.ts";
import { type NodeDirectory, StaticNodes } from "./node/directory.ts";
import { type InProcessNode, startInProcessNode } from "./node/in-process-node.ts";
import type { NodeClient } from "./node/node-client.ts";
import { PlatformTokens } from "./sandboxes/platform.ts";
import { SandboxService } from "./sandboxes/service.ts";
import { PoolAutoscaler } from "./scheduler/pool-autoscaler.ts";
import { LeaseKeeper } from "./store/leader.ts";
import { type DatabaseChoice, resolveDatabase } from "./store/open.ts";
import { PgStore } from "./store/pg-store.ts";
import { SqliteStore } from "./store/sqlite-store.ts";
import type { Store } from "./store/store.ts";
import { ControlPlaneMetrics } from "./telemetry/metrics.ts";
import { TraceReader } from "./telemetry/traces.ts";
import { WebhookWorker } from "./webhooks/worker.ts";

export interface ServerOptions {
  /** host:port. @default "127.0.0.1:3000" (port 0 picks a free one) */
  listen?: string;
  /** @default FIREBREAK_STATE_DIR or /var/lib/firebreak */
  stateDir?: string;
  /**
   * The control plane's database: `postgres://...` or `postgresql://...` (a
   * shared PostgreSQL: several control planes may use it at once), or
   * `sqlite:<path>` or a path (a SQLite file: one process at a time, a lock
   * file beside it). @default FIREBREAK_DATABASE_URL, else <stateDir>/control-plane.db
   */
  database?: string;
  /** A SQLite file (the same as `database` with a path). */
  dbFile?: string;
  /**
   * Test only: a node to use instead of opening this host's node runtime
   * (the caller keeps it: close() does not close it; no warm pools).
   */
  node?: NodeClient;
  /** An admin key to ensure exists (fb_<64 hex> or e2b_<64 hex>). @default FIREBREAK_ADMIN_KEY */
  adminKey?: string;
  /** Overrides of the control plane settings (timeouts, sampling, limits). */
  config?: Partial<ControlPlaneConfig>;
  /** Overrides of the job settings (jobs/config.ts). */
  jobsConfig?: Partial<JobsConfig>;
  /** @default FIREBREAK_LOG_LEVEL or "info" (JSON lines on stderr) */
  logLevel?: string;
  /**
   * Warm pools to keep: template name -> VMs restored ahead of time (refilled
   * after every claim). Filled in the background after the server listens.
   * @default none (`firebreak up` asks for base:2)
   */
  warmPools?: Record<string, number>;
  /** Where the first-start admin key is printed. @default stdout */
  printAdminKey?: (key: string) => void;
  /**
   * Run this machine's node in this process (one-machine mode). false: a
   * control plane only, placing sandboxes on nodes that joined it.
   * @default true
   */
  localNode?: boolean;
}

export interface RunningServer {
  url: string;
  /** The admin key created on this start (only on the very first start without FIREBREAK_ADMIN_KEY). */
  createdAdminKey?: string;
  store: Store;
  close(): Promise<void>;
}

export { DEFAULT_TENANT_ID };

/** Where nodes reach the API for the platform grant (IPv4 only: the node's proxy dials it), or undefined. */
export function platformEndpoint(
  configured: string | undefined,
  host: string,
  port: number,
): { address: string; port: number } | undefined {
  if (configured) {
    const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(configured.trim());
    if (!m || net.isIPv4(m[1]!) === false || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      throw new Error(
        `FIREBREAK_PLATFORM_ADDRESS wants an IPv4 host:port, like 10.0.0.5:3000; got ${configured}`,
      );
    }
    return { address: m[1]!, port: Number(m[2]) };
  }
  if (host === "0.0.0.0") return { address: "127.0.0.1", port };
  return net.isIPv4(host) ? { address: host, port } : undefined;
}

function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d{1,5})$/.exec(listen);
  if (!m) throw new Error(`--listen wants host:port or port, got ${listen}`);
  return { host: m[1] || "127.0.0.1", port: Number(m[2]) };
}

/** Creates the default tenant and makes sure an admin key exists; returns a newly created key. */
async function bootstrap(
  store: Store,
  config: ControlPlaneConfig,
  adminKey: string | undefined,
  log: Logger,
) {
  await ensureDefaultTenant(store, config.defaultLimits);
  if (adminKey !== undefined) {
    const hash = hashApiKey(adminKey);
    if (!hash)
      throw new Error("FIREBREAK_ADMIN_KEY must look like fb_<64 hex digits> (openssl rand -hex 32)");
    const existing = await store.findKeyByHash(hash);
    if (existing?.revokedAt) {
      log.warn(
        { keyId: existing.id },
        "FIREBREAK_ADMIN_KEY was revoked and stays revoked; mint a new admin key on this host with `firebreak admin-key` and use that",
      );
    }
    if (!existing) {
      await store.createKey({
        id: newId("key"),
        tenantId: DEFAULT_TENANT_ID,
        name: "admin (FIREBREAK_ADMIN_KEY)",
        hash,
        scopes: ["admin"],
        createdAt: new Date().toISOString(),
        revokedAt: null,
        createdByKey: null,
      });
      log.info("admin key from FIREBREAK_ADMIN_KEY registered");
    }
    return undefined;
  }
  if ((await store.listKeys(null)).length > 0) return undefined;
  return (await mintAdminKey(store, "admin")).key;
}

/**
 * INVARIANT: one control plane per database. A second one would end the first
 * one's sandboxes as lost (its node does not know them). The lock file holds
 * the owner's pid; a dead owner's lock is taken over.
 */
const heldLocks = new Set<string>();

/** Background passes that run once across replicas, each on the holder of its lease. */
const LEASES = ["reaper", "sampler", "nodes", "templates", "pools", "jobs"] as const;

/**
 * Runs fn while holding `name` (waiting for it): replicas starting together
 * bootstrap one at a time. A holder that dies mid-way blocks the others for
 * the ttl at most.
 */
async function underLease<T>(store: Store, name: string, holder: string, fn: () => Promise<T>): Promise<T> {
  while (!(await store.tryLease(name, holder, 30_000)).held) await new Promise((r) => setTimeout(r, 100));
  try {
    return await fn();
  } finally {
    await store.releaseLease(name, holder);
  }
}

async function openStore(
  db: DatabaseChoice,
  log: Logger,
): Promise<{ store: Store; release: () => void; shared: boolean }> {
  if (db.kind === "postgres") {
    // No lock file: replicas share the database; leases decide who runs what.
    const store = await PgStore.open(db.url, {
      onIdleError: (e) =>
        log.warn({ err: e.message }, "PostgreSQL connection lost; reconnecting on next use"),
    });
    return { store, release: () => {}, shared: true };
  }
  const release = lockDb(db.file);
  try {
    return { store: new SqliteStore(db.file), release, shared: false };
  } catch (e) {
    release();
    throw e;
  }
}

function lockDb(dbFile: string): () => void {
  const lock = `${dbFile}.lock`;
  if (heldLocks.has(lock)) throw new Error(`another control plane in this process is using ${dbFile}`);
  fs.mkdirSync(path.dirname(lock), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: "wx", mode: 0o600 });
      heldLocks.add(lock);
      return () => {
        heldLocks.delete(lock);
        try {
          if (fs.readFileSync(lock, "utf8") === String(process.pid)) fs.rmSync(lock);
        } catch {
          // already gone
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const pid = Number(fs.readFileSync(lock, "utf8"));
      if (pid && pid !== process.pid && isAlive(pid)) {
        throw new Error(
          `another control plane (pid ${pid}) is using ${dbFile}; stop it first, or give this one its own state dir`,
        );
      }
      fs.rmSync(lock, { force: true });
    }
  }
  throw new Error(`could not lock ${dbFile}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export async function startServer(opts: ServerOptions = {}): Promise<RunningServer> {
  const env = process.env;
  const { host, port } = parseListen(opts.listen ?? "127.0.0.1:3000");
  platformEndpoint(env["FIREBREAK_PLATFORM_ADDRESS"], host, port); // a bad setting fails before anything starts
  const nodeConfig = loadConfig({ ...env, ...(opts.stateDir ? { FIREBREAK_STATE_DIR: opts.stateDir } : {}) });
  const config: ControlPlaneConfig = { ...defaultConfig(env), ...opts.config };
  const log = pino(
    { level: opts.logLevel ?? env["FIREBREAK_LOG_LEVEL"] ?? "info", base: { service: "firebreak" } },
    pino.destination({ dest: 2, sync: true }),
  );

  const db = resolveDatabase(
    opts.database ?? opts.dbFile ?? env["FIREBREAK_DATABASE_URL"],
    nodeConfig.stateDir,
  );
  const opened = await openStore(db, log);
  const { store, release: releaseLock } = opened;
  // With a shared store, the reaper and sampler run on their lease's holder only.
  const leases = opened.shared
    ? new LeaseKeeper({
        store,
        names: LEASES,
        ttlMs: config.leaseTtlMs,
        onChange: (name, held) => log.info({ lease: name, held }, held ? "lease acquired" : "lease lost"),
        onError: (name, e) => log.warn({ lease: name, err: (e as Error).message }, "lease renewal failed"),
      })
    : undefined;
  let node: InProcessNode | undefined;
  let nodes: NodeDirectory | undefined;
  try {
    // Ingress tokens are derived from a secret beside the SQLite database, or
    // in the state dir with PostgreSQL (ingress-token.ts): replicas must share it.
    const ingressTokens = IngressTokens.open(
      path.join(db.kind === "sqlite" ? path.dirname(db.file) : nodeConfig.stateDir, INGRESS_SECRET_FILE),
    );
    const adminKey = opts.adminKey ?? env["FIREBREAK_ADMIN_KEY"];
    const createdAdminKey = leases
      ? await underLease(store, "bootstrap", leases.holder, () => bootstrap(store, config, adminKey, log))
      : await bootstrap(store, config, adminKey, log);
    if (opts.node) {
      // Test only: a given node, outside the registry.
      nodes = new StaticNodes([opts.node]);
    } else {
      // The registry in the store: nodes that joined (firebreak node --join),
      // and this machine's own node unless told otherwise: the node daemon in
      // this process, reached over its unix socket through the node API, as
      // a node elsewhere would be.
      const cluster = new Cluster(store, log, {
        leaseMs: config.nodeLeaseMs,
        reportIntervalMs: Math.min(2_000, config.nodeLeaseMs / 3),
      });
      nodes = cluster;
      if (opts.localNode !== false) {
        node = await startInProcessNode(nodeConfig, (line) => log.info({ component: "node" }, line));
        await cluster.addLocal(node.client, {
          id: node.daemon.identity.nodeId,
          address: node.client.address,
          secret: node.daemon.identity.secret,
          joinedAt: new Date().toISOString(),
        });
      }
      await cluster.sync();
    }
    await nodes.poll();
    nodes.start();
    const sandboxes = new SandboxService(store, nodes, config, log);
    await leases?.start();
    // Recovery ends what the database has as live but its node lost. With
    // replicas, only a replica that holds the reaper lease at its start runs
    // it (never one starting beside a live holder).
    if (!leases || leases.isHolder("reaper")) {
      const recovered = await sandboxes.recover();
      if (recovered.ended.length || recovered.adopted.length)
        log.info(recovered, "recovered sandboxes after restart");
    }
    sandboxes.start(leases ? { runsBackgroundWork: (pass) => leases.isHolder(pass) } : {});
    // Pool targets from demand, on one replica (the "pools" lease holder).
    let poolTimer: NodeJS.Timeout | undefined;
    if (config.poolDemand) {
      const autoscaler = new PoolAutoscaler({
        store,
        nodes,
        log,
        capacity: {
          vcpuOvercommit: config.vcpuOvercommit,
          memoryOvercommit: config.memoryOvercommit,
          reservedMemoryMib: 0,
        },
      });
      let running = false;
      poolTimer = setInterval(() => {
        if (running || (leases && !leases.isHolder("pools"))) return;
        running = true;
        autoscaler
          .tick()
          .catch((e: Error) => log.warn({ err: e.message }, "pool targets pass failed"))
          .finally(() => {
            running = false;
          });
      }, config.poolDemandIntervalMs);
      poolTimer.unref();
    }
    // Jobs: artifacts under the state dir; the dispatcher on the `jobs` lease
    // holder, after recovery (sandboxes lost in a restart are ended first).
    const artifacts = new FileArtifactStore(path.join(nodeConfig.stateDir, "artifacts"));
    artifacts.sweep();
    const jobs = new JobService({
      store,
      sandboxes,
      artifacts,
      config: { ...defaultJobsConfig(env), ...opts.jobsConfig },
      controlPlane: config,
      log: log.child({ component: "jobs" }),
    });
    jobs.start(leases ? { isLeader: () => leases.isHolder("jobs") } : {});

    const metrics = new ControlPlaneMetrics(store, nodes);
    sandboxes.observe(metrics.observer());
    const traces = new TraceReader(initTracing(), nodes, store);
    const app = createApp({
      store,
      node: sandboxes.nodes,
      sandboxes,
      config,
      log,
      ingressTokens,
      metrics,
      traces,
      jobs,
    });
    // Webhook deliveries: every replica runs a worker; the store's per-delivery
    // claim keeps two from sending the same delivery at once.
    const webhooks = new WebhookWorker({
      store,
      config: config.webhooks,
      log,
      onAttempt: (outcome) => metrics.webhookDeliveries.inc({ outcome }),
    });
    webhooks.start();
    const api = getRequestListener(app.fetch);
    // Ingress (src/ingress): `<port>-<id>.<domain>` and `/ingress/<id>/<port>/`
    // go to a port inside the sandbox, before the envd proxy and the API
    // (listener.ts routes them).
    const ingress = createIngress({
      store,
      sandboxes,
      log,
      domain: ingressDomain(env),
      tokens: ingressTokens,
      connectWaitMs: ingressConnectWaitMs(env),
    });
    const server = createListener({
      ingress,
      envd: envdProxy(store, sandboxes, log, ingressTokens),
      api,
      log,
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address();
    const boundPort = typeof addr === "object" && addr ? addr.port : port;
    // The platform grant (sandboxes/platform.ts): where nodes reach this API
    // for a sandbox's calls from inside. FIREBREAK_PLATFORM_ADDRESS (IPv4
    // host:port) when nodes are elsewhere; else the address listened on.
    sandboxes.setPlatform(
      new PlatformTokens(ingressTokens),
      platformEndpoint(env["FIREBREAK_PLATFORM_ADDRESS"], host, boundPort),
    );
    const url = `http://${host.includes(":") ? `[${host}]` : host}:${boundPort}`;
    const localClient = opts.node ?? node?.client;
    log.info(
      {
        url,
        accelerator: localClient?.info().accelerator ?? "none (no local node)",
        database: db.kind,
        holder: leases?.holder,
        nodes: nodes.ids(),
      },
      "control plane listening",
    );
    for (const [template, size] of Object.entries(opts.warmPools ?? {})) {
      if (size > 0 && localClient) {
        void localClient
          .setPool(template, size)
          .then(() => log.info({ template, size }, "warm pool filled"))
          .catch((e: Error) => log.warn({ template, err: e.message }, "warm pool not filled"));
      }
    }
    if (createdAdminKey) {
      (
        opts.printAdminKey ??
        ((k) => process.stdout.write(`Admin API key (shown once, store it now): ${k}\n`))
      )(createdAdminKey);
    }
    const localNode = node;
    const directory = nodes;
    let closing: Promise<void> | undefined;
    return {
      url,
      ...(createdAdminKey ? { createdAdminKey } : {}),
      store,
      close() {
        closing ??= (async () => {
          await new Promise<void>((r) => {
            server.close(() => r());
            server.closeAllConnections();
          });
          if (poolTimer) clearInterval(poolTimer);
          await webhooks.close();
          // Running job tasks end as interrupted (they run again at the next start).
          await jobs.close();
          await leases?.stop();
          // Only this process's own node's sandboxes end with it (a test's
          // given node counts as its own); joined nodes keep theirs.
          await sandboxes.close({
            endOn: opts.node ? [opts.node.id] : localNode ? [localNode.daemon.identity.nodeId] : [],
          });
          await directory.close();
          await localNode?.close();
          await store.close();
          releaseLock();
          log.info("control plane stopped");
        })();
        return closing;
      },
    };
  } catch (e) {
    await leases?.stop().catch(() => {});
    await nodes?.close().catch(() => {});
    await node?.close().catch(() => {});
    await store.close();
    releaseLock();
    throw e;
  }
}
