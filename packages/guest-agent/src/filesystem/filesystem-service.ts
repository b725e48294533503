import { cp, lstat, readdir, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { filesystemPb } from "@firebreak/protocol";
import { resolveUserPath } from "../identity/paths.ts";
import { loadOwnerNames, type UserInfo } from "../identity/users.ts";
import { AsyncQueue } from "../process/async-queue.ts";
import { keepaliveIntervalMs } from "../process/process-service.ts";
import { DirWatcher, type FsEvent, type WatcherRegistry } from "./dir-watcher.ts";
import { type EntryInfoInit, entryInfo } from "./entry-info.ts";
import { fsError } from "./fs-errors.ts";
import { makeDirsForUser } from "./ownership.ts";

type Filesystem = typeof filesystemPb.Filesystem;
type WatchDirResponseInit = MessageInitShape<typeof filesystemPb.WatchDirResponseSchema>;

export type FilesystemServiceDeps = {
  watchers: WatcherRegistry;
  userFor: (ctx: HandlerContext) => Promise<UserInfo>;
};

/** Largest ListDir depth honoured; deeper requests are clamped. */
const MAX_LIST_DEPTH = 64;

async function mustBeDir(path: string): Promise<void> {
  let s: Awaited<ReturnType<typeof stat>>;
  try {
    s = await stat(path);
  } catch (err) {
    throw fsError(err, path);
  }
  if (!s.isDirectory()) throw new ConnectError(`path '${path}' is not a directory`, Code.InvalidArgument);
}

async function describe(path: string): Promise<EntryInfoInit> {
  try {
    return await entryInfo(path, await loadOwnerNames());
  } catch (err) {
    throw fsError(err, path);
  }
}

export function createFilesystemService(deps: FilesystemServiceDeps): ServiceImpl<Filesystem> {
  const pathFor = async (p: string, ctx: HandlerContext) => {
    const user = await deps.userFor(ctx);
    return { path: resolveUserPath(p, user.home), user };
  };

  return {
    async stat(req, ctx) {
      const { path } = await pathFor(req.path, ctx);
      return { entry: await describe(path) };
    },

    async makeDir(req, ctx) {
      const { path, user } = await pathFor(req.path, ctx);
      let created: boolean;
      try {
        created = await makeDirsForUser(path, user);
      } catch (err) {
        throw fsError(err, path);
      }
      if (!created) {
        const s = await lstat(path);
        throw new ConnectError(
          s.isDirectory()
            ? `directory '${path}' already exists`
            : `path '${path}' already exists and is not a directory`,
          Code.AlreadyExists,
        );
      }
      return { entry: await describe(path) };
    },

    async move(req, ctx) {
      const { path: source } = await pathFor(req.source, ctx);
      const { path: destination, user } = await pathFor(req.destination, ctx);
      try {
        await lstat(source);
      } catch (err) {
        throw fsError(err, source);
      }
      try {
        await makeDirsForUser(dirname(destination), user);
        await rename(source, destination);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw fsError(err, destination);
        // Different filesystems: copy then delete.
        try {
          await cp(source, destination, {
            recursive: true,
            preserveTimestamps: true,
            verbatimSymlinks: true,
          });
          await rm(source, { recursive: true });
        } catch (err2) {
          throw fsError(err2, destination);
        }
      }
      return { entry: await describe(destination) };
    },

    async listDir(req, ctx) {
      const { path } = await pathFor(req.path, ctx);
      await mustBeDir(path);
      const depth = Math.min(Math.max(req.depth, 1), MAX_LIST_DEPTH);
      const owners = await loadOwnerNames();
      const entries: EntryInfoInit[] = [];
      let level = [path];
      for (let d = 1; d <= depth && level.length > 0; d++) {
        const next: string[] = [];
        for (const dir of level) {
          let names: string[];
          try {
            names = (await readdir(dir)).sort();
          } catch (err) {
            if (dir === path) throw fsError(err, dir);
            continue; // a subdirectory vanished or is unreadable: skip it
          }
          for (const name of names) {
            const child = join(dir, name);
            const info = await entryInfo(child, owners).catch(() => undefined);
            if (!info) continue;
            entries.push(info);
            // Do not descend through symlinks: they can loop.
            if (info.symlinkTarget === undefined && info.type === 2) next.push(child);
          }
        }
        level = next;
      }
      return { entries };
    },

    async remove(req, ctx) {
      const { path } = await pathFor(req.path, ctx);
      try {
        await lstat(path);
        await rm(path, { recursive: true, force: false });
      } catch (err) {
        throw fsError(err, path);
      }
      return {};
    },

    async *watchDir(req, ctx): AsyncGenerator<WatchDirResponseInit> {
      const { path } = await pathFor(req.path, ctx);
      await mustBeDir(path);
      const queue = new AsyncQueue<FsEvent | "keepalive" | Error>();
      const watcher = new DirWatcher(
        path,
        req.recursive,
        (ev) => queue.push(ev),
        (err) => {
          queue.push(err);
          queue.close();
        },
      );
      const timer = setInterval(
        () => queue.push("keepalive"),
        keepaliveIntervalMs(ctx.requestHeader.get("keepalive-ping-interval")),
      );
      try {
        yield { event: { case: "start", value: {} } };
        for await (const ev of queue.drain(ctx.signal)) {
          if (ev === "keepalive") {
            yield { event: { case: "keepalive", value: {} } };
          } else if (ev instanceof Error) {
            throw new ConnectError(`watching '${path}' failed: ${ev.message}`, Code.Internal);
          } else {
            const entry = req.includeEntry
              ? await describe(join(path, ev.name)).catch(() => undefined)
              : undefined;
            yield { event: { case: "filesystem", value: { name: ev.name, type: ev.type, entry } } };
          }
        }
      } finally {
        clearInterval(timer);
        watcher.close();
      }
    },

    async createWatcher(req, ctx) {
      const { path } = await pathFor(req.path, ctx);
      await mustBeDir(path);
      return { watcherId: deps.watchers.create(path, req.recursive) };
    },

    getWatcherEvents(req) {
      const drained = deps.watchers.drain(req.watcherId);
      if (!drained) throw new ConnectError(`watcher '${req.watcherId}' not found`, Code.NotFound);
      if (drained.error && drained.events.length === 0) {
        throw new ConnectError(`watcher '${req.watcherId}' failed: ${drained.error.message}`, Code.Internal);
      }
      return { events: drained.events };
    },

    removeWatcher(req) {
      if (!deps.watchers.remove(req.watcherId)) {
        throw new ConnectError(`watcher '${req.watcherId}' not found`, Code.NotFound);
      }
      return {};
    },
  };
}
