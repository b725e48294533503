// firebreak up's own node: the node daemon (node-agent/src/daemon) run in this
// process on its root-only unix socket, reached through the same client and
// wire as a node on another machine.
import { type NodeConfig, type NodeDaemon, runNodeDaemon } from "@firebreak/node-agent";
import { RemoteNode } from "./remote-node.ts";

export interface InProcessNode {
  client: RemoteNode;
  daemon: NodeDaemon;
  /** Stops the daemon: running sandboxes and pool VMs end, paused ones stay on disk. */
  close(): Promise<void>;
}

export async function startInProcessNode(
  config: NodeConfig,
  log: (line: string) => void,
): Promise<InProcessNode> {
  // A private socket: tests run several control planes on one state dir.
  const daemon = await runNodeDaemon({ config, log, privateSocket: true });
  const address = daemon.addresses.find((a) => a.startsWith("unix:"))!;
  const client = new RemoteNode(daemon.identity.nodeId, { address, secret: daemon.identity.secret });
  return {
    client,
    daemon,
    async close() {
      await client.close();
      await daemon.close();
    },
  };
}
