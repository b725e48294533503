// firebreak node: the node daemon of this host until a signal. It owns every
// VM, tap, namespace, nftables table, cgroup and file of Firebreak here and
// serves the node API on a root-only unix socket, and with --listen on TCP
// (TLS-PSK) for control planes on other machines. With --join it registers
// itself with a control plane (a join token from `POST /v1/nodes/join-tokens`).
import { FirebreakError, loadConfig, runNodeDaemon, saveIdentity } from "@firebreak/node-agent";
import { log } from "../output.ts";

export interface NodeCommandOptions {
  listen?: string;
  advertise?: string;
  join?: string;
  token?: string;
  stateDir?: string;
  nodeId?: string;
}

function parseHostPort(v: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d{1,5})$/.exec(v);
  if (!m) throw new FirebreakError("INTERNAL", `--listen wants host:port, got ${v}`);
  return { host: m[1] || "0.0.0.0", port: Number(m[2]) };
}

export async function nodeCommand(opts: NodeCommandOptions): Promise<void> {
  const config = loadConfig({
    ...process.env,
    ...(opts.stateDir ? { FIREBREAK_STATE_DIR: opts.stateDir } : {}),
  });
  if (opts.join && !opts.token) {
    throw new FirebreakError(
      "INTERNAL",
      "--join needs --token (a join token from POST /v1/nodes/join-tokens)",
    );
  }
  if (opts.join && !opts.listen) {
    throw new FirebreakError(
      "INTERNAL",
      "--join needs --listen host:port (the control plane must reach this node)",
    );
  }
  const daemon = await runNodeDaemon({
    config,
    ...(opts.listen ? { listen: parseHostPort(opts.listen) } : {}),
    ...(opts.nodeId ? { nodeId: opts.nodeId } : {}),
    log,
  });
  try {
    const tcp = daemon.addresses.find((a) => a.startsWith("https://"));
    process.stdout.write(`node ${daemon.identity.nodeId} listening on ${daemon.addresses.join(" and ")}\n`);
    if (opts.join) {
      const address = opts.advertise ?? tcp;
      if (!address)
        throw new FirebreakError(
          "INTERNAL",
          "no TCP address to advertise; give --advertise https://host:port",
        );
      const res = await fetch(new URL("/v1/nodes/join", opts.join), {
        method: "POST",
        headers: { authorization: `Bearer ${opts.token}`, "content-type": "application/json" },
        body: JSON.stringify({ nodeId: daemon.identity.nodeId, address, secret: daemon.identity.secret }),
      }).catch((e: Error) => {
        const why = (e.cause as Error | undefined)?.message ?? e.message;
        throw new FirebreakError(
          "NODE_UNAVAILABLE",
          `could not reach the control plane at ${opts.join} to join (${why}); check the URL and that this host can reach it`,
          { cause: e },
        );
      });
      if (!res.ok) {
        throw new FirebreakError(
          "NODE_AUTH_FAILED",
          `the control plane at ${opts.join} refused the join (${res.status}): ${(await res.text()).slice(0, 300)}`,
        );
      }
      await saveIdentity(config, { ...daemon.identity, controlPlane: opts.join });
      process.stdout.write(`joined ${opts.join} as ${daemon.identity.nodeId} (${address})\n`);
    }
  } catch (e) {
    await daemon.close();
    throw e;
  }
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write("stopping the node (running sandboxes end; paused ones stay)...\n");
      void daemon.close().finally(resolve);
    };
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, stop);
  });
}
