import { parseArgs } from "node:util";
import { ENVD_PORT } from "@firebreak/protocol/envd";
import { ControlChannel } from "./control/control-channel.ts";
import { guestctlApply, guestctlPath, mixEntropy, syncClock } from "./control/system.ts";
import { deviceTransport, socketTransport } from "./control/transport.ts";
import { createAgentServer } from "./http/server.ts";
import { AgentState } from "./identity/agent-state.ts";

/**
 * Firebreak guest agent: E2B-compatible envd plus the host control channel.
 *
 *   node agent.mjs [--port 49983] [--host 0.0.0.0] [--control /dev/virtio-ports/fb.control]
 *                  [--control-socket /path/to.sock]
 */
async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: "string", default: String(ENVD_PORT) },
      host: { type: "string", default: "0.0.0.0" },
      control: { type: "string" },
      "control-socket": { type: "string" },
    },
    strict: true,
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid --port ${values.port}`);
  const transport = values.control
    ? deviceTransport(values.control)
    : values["control-socket"]
      ? socketTransport(values["control-socket"])
      : undefined;

  const state = new AgentState();
  const { server, table, preload } = createAgentServer({ state, standalone: transport === undefined });
  const helper = transport ? await guestctlPath() : undefined;
  const control = transport
    ? new ControlChannel(transport, state, {
        syncClock,
        mixEntropy,
        ...(helper ? { applyClockAndEntropy: guestctlApply(helper) } : {}),
      })
    : undefined;

  server.listen(port, values.host, () => {
    const addr = server.address();
    const actual = typeof addr === "object" && addr ? addr.port : port;
    // Tests parse this line to find the port when --port 0 is used.
    process.stdout.write(`guest-agent listening on ${values.host}:${actual}\n`);
    // Under a VM, "ready" must mean the RPC services answer at once: load them
    // before announcing readiness (on the host this costs a few ms).
    if (control) {
      void preload().finally(() => {
        control.start();
        // In a VM: boot-time page cache (the Node binary read at start, module
        // files) is not needed again. Dropping it lets the balloon's free page
        // reporting hand those pages back to the host.
        if (values.control) setTimeout(() => void dropPageCache(), 500).unref();
      });
    }
  });

  const shutdown = () => {
    control?.close();
    table.killAll();
    server.close();
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 100).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

await main();

async function dropPageCache(): Promise<void> {
  const { writeFile } = await import("node:fs/promises");
  await writeFile("/proc/sys/vm/drop_caches", "1").catch(() => {});
}
