// firebreak up: the control plane in this process (API, local node, embedded
// store) until Ctrl-C. The control plane package is imported only here, so the
// rest of the CLI works without it.
import { FirebreakError } from "@firebreak/node-agent";

interface ControlPlane {
  startServer(opts: {
    listen?: string;
    stateDir?: string;
    adminKey?: string;
    printAdminKey?: (key: string) => void;
    warmPools?: Record<string, number>;
    database?: string;
    localNode?: boolean;
  }): Promise<{ url: string; createdAdminKey?: string; close(): Promise<void> }>;
}

export async function upCommand(opts: {
  listen: string;
  stateDir?: string;
  database?: string;
  localNode?: boolean;
}): Promise<void> {
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
  let adminKey: string | undefined;
  const server = await cp.startServer({
    listen: opts.listen,
    warmPools: warmPoolsFromEnv(process.env["FIREBREAK_WARM_POOL"]),
    ...(opts.stateDir ? { stateDir: opts.stateDir } : {}),
    ...(opts.database ? { database: opts.database } : {}),
    ...(opts.localNode === false ? { localNode: false, warmPools: {} } : {}),
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
      if (stopping) {
        process.stderr.write("stopping now (a second signal skips the orderly shutdown)\n");
        process.exit(130);
      }
      stopping = true;
      process.stderr.write("stopping...\n");
      void server.close().finally(resolve);
    };
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, stop);
  });
}

/**
 * Warm pools `firebreak up` keeps: FIREBREAK_WARM_POOL="base:2,py:1"; an empty
 * value disables them. @default base:2
 */
export function warmPoolsFromEnv(v: string | undefined): Record<string, number> {
  const spec = v ?? "base:2";
  const out: Record<string, number> = {};
  for (const part of spec
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)) {
    const m = /^([a-z0-9][a-z0-9-]{0,39}):(\d{1,3})$/.exec(part);
    if (!m)
      throw new FirebreakError(
        "INTERNAL",
        `FIREBREAK_WARM_POOL wants template:size[,template:size], got ${part}`,
      );
    out[m[1]!] = Number(m[2]);
  }
  return out;
}
