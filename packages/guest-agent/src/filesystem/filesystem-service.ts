import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { filesystemPb } from "@firebreak/protocol";
import type { FileExecutors } from "../fs-worker/worker-pool.ts";
import type { AgentState } from "../identity/agent-state.ts";
import { resolveUserPath } from "../identity/paths.ts";
import type { UserInfo } from "../identity/users.ts";
import { AsyncQueue } from "../process/async-queue.ts";
import { keepaliveIntervalMs } from "../process/process-service.ts";
import { toEntryInfo } from "./entry-info.ts";
import { fsError } from "./fs-errors.ts";
import type { FsExecutor } from "./fs-executor.ts";
import type { WatchEvent } from "./fs-ops.ts";
import type { WatcherRegistry } from "./watcher-registry.ts";

type Filesystem = typeof filesystemPb.Filesystem;
type WatchDirResponseInit = MessageInitShape<typeof filesystemPb.WatchDirResponseSchema>;
type FilesystemEventInit = MessageInitShape<typeof filesystemPb.FilesystemEventSchema>;

/** Events a WatchDir stream may hold for a client that does not read; more ends the stream. */
const MAX_QUEUED_WATCH_EVENTS = 10_000;

export type FilesystemServiceDeps = {
  state: AgentState;
  watchers: WatcherRegistry;
  executors: FileExecutors;
  userFor: (ctx: HandlerContext) => Promise<UserInfo>;
};

function toEvent(ev: WatchEvent): FilesystemEventInit {
  return { name: ev.name, type: ev.type, ...(ev.entry ? { entry: toEntryInfo(ev.entry) } : {}) };
}

/**
 * filesystem.Filesystem. SECURITY: every operation runs through the executor of
 * the request's user (its own uid in a worker process, or root only for root),
 * so permission checks, symlink resolution and ownership are that user's.
 */
export function createFilesystemService(deps: FilesystemServiceDeps): ServiceImpl<Filesystem> {
  const { executors, watchers } = deps;
  const forRequest = async (ctx: HandlerContext) => {
    const user = await deps.userFor(ctx);
    const resolve = (p: string) => resolveUserPath(p, user.home, deps.state.identity?.defaultWorkdir);
    return { user, exec: executors.for(user) as FsExecutor, resolve };
  };

  return {
    async stat(req, ctx) {
      const { user, exec, resolve } = await forRequest(ctx);
      const path = resolve(req.path);
      const entry = await exec.stat(path).catch((err: unknown) => {
        throw fsError(err, path, user.name);
      });
      return { entry: toEntryInfo(entry) };
    },

    async makeDir(req, ctx) {
      const { user, exec, resolve } = await forRequest(ctx);
      const path = resolve(req.path);
      const made = await exec.makeDir(path).catch((err: unknown) => {
        throw fsError(err, path, user.name);
      });
      if (!made.created || !made.entry) {
        throw new ConnectError(`directory '${path}' already exists`, Code.AlreadyExists);
      }
      return { entry: toEntryInfo(made.entry) };
    },

    async move(req, ctx) {
      const { user, exec, resolve } = await forRequest(ctx);
      const source = resolve(req.source);
      const destination = resolve(req.destination);
      const entry = await exec.move(source, destination).catch((err: unknown) => {
        throw fsError(err, destination, user.name);
      });
      return { entry: toEntryInfo(entry) };
    },

    async listDir(req, ctx) {
      const { user, exec, resolve } = await forRequest(ctx);
      const path = resolve(req.path);
      const entries = await exec.listDir(path, req.depth).catch((err: unknown) => {
        throw fsError(err, path, user.name);
      });
      return { entries: entries.map(toEntryInfo) };
    },

    async remove(req, ctx) {
      const { user, exec, resolve } = await forRequest(ctx);
      const path = resolve(req.path);
      await exec.remove(path).catch((err: unknown) => {
        throw fsError(err, path, user.name);
      });
      return {};
    },

    async *watchDir(req, ctx): AsyncGenerator<WatchDirResponseInit> {
      const { user, exec, resolve } = await forRequest(ctx);
      const path = resolve(req.path);
      const queue = new AsyncQueue<WatchEvent | "keepalive" | Error>();
      const handle = await exec
        .watch(
          path,
          {
            recursive: req.recursive,
            includeEntry: req.includeEntry,
            allowNetworkMounts: req.allowNetworkMounts,
          },
          (ev) => {
            if (queue.size < MAX_QUEUED_WATCH_EVENTS) return queue.push(ev);
            // SECURITY: a client that stops reading cannot make the agent buffer without bound.
            queue.push(new Error(`the client fell more than ${MAX_QUEUED_WATCH_EVENTS} events behind`));
            queue.close();
          },
          (err) => {
            queue.push(err);
            queue.close();
          },
        )
        .catch((err: unknown) => {
          throw fsError(err, path, user.name);
        });
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
            yield { event: { case: "filesystem", value: toEvent(ev) } };
          }
        }
      } finally {
        clearInterval(timer);
        handle.close();
      }
    },

    async createWatcher(req, ctx) {
      const { user, exec, resolve } = await forRequest(ctx);
      const path = resolve(req.path);
      const watcherId = await watchers
        .create(exec, path, {
          recursive: req.recursive,
          includeEntry: req.includeEntry,
          allowNetworkMounts: req.allowNetworkMounts,
        })
        .catch((err: unknown) => {
          throw fsError(err, path, user.name);
        });
      return { watcherId };
    },

    getWatcherEvents(req) {
      const drained = watchers.drain(req.watcherId);
      if (!drained) throw new ConnectError(`watcher '${req.watcherId}' not found`, Code.NotFound);
      if (drained.error && drained.events.length === 0) {
        throw new ConnectError(`watcher '${req.watcherId}' failed: ${drained.error.message}`, Code.Internal);
      }
      return { events: drained.events.map(toEvent) };
    },

    removeWatcher(req) {
      if (!watchers.remove(req.watcherId)) {
        throw new ConnectError(`watcher '${req.watcherId}' not found`, Code.NotFound);
      }
      return {};
    },
  };
}
