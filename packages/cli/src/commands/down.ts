// firebreak down: stops the `firebreak up` of a state dir, however it was
// started (the systemd service, --detach, or in a terminal), and waits until it
// is gone. The server's own shutdown kills and bills running sandboxes and
// keeps paused ones on disk for the next start.
import fs from "node:fs";
import { FirebreakError } from "@firebreak/node-agent";
import { run } from "@firebreak/node-agent/host";
import { isServerProcess, runningServer, serverFiles, stateDirOf } from "../server-files.ts";

export const SYSTEMD_UNIT = "firebreak.service";

/** The main pid of the systemd service, when systemd runs and the service is up. */
async function systemdMainPid(): Promise<number | undefined> {
  if (!fs.existsSync("/run/systemd/system")) return undefined;
  const r = await run("systemctl", ["show", "--property=MainPID", "--value", SYSTEMD_UNIT], {
    allowFailure: true,
  }).catch(() => undefined);
  const pid = Number(r?.stdout.trim());
  return r?.exitCode === 0 && pid > 0 ? pid : undefined;
}

export async function downCommand(opts: { stateDir?: string; timeoutMs: number }): Promise<void> {
  const files = serverFiles(stateDirOf(opts.stateDir));
  const pid = runningServer(files);
  if (pid === undefined) {
    process.stdout.write(`firebreak up is not running on ${files.stateDir}\n`);
    return;
  }
  if ((await systemdMainPid()) === pid) {
    // Stopped through systemd, so the service is not restarted and shows as stopped.
    process.stdout.write(`stopping ${SYSTEMD_UNIT} (pid ${pid})...\n`);
    await run("systemctl", ["stop", SYSTEMD_UNIT], { timeoutMs: opts.timeoutMs + 30_000 });
  } else {
    process.stdout.write(`stopping firebreak up (pid ${pid})...\n`);
    try {
      process.kill(pid, "SIGTERM");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
    }
  }
  const deadline = Date.now() + opts.timeoutMs;
  while (isServerProcess(pid)) {
    if (Date.now() > deadline) {
      throw new FirebreakError(
        "INTERNAL",
        `firebreak up (pid ${pid}) is still stopping after ${Math.round(opts.timeoutMs / 1000)} s; ` +
          `kill -9 ${pid} forces it (its running sandboxes are then cleaned up by the next start)`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  process.stdout.write("stopped: running sandboxes were killed and billed; paused sandboxes are kept\n");
}
