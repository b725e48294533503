// Test support: a private, throwaway PostgreSQL cluster for one test process.
//
// Uses Debian's server binaries (scripts/setup.sh installs `postgresql`; no
// system service needs to run): initdb into a temporary directory, then
// `postgres` listening only on a Unix socket in that directory (0700, so only
// its owner and root can connect; trust authentication inside). As root the
// cluster runs as the `postgres` system user the package creates (initdb
// refuses root). Each caller of createDatabase() gets a database of its own.
// stop() (or the end of the process) shuts it down and removes the directory;
// clusters left by test processes that died are removed by the next start.
//
// FIREBREAK_TEST_DATABASE_URL (a superuser's postgres:// URL) uses that server
// instead: databases are created in it and dropped by stop().
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";

export interface TestPostgres {
  /** A new empty database; returns its URL. */
  createDatabase(): Promise<string>;
  /** Stops the cluster and removes its files (or drops the databases made in an external server). */
  stop(): Promise<void>;
}

const PREFIX = "fb-pg-";

function serverBinDir(): string {
  const root = "/usr/lib/postgresql";
  const versions = fs.existsSync(root)
    ? fs
        .readdirSync(root)
        .filter((v) => fs.existsSync(path.join(root, v, "bin", "postgres")))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions.length) {
    throw new Error(
      "the PostgreSQL server is not installed (no /usr/lib/postgresql/<version>/bin/postgres): run scripts/setup.sh, which installs Debian's postgresql package",
    );
  }
  return path.join(root, versions[0]!, "bin");
}

function postgresUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined; // not root: the cluster runs as this user
  const line = fs
    .readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.startsWith("postgres:"));
  if (!line) {
    throw new Error("no postgres system user (Debian's postgresql package creates it): run scripts/setup.sh");
  }
  const [, , uid, gid] = line.split(":");
  return { uid: Number(uid), gid: Number(gid) };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes clusters whose test process is gone (a test killed before its cleanup ran). */
function removeStale(): void {
  for (const name of fs.readdirSync(os.tmpdir())) {
    const m = new RegExp(`^${PREFIX}(\\d+)-`).exec(name);
    if (!m || alive(Number(m[1]))) continue;
    const dir = path.join(os.tmpdir(), name);
    try {
      const pid = Number(fs.readFileSync(path.join(dir, "data", "postmaster.pid"), "utf8").split("\n")[0]);
      if (pid > 0 && alive(pid)) process.kill(pid, "SIGKILL");
    } catch {
      // never started, or already stopped
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function waitReady(url: string, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `postgres exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${log()}`,
      );
    }
    const c = new pg.Client({ connectionString: url });
    try {
      await c.connect();
      await c.query("SELECT 1");
      return;
    } catch (e) {
      if (Date.now() > deadline)
        throw new Error(`postgres was not ready after 60 s: ${(e as Error).message}\n${log()}`);
    } finally {
      await c.end().catch(() => {});
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

let n = 0;
const dbName = () => `fb_test_${process.pid}_${++n}_${Math.random().toString(36).slice(2, 8)}`;

async function admin<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = `/${db}`;
  return u.toString();
}

async function external(url: string): Promise<TestPostgres> {
  const made: string[] = [];
  return {
    async createDatabase() {
      const db = dbName();
      await admin(url, (c) => c.query(`CREATE DATABASE ${db}`));
      made.push(db);
      return withDatabase(url, db);
    },
    async stop() {
      await admin(url, async (c) => {
        for (const db of made.splice(0)) await c.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
      });
    },
  };
}

/**
 * Starts a private cluster (or uses FIREBREAK_TEST_DATABASE_URL). `durable`
 * keeps PostgreSQL's defaults (fsync, synchronous commit: what production
 * runs, for benchmarks); by default a test cluster skips them.
 */
export async function startPostgres(opts: { durable?: boolean } = {}): Promise<TestPostgres> {
  const ext = process.env["FIREBREAK_TEST_DATABASE_URL"];
  if (ext) return external(ext);
  const bin = serverBinDir();
  const owner = postgresUser();
  removeStale();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-`));
  const data = path.join(dir, "data");
  const sock = path.join(dir, "sock");
  fs.mkdirSync(sock, { mode: 0o700 });
  if (owner) {
    fs.chownSync(dir, owner.uid, owner.gid);
    fs.chownSync(sock, owner.uid, owner.gid);
  }
  const as = owner ? { uid: owner.uid, gid: owner.gid } : {};
  let child: ChildProcess | undefined;
  const cleanup = () => {
    if (child?.pid && child.exitCode === null) child.kill("SIGKILL");
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", cleanup);
  try {
    execFileSync(
      path.join(bin, "initdb"),
      ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
      { ...as, cwd: dir, stdio: ["ignore", "ignore", "pipe"], env: { PATH: "/usr/bin:/bin", LANG: "C" } },
    );
    let log = "";
    child = spawn(
      path.join(bin, "postgres"),
      [
        "-D",
        data,
        "-k",
        sock,
        "-c",
        "listen_addresses=",
        "-c",
        "max_connections=200",
        // A throwaway cluster: durability is not wanted, speed is.
        ...(opts.durable
          ? []
          : ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]),
      ],
      { ...as, cwd: dir, stdio: ["ignore", "ignore", "pipe"], env: { PATH: "/usr/bin:/bin", LANG: "C" } },
    );
    child.stderr!.on("data", (b: Buffer) => {
      log = (log + b.toString()).slice(-8000);
    });
    const base = `postgresql://postgres@${encodeURIComponent(sock)}/postgres`;
    await waitReady(base, child, () => log);
    const running = child;
    let stopped: Promise<void> | undefined;
    return {
      async createDatabase() {
        const db = dbName();
        await admin(base, (c) => c.query(`CREATE DATABASE ${db}`));
        return withDatabase(base, db);
      },
      stop() {
        stopped ??= (async () => {
          if (running.exitCode === null && running.signalCode === null) {
            const exited = new Promise((r) => running.once("exit", r));
            running.kill("SIGINT"); // fast shutdown: ends the sessions, no checkpoint wait for clients
            await exited;
          }
          process.removeListener("exit", cleanup);
          fs.rmSync(dir, { recursive: true, force: true });
        })();
        return stopped;
      },
    };
  } catch (e) {
    process.removeListener("exit", cleanup);
    cleanup();
    throw e;
  }
}
