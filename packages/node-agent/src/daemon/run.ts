// `firebreak node`: one daemon per host that owns every VM, tap, namespace,
// nftables table, cgroup, slot and file of Firebreak there, and serves the
// node API (server.ts) to control planes and local CLI commands.
import fs from "node:fs/promises";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import { NodeRuntime } from "../sandbox/node-runtime.ts";
import { defaultSocket, loadIdentity, type NodeIdentity } from "./identity.ts";
import { NodeService } from "./node-service.ts";
import { type DaemonListen, type RunningDaemon, startDaemon } from "./server.ts";

export interface NodeDaemonOptions {
  config: NodeConfig;
  /** Where to listen. @default the unix socket <runDir>/node.sock */
  listen?: DaemonListen;
  /** Also listen on the local unix socket when `listen` is TCP. @default true */
  localSocket?: boolean;
  nodeId?: string;
  log?: (line: string) => void;
}

export interface NodeDaemon {
  identity: NodeIdentity;
  service: NodeService;
  /** `unix:<path>` and/or `https://host:port`. */
  addresses: string[];
  close(): Promise<void>;
}

export async function runNodeDaemon(opts: NodeDaemonOptions): Promise<NodeDaemon> {
  const log = opts.log ?? (() => {});
  const identity = await loadIdentity(opts.config, opts.nodeId);
  const runtime = await NodeRuntime.open(opts.config, { log });
  const service = new NodeService(runtime, identity.nodeId);
  const listeners: RunningDaemon[] = [];
  try {
    await fs.mkdir(opts.config.runDir, { recursive: true, mode: 0o755 });
    // SECURITY: root-only directory for the node sockets.
    await fs.mkdir(path.dirname(defaultSocket(opts.config)), { recursive: true, mode: 0o700 });
    const wanted: DaemonListen[] = [];
    if (!opts.listen || "unix" in opts.listen || opts.localSocket !== false) {
      wanted.push(opts.listen && "unix" in opts.listen ? opts.listen : { unix: defaultSocket(opts.config) });
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
