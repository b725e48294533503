// firebreak up: the control plane in this process (API, local node, embedded
// store) until Ctrl-C. The control plane package is imported only here, so the
// rest of the CLI works without it.
import http from "node:http";
import { FirebreakError } from "@firebreak/node-agent";

interface ControlPlane {
  startServer(opts: {
    listen?: string;
    stateDir?: string;
    adminKey?: string;
    printAdminKey?: (key: string) => void;
  }): Promise<{ url: string; createdAdminKey?: string; close(): Promise<void> }>;
}

export async function upCommand(opts: { listen: string; stateDir?: string }): Promise<void> {
  let cp: ControlPlane;
  try {
    cp = (await import("@firebreak/control-plane")) as unknown as ControlPlane;
  } catch (e) {
    throw new FirebreakError(
      "INTERNAL",
      `the control plane (packages/control-plane) cannot be loaded: ${(e as Error).message}; run \`npm install\` in the checkout (scripts/setup.sh)`,
      { cause: e },
    );
  }
  // WORKAROUND (node-agent envd-client.ts): the Connect transport to each guest
  // agent uses http.globalAgent, whose keep-alive pool (on by default since
  // Node 19) keeps sockets to a killed sandbox's address; the next sandbox
  // given that address (slots are reused) fails its first command with
  // ECONNRESET (AGENT_ERROR). Until each envd client has its own agent, this
  // process keeps no idle connections.
  http.globalAgent = new http.Agent({ keepAlive: false });
  let adminKey: string | undefined;
  const server = await cp.startServer({
    listen: opts.listen,
    ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
    printAdminKey: (k) => {
      adminKey = k;
    },
  });
  adminKey ??= server.createdAdminKey;
  process.stdout.write(`Firebreak is listening on ${server.url}\n`);
  if (adminKey) {
    process.stdout.write(
      `Admin API key (shown once, store it now): ${adminKey}\n\n` +
        `  export FIREBREAK_URL=${server.url}\n  export FIREBREAK_API_KEY=${adminKey}\n\n`,
    );
  } else {
    process.stdout.write(
      `  export FIREBREAK_URL=${server.url}\n  export FIREBREAK_API_KEY=<your key>  (the admin key printed on first start, or FIREBREAK_ADMIN_KEY)\n`,
    );
  }
  process.stdout.write("Ctrl-C stops the server\n");
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) return;
      stopping = true;
      process.stderr.write("stopping...\n");
      void server.close().finally(resolve);
    };
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, stop);
  });
}
