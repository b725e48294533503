// `firebreak node`: one daemon per host that owns every VM, tap, namespace,
// nftables table, cgroup, slot and file of Firebreak there, and serves the
// node API (server.ts) to control planes and local CLI commands.
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { NodeRuntime } from "../sandbox/node-runtime.ts";
import { type LogSink, toNodeLogger } from "../telemetry/log.ts";
import { initTracing } from "../telemetry/tracing.ts";
import { defaultSocket, loadIdentity, type NodeIdentity } from "./identity.ts";
import { NodeService } from "./node-service.ts";
import { type DaemonListen, type RunningDaemon, startDaemon } from "./server.ts";

export interface NodeDaemonOptions {
  config: NodeConfig;
  /**
   * Where to listen. @default the unix socket of the state dir
   * (defaultSocket), refused when another daemon answers there.
   */
  listen?: DaemonListen;
  /**
   * A private unix socket instead of the state dir's (a node run inside a
   * control plane process: several may share a state dir in tests).
   */
  privateSocket?: boolean;
  /** Also listen on the local unix socket when `listen` is TCP. @default true */
  localSocket?: boolean;
  nodeId?: string;
  /** Structured log (a pino logger fits), or a function that prints lines. */
  log?: LogSink;
}

export interface NodeDaemon {
  identity: NodeIdentity;
  service: NodeService;
  /** `unix:<path>` and/or `https://host:port`. */
  addresses: string[];
  close(): Promise<void>;
}

export async function runNodeDaemon(opts: NodeDaemonOptions): Promise<NodeDaemon> {
  const logger = toNodeLogger(opts.log);
  const log = (line: string) => logger.info({ component: "daemon" }, line);
  // Spans of this node: kept for the control plane's trace view, and sent
  // over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (telemetry/tracing.ts).
  initTracing();
  const identity = await loadIdentity(opts.config, opts.nodeId);
  const runtime = await NodeRuntime.open(opts.config, { log: logger });
  const service = new NodeService(runtime, identity.nodeId, { log: logger });
  const listeners: RunningDaemon[] = [];
  try {
    await fs.mkdir(opts.config.runDir, { recursive: true, mode: 0o755 });
    // SECURITY: root-only directory for the node sockets.
    await fs.mkdir(path.dirname(defaultSocket(opts.config)), { recursive: true, mode: 0o700 });
    const wanted: DaemonListen[] = [];
    if (!opts.listen || "unix" in opts.listen || opts.localSocket !== false) {
      let unix = opts.listen && "unix" in opts.listen ? opts.listen.unix : defaultSocket(opts.config);
      if (opts.privateSocket) {
        await removeDeadPrivateSockets(path.dirname(defaultSocket(opts.config)));
        unix = path.join(
          path.dirname(defaultSocket(opts.config)),
          `p${process.pid}-${randomBytes(4).toString("hex")}.sock`,
        );
      } else if (await answers(unix)) {
        throw new FirebreakError(
          "INTERNAL",
          `another node daemon already serves ${opts.config.stateDir} (socket ${unix}); stop it first (firebreak down), or give this one its own state dir`,
        );
      }
      wanted.push({ unix });
    }
    if (opts.listen && !("unix" in opts.listen)) wanted.push(opts.listen);
    for (const listen of wanted)
      listeners.push(await startDaemon({ service, listen, secret: identity.secret, log }));
  } catch (e) {
    await Promise.all(listeners.map((l) => l.close()));
    await service.close();
    throw e;
  }
  let closing: Promise<void> | undefined;
  return {
    identity,
    service,
    addresses: listeners.map((l) => l.address),
    close() {
      closing ??= (async () => {
        await Promise.all(listeners.map((l) => l.close()));
        await service.close();
      })();
      return closing;
    },
  };
}

/** Whether something accepts connections on a unix socket path. */
function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socketPath);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

/** Private sockets of processes that died without closing them (SIGKILL). */
async function removeDeadPrivateSockets(dir: string): Promise<void> {
  for (const f of await fs.readdir(dir).catch(() => [] as string[])) {
    const m = /^p(\d+)-[0-9a-f]{8}\.sock$/.exec(f);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ESRCH") await fs.rm(path.join(dir, f), { force: true });
    }
  }
}
