// startServer: the whole control plane in one process (what `firebreak up`
// runs): SQLite store in the state dir, the local node, the sandbox service
// (reaper, usage sampler, recovery), the HTTP API and the envd proxy.
import fs from "node:fs";
import path from "node:path";
import { loadConfig } from "@firebreak/node-agent";
import { getRequestListener } from "@hono/node-server";
import pino, { type Logger } from "pino";
import { createApp } from "./api/app.ts";
import { DEFAULT_TENANT_ID, ensureDefaultTenant, mintAdminKey } from "./auth/admin-recovery.ts";
import { hashApiKey, newId } from "./auth/keys.ts";
import { type ControlPlaneConfig, defaultConfig } from "./config.ts";
import { envdProxy } from "./e2b/envd-proxy.ts";
import { ingressDomain } from "./ingress/config.ts";
import { INGRESS_SECRET_FILE, IngressTokens } from "./ingress/ingress-token.ts";
import { createIngress } from "./ingress/proxy.ts";
import { createListener } from "./listener.ts";
import { type NodeDirectory, StaticNodes } from "./node/directory.ts";
import { type InProcessNode, startInProcessNode } from "./node/in-process-node.ts";
import { SandboxService } from "./sandboxes/service.ts";
import { SqliteStore } from "./store/sqlite-store.ts";
import type { Store } from "./store/store.ts";

export interface ServerOptions {
  /** host:port. @default "127.0.0.1:3000" (port 0 picks a free one) */
  listen?: string;
  /** @default FIREBREAK_STATE_DIR or /var/lib/firebreak */
  stateDir?: string;
  /**
   * The control plane's database (one process at a time: a lock file beside it).
   * @default <stateDir>/control-plane.db
   */
  dbFile?: string;
  /** An admin key to ensure exists (fb_<64 hex> or e2b_<64 hex>). @default FIREBREAK_ADMIN_KEY */
  adminKey?: string;
  /** Overrides of the control plane settings (timeouts, sampling, limits). */
  config?: Partial<ControlPlaneConfig>;
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
}

export interface RunningServer {
  url: string;
  /** The admin key created on this start (only on the very first start without FIREBREAK_ADMIN_KEY). */
  createdAdminKey?: string;
  store: Store;
  close(): Promise<void>;
}

export { DEFAULT_TENANT_ID };

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
  const nodeConfig = loadConfig({ ...env, ...(opts.stateDir ? { FIREBREAK_STATE_DIR: opts.stateDir } : {}) });
  const config: ControlPlaneConfig = { ...defaultConfig(env), ...opts.config };
  const log = pino(
    { level: opts.logLevel ?? env["FIREBREAK_LOG_LEVEL"] ?? "info", base: { service: "firebreak" } },
    pino.destination({ dest: 2, sync: true }),
  );

  const dbFile = path.resolve(opts.dbFile ?? path.join(nodeConfig.stateDir, "control-plane.db"));
  const releaseLock = lockDb(dbFile);
  let store: SqliteStore;
  try {
    store = new SqliteStore(dbFile);
  } catch (e) {
    releaseLock();
    throw e;
  }
  let node: InProcessNode | undefined;
  let nodes: NodeDirectory | undefined;
  try {
    // Ingress tokens are derived from a secret beside the database (ingress-token.ts).
    const ingressTokens = IngressTokens.open(path.join(path.dirname(dbFile), INGRESS_SECRET_FILE));
    const createdAdminKey = await bootstrap(store, config, opts.adminKey ?? env["FIREBREAK_ADMIN_KEY"], log);
    // This machine's node: the node daemon in this process, reached over its
    // unix socket through the node API, as a node elsewhere would be.
    node = await startInProcessNode(nodeConfig, (line) => log.info({ component: "node" }, line));
    nodes = new StaticNodes([node.client]);
    await nodes.poll();
    nodes.start();
    const sandboxes = new SandboxService(store, nodes, config, log);
    const recovered = await sandboxes.recover();
    if (recovered.ended.length || recovered.adopted.length)
      log.info(recovered, "recovered sandboxes after restart");
    sandboxes.start();

    const app = createApp({ store, node: sandboxes.nodes, sandboxes, config, log, ingressTokens });
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
    const url = `http://${host.includes(":") ? `[${host}]` : host}:${boundPort}`;
    log.info({ url, accelerator: node.client.info().accelerator }, "control plane listening");
    const localClient = node.client;
    for (const [template, size] of Object.entries(opts.warmPools ?? {})) {
      if (size > 0) {
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
          await sandboxes.close();
          await directory.close();
          await localNode.close();
          store.close();
          releaseLock();
          log.info("control plane stopped");
        })();
        return closing;
      },
    };
  } catch (e) {
    await nodes?.close().catch(() => {});
    await node?.close().catch(() => {});
    store.close();
    releaseLock();
    throw e;
  }
}
