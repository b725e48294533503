import { parseArgs } from "node:util";
import { ENVD_PORT } from "@firebreak/protocol/envd";
import { ControlChannel } from "./control/control-channel.ts";
import { guestctlApply, guestctlPath, mixEntropy, syncClock } from "./control/system.ts";
import { deviceTransport, socketTransport } from "./control/transport.ts";
import { loadXattr } from "./filesystem/xattr-metadata.ts";
import { FileExecutors } from "./fs-worker/worker-pool.ts";
import { createAgentServer } from "./http/server.ts";
import { AgentState } from "./identity/agent-state.ts";
import { lookupUser } from "./identity/users.ts";

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
  const executors = new FileExecutors();
  const { server, table, preload } = createAgentServer({
    state,
    standalone: transport === undefined,
    executors,
  });
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
    // The default user's file worker starts now, so that the first file request
    // does not wait for a Node start (and a snapshot taken after `ready` has it).
    const prestart = prestartDefaultUser(executors);
    if (control) {
      void Promise.all([preload(), prestart, loadXattr()]).finally(() => {
        // The page cache is kept: a snapshot's guest RAM is one file every
        // clone maps copy-on-write, so cached pages cost clones nothing until
        // they touch them, and save them the disk reads.
        control.start();
      });
    }
  });

  const shutdown = () => {
    control?.close();
    table.killAll();
    executors.closeAll();
    server.close();
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 100).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

await main();

/**
 * Starts the file worker of the template's default user (`user` in
 * /etc/firebreak/template.json, else "user"). Failures are logged: the worker
 * is then started on first use.
 */
async function prestartDefaultUser(executors: FileExecutors): Promise<void> {
  const { readFile } = await import("node:fs/promises");
  let name = "user";
  try {
    const spec = JSON.parse(await readFile(templateJsonPath(), "utf8")) as { user?: unknown };
    if (typeof spec.user === "string" && spec.user !== "") name = spec.user;
  } catch {
    // No template description (tests, hand-made images): the E2B default.
  }
  const user = await lookupUser(name);
  if (!user) return;
  const startedAt = performance.now();
  try {
    const w = await executors.prestart(user);
    if (w)
      console.error(
        `guest-agent: file worker of '${name}' ready in ${Math.round(performance.now() - startedAt)} ms`,
      );
  } catch (err) {
    console.error(`guest-agent: the file worker of '${name}' did not start:`, (err as Error).message);
  }
}

function templateJsonPath(): string {
  return process.env["FIREBREAK_AGENT_TEMPLATE_JSON"] || "/etc/firebreak/template.json";
}
