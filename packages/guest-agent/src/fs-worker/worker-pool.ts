import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type FsExecutor, localExecutor } from "../filesystem/fs-executor.ts";
import { groupsOf, type UserInfo } from "../identity/users.ts";
import { FsWorker, type WorkerSpawnOptions } from "./worker-client.ts";

/** A worker nobody pinned is stopped after this long without a call. */
const DEFAULT_IDLE_MS = 5 * 60_000;

/** The worker script: fs-worker.mjs beside agent.mjs in the bundle, worker-main.ts from source. */
export function workerEntry(): string {
  const self = fileURLToPath(import.meta.url);
  return self.endsWith(".ts") ? join(dirname(self), "worker-main.ts") : join(dirname(self), "fs-worker.mjs");
}

function defaultSpawnOptions(): WorkerSpawnOptions {
  const env: NodeJS.ProcessEnv = { PATH: process.env["PATH"] ?? "/usr/bin:/bin", LANG: "C.UTF-8" };
  for (const k of ["FIREBREAK_AGENT_PASSWD", "FIREBREAK_AGENT_GROUP"]) {
    if (process.env[k]) env[k] = process.env[k];
  }
  return {
    entry: workerEntry(),
    execArgv: [
      "--max-old-space-size=48",
      ...(process.execArgv.includes("--single-threaded") ? ["--single-threaded"] : []),
    ],
    env,
  };
}

export type FileExecutorsOptions = {
  spawn?: Partial<WorkerSpawnOptions>;
  idleMs?: number;
  /** Whether the agent can act as another user (it runs as root). Default: it is root. */
  canSwitchUser?: boolean;
};

/**
 * Chooses how a request's file operations run. SECURITY: as root only when the
 * request's user is root; any other user's operations run in a worker process
 * holding that user's uid, gid and groups (started on first use, or ahead of
 * time with `prestart`), so no path a user names is ever touched with root's
 * rights. A non-root agent (development) cannot switch users and runs
 * everything as itself, like its commands.
 */
export class FileExecutors {
  #workers = new Map<string, Promise<FsWorker>>();
  #pinned = new Set<string>();
  #spawn: WorkerSpawnOptions;
  #canSwitch: boolean;
  #reaper: NodeJS.Timeout;

  constructor(opts: FileExecutorsOptions = {}) {
    this.#spawn = { ...defaultSpawnOptions(), ...opts.spawn };
    this.#canSwitch = opts.canSwitchUser ?? process.getuid?.() === 0;
    const idleMs = opts.idleMs ?? DEFAULT_IDLE_MS;
    this.#reaper = setInterval(() => void this.#reapIdle(idleMs), Math.min(idleMs, 30_000));
    this.#reaper.unref();
  }

  for(user: UserInfo): FsExecutor {
    if (!this.#canSwitch || user.uid === process.getuid?.()) return localExecutor;
    const get = () => this.#get(user);
    return {
      stat: async (p) => (await get()).stat(p),
      checkEnterable: async (p) => (await get()).checkEnterable(p),
      makeDir: async (p) => (await get()).makeDir(p),
      move: async (s, d) => (await get()).move(s, d),
      remove: async (p) => (await get()).remove(p),
      listDir: async (p, depth) => (await get()).listDir(p, depth),
      openRead: async (p) => (await get()).openRead(p),
      writeFile: async (p, body, md) => (await get()).writeFile(p, body, md),
      watch: async (p, o, onEvent, onError) => (await get()).watch(p, o, onEvent, onError),
    };
  }

  /**
   * Starts the user's worker now and keeps it (never stopped when idle), so the
   * first request does not wait for a Node start; before `ready`, it is then in
   * every snapshot of the VM. Resolves once it runs as the user.
   */
  async prestart(user: UserInfo): Promise<FsWorker | undefined> {
    if (!this.#canSwitch || user.uid === process.getuid?.()) return undefined;
    this.#pinned.add(key(user));
    const w = await this.#get(user);
    await w.ready();
    return w;
  }

  /** The running worker of a user, if any (diagnostics and tests). */
  async running(user: UserInfo): Promise<FsWorker | undefined> {
    const w = await this.#workers.get(key(user))?.catch(() => undefined);
    return w && !w.exited ? w : undefined;
  }

  closeAll(): void {
    clearInterval(this.#reaper);
    for (const p of this.#workers.values())
      void p.then(
        (w) => w.stop(),
        () => {},
      );
    this.#workers.clear();
  }

  #get(user: UserInfo): Promise<FsWorker> {
    const k = key(user);
    const existing = this.#workers.get(k);
    if (existing) return existing;
    const made = groupsOf(user).then((groups) => {
      const w: FsWorker = new FsWorker(user, groups, this.#spawn, () => {
        if (this.#workers.get(k) === made) this.#workers.delete(k);
      });
      return w;
    });
    this.#workers.set(k, made);
    made.catch(() => {
      if (this.#workers.get(k) === made) this.#workers.delete(k);
    });
    return made;
  }

  async #reapIdle(idleMs: number): Promise<void> {
    const now = Date.now();
    for (const [k, p] of this.#workers) {
      if (this.#pinned.has(k)) continue;
      const w = await p.catch(() => undefined);
      if (w && w.activeCalls === 0 && now - w.lastActiveMs > idleMs) {
        this.#workers.delete(k);
        w.stop();
      }
    }
  }
}

function key(u: UserInfo): string {
  return `${u.name}:${u.uid}:${u.gid}`;
}
