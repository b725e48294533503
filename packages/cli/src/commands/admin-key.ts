// firebreak admin-key: root's way back in. Opens the state dir's control plane
// database directly (no server needed; a running one sees the key at once)
// and mints a new admin key of the default tenant. Only the key is printed on
// stdout, so scripts can capture it: KEY=$(firebreak admin-key).
import { existsSync } from "node:fs";
import path from "node:path";
import { FirebreakError, loadConfig } from "@firebreak/node-agent";

interface ControlPlane {
  recoverAdminKey(opts: {
    dbFile: string;
    name: string;
  }): Promise<{ id: string; key: string; tenantId: string }>;
}

export async function adminKeyCommand(opts: { stateDir?: string; name?: string }): Promise<void> {
  // SECURITY: the database holds every key's hash and is root-only (0600).
  if (process.getuid?.() !== 0) {
    throw new FirebreakError(
      "NOT_ROOT",
      "firebreak admin-key writes the control plane's database (root-only): run it as root (sudo firebreak admin-key)",
    );
  }
  const config = loadConfig({
    ...process.env,
    ...(opts.stateDir ? { FIREBREAK_STATE_DIR: opts.stateDir } : {}),
  });
  const dbFile = path.join(config.stateDir, "control-plane.db");
  if (!existsSync(dbFile)) {
    process.stderr.write(
      `error: no control plane database at ${dbFile}: start the control plane once (firebreak up; it prints an admin key on its first start), or pass the --state-dir it uses
`,
    );
    process.exitCode = 1;
    return;
  }
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
  const made = await cp.recoverAdminKey({ dbFile, name: opts.name ?? "admin (firebreak admin-key)" });
  process.stdout.write(`${made.key}\n`);
  process.stderr.write(
    `minted admin key ${made.id} (tenant ${made.tenantId}) in ${dbFile}; this is the only time it is shown\n`,
  );
}
