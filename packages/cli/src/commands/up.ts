// firebreak up: the control plane in this process (API, local node, embedded
// store) until SIGTERM or Ctrl-C; with --detach, the same in a background
// process that outlives the shell (pid and log files in the state dir). The
// control plane package is imported only here, so the rest of the CLI works
// without it.
import { spawn } from "node:child_process";
import fs from "node:fs";
import { FirebreakError } from "@firebreak/node-agent";
import {
  readAdminKey,
  removePidFile,
  runningServer,
  type ServerFiles,
  serverFiles,
  stateDirOf,
  writeAdminKey,
  writePidFile,
} from "../server-files.ts";

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

export interface UpOptions {
  listen: string;
  stateDir?: string;
  detach?: boolean;
  database?: string;
  localNode?: boolean;
}

/** A detached server's log is moved aside (one old copy kept) when it grows past this at a start. */
const LOG_ROTATE_BYTES = 16 * 2 ** 20;
/** How long --detach waits for the server to listen (a first start downloads the guest kernel). */
const DETACH_WAIT_MS = 15 * 60_000;

export async function upCommand(opts: UpOptions): Promise<void> {
  const files = serverFiles(stateDirOf(opts.stateDir));
  if (opts.detach) return detach(opts, files);

  let cp: ControlPlane;
  try {
    cp = (await import("@firebreak/control-plane")) as unknown as ControlPlane;
  } catch (e) {
    throw new FirebreakError(
      "INTERNAL",
      `the control plane (packages/control-plane) cannot be loaded: ${(e as Error).message}; run scripts/setup.sh as root`,
      { cause: e },
    );
  }
  // The admin key: FIREBREAK_ADMIN_KEY, else the one stored in the state dir;
  // a key created on the very first start is stored there (root-only).
  const envKey = process.env["FIREBREAK_ADMIN_KEY"];
  const storedKey = envKey === undefined ? readAdminKey(files) : undefined;
  let createdKey: string | undefined;
  const server = await cp.startServer({
    listen: opts.listen,
    stateDir: files.stateDir,
    warmPools: warmPoolsFromEnv(process.env["FIREBREAK_WARM_POOL"]),
    ...(opts.database ? { database: opts.database } : {}),
    ...(opts.localNode === false ? { localNode: false, warmPools: {} } : {}),
    ...(storedKey ? { adminKey: storedKey } : {}),
    printAdminKey: (k) => {
      createdKey = k;
    },
  });
  createdKey ??= server.createdAdminKey;
  if (createdKey && envKey === undefined) writeAdminKey(files, createdKey);
  writePidFile(files);

  process.stdout.write(`Firebreak is listening on ${server.url} (pid ${process.pid})\n`);
  // SECURITY: the key itself goes only to a terminal, never to a log file or
  // the journal; it is in the root-only key file either way.
  const keyRef =
    envKey !== undefined
      ? "$FIREBREAK_ADMIN_KEY"
      : createdKey && process.stdout.isTTY
        ? createdKey
        : `$(cat ${files.adminKeyFile})`;
  if (createdKey && process.stdout.isTTY) {
    process.stdout.write(`Admin API key (also stored root-only in ${files.adminKeyFile}): ${createdKey}\n`);
  } else if (createdKey) {
    process.stdout.write(`Admin API key created and stored root-only in ${files.adminKeyFile}\n`);
  }
  process.stdout.write(`\n  export FIREBREAK_URL=${server.url}\n  export FIREBREAK_API_KEY=${keyRef}\n\n`);
  process.stdout.write("SIGTERM (firebreak down) or Ctrl-C stops the server\n");

  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = () => {
      if (stopping) {
        process.stderr.write("stopping now (a second signal skips the orderly shutdown)\n");
        removePidFile(files);
        process.exit(130);
      }
      stopping = true;
      process.stderr.write("stopping: killing running sandboxes (paused ones are kept)...\n");
      server.close().then(
        () => {
          removePidFile(files);
          process.stderr.write("stopped\n");
          resolve();
        },
        (e: Error) => {
          removePidFile(files);
          process.stderr.write(`error: shutdown failed: ${e.stack ?? e.message}\n`);
          process.exit(1);
        },
      );
    };
    for (const s of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(s, stop);
  });
  // Nothing of the server is left to wait for; do not linger on stray handles.
  process.exit(0);
}

/**
 * Starts `firebreak up` as a background process in its own session, its
 * output appended to the state dir's log, and returns once it listens (or
 * fails, with the log's last lines).
 */
async function detach(opts: UpOptions, files: ServerFiles): Promise<void> {
  const running = runningServer(files);
  if (running !== undefined) {
    process.stdout.write(
      `firebreak up is already running on ${files.stateDir} (pid ${running}); stop it with: firebreak down\n`,
    );
    return;
  }
  fs.mkdirSync(files.stateDir, { recursive: true, mode: 0o700 });
  try {
    if (fs.statSync(files.logFile).size > LOG_ROTATE_BYTES)
      fs.renameSync(files.logFile, `${files.logFile}.1`);
  } catch {
    // no log yet
  }
  const fd = fs.openSync(files.logFile, "a", 0o600);
  const offset = fs.fstatSync(fd).size;
  fs.writeSync(fd, `--- firebreak up --detach, ${new Date().toISOString()}\n`);
  const child = spawn(
    process.execPath,
    [
      ...process.execArgv,
      process.argv[1]!,
      "up",
      "--listen",
      opts.listen,
      "--state-dir",
      files.stateDir,
      ...(opts.localNode === false ? ["--no-local-node"] : []),
    ],
    {
      detached: true,
      stdio: ["ignore", fd, fd],
      // SECURITY: a database URL may hold a password: the child gets it in its
      // environment, not on a command line every user can read.
      env: opts.database ? { ...process.env, FIREBREAK_DATABASE_URL: opts.database } : process.env,
    },
  );
  fs.closeSync(fd);
  let exited: string | undefined;
  child.once("exit", (code, signal) => {
    exited = signal ? `signal ${signal}` : `code ${code}`;
  });
  child.unref();

  const readLog = () => {
    const buf = fs.readFileSync(files.logFile);
    return buf.subarray(Math.min(offset, buf.length)).toString();
  };
  const deadline = Date.now() + DETACH_WAIT_MS;
  for (;;) {
    const log = readLog();
    const url = /listening on (http:\/\/\S+)/.exec(log)?.[1];
    if (url && exited === undefined) {
      process.stdout.write(
        `firebreak up is running in the background (pid ${child.pid}) at ${url}\n` +
          `  log:       ${files.logFile}\n` +
          `  admin key: ${files.adminKeyFile} (root-only)\n` +
          "  stop:      firebreak down\n",
      );
      return;
    }
    if (exited !== undefined || Date.now() > deadline) {
      const tail = log.trimEnd().split("\n").slice(-20).join("\n");
      throw new FirebreakError(
        "INTERNAL",
        exited !== undefined
          ? `firebreak up exited (${exited}) before it listened; the end of ${files.logFile}:\n${tail}`
          : `firebreak up (pid ${child.pid}) is still not listening after ${DETACH_WAIT_MS / 60_000} min; see ${files.logFile}, stop it with: firebreak down`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
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
