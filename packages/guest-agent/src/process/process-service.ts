import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { processPb } from "@firebreak/protocol";
import { toFsOpError } from "../filesystem/fs-op-error.ts";
import type { FileExecutors } from "../fs-worker/worker-pool.ts";
import type { AgentState } from "../identity/agent-state.ts";
import { resolveUserPath } from "../identity/paths.ts";
import type { UserInfo } from "../identity/users.ts";
import { AsyncQueue } from "./async-queue.ts";
import { type ManagedProcess, type ProcessEvent, ProcessInputError } from "./managed-process.ts";
import type { ProcessTable, Selector } from "./process-table.ts";
import { onlyRootCanRedirect } from "./protected-path.ts";

type Process = typeof processPb.Process;
type EventInit = MessageInitShape<typeof processPb.ProcessEventSchema>;

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_KEEPALIVE_MS = 30_000;

export type ProcessServiceDeps = {
  state: AgentState;
  table: ProcessTable;
  /** The user the request acts as (from its Authorization header). */
  userFor: (ctx: HandlerContext) => Promise<UserInfo>;
  /** Checks the cwd with the user's own rights. */
  executors: FileExecutors;
};

/** Environment of a new process: login basics, then the sandbox's env, then the request's. */
export function buildProcessEnv(
  user: UserInfo,
  cwd: string,
  sandboxEnv: Record<string, string>,
  requestEnv: Record<string, string>,
  pty: boolean,
): Record<string, string> {
  const env: Record<string, string> = {
    PATH: DEFAULT_PATH,
    HOME: user.home,
    USER: user.name,
    LOGNAME: user.name,
    SHELL: user.shell,
    PWD: cwd,
  };
  if (pty) env["TERM"] = "xterm-256color";
  return { ...env, ...sandboxEnv, ...requestEnv };
}

function selectorOf(sel: processPb.ProcessSelector | undefined): Selector {
  const s = sel?.selector;
  if (s?.case === "pid") return { pid: s.value };
  if (s?.case === "tag") return { tag: s.value };
  throw new ConnectError("process selector must name a pid or a tag", Code.InvalidArgument);
}

function describeSelector(sel: Selector): string {
  return "pid" in sel ? `pid ${sel.pid}` : `tag '${sel.tag}'`;
}

function inputError(err: unknown): never {
  if (err instanceof ProcessInputError) throw new ConnectError(err.message, Code.FailedPrecondition);
  throw err;
}

/** Milliseconds between keepalive events: the SDK's `Keepalive-Ping-Interval` (seconds) header. */
export function keepaliveIntervalMs(header: string | null): number {
  const s = Number(header);
  if (!header || !Number.isFinite(s) || s <= 0) return DEFAULT_KEEPALIVE_MS;
  return Math.max(1000, Math.round(s * 1000));
}

function toEvent(ev: ProcessEvent): EventInit {
  if (ev.type === "end") {
    const end = { exitCode: ev.exitCode, exited: ev.exited, status: ev.status, error: ev.error };
    return { event: { case: "end", value: end } };
  }
  return { event: { case: "data", value: { output: { case: ev.type, value: ev.data } } } };
}

/**
 * Streams a process's events: start, then output as it arrives, keepalives, end.
 * The subscription is taken before the first yield so no output is lost.
 */
async function* streamProcess(
  proc: ManagedProcess,
  ctx: HandlerContext,
): AsyncGenerator<{ event: EventInit }> {
  const queue = new AsyncQueue<ProcessEvent | "keepalive">();
  const unsubscribe = proc.subscribe((ev) => {
    queue.push(ev);
    if (ev.type === "end") queue.close();
  });
  if (proc.ended) {
    queue.push(proc.ended);
    queue.close();
  }
  const timer = setInterval(
    () => queue.push("keepalive"),
    keepaliveIntervalMs(ctx.requestHeader.get("keepalive-ping-interval")),
  );
  try {
    yield { event: { event: { case: "start", value: { pid: proc.pid } } } };
    for await (const ev of queue.drain(ctx.signal)) {
      yield { event: ev === "keepalive" ? { event: { case: "keepalive", value: {} } } : toEvent(ev) };
    }
  } finally {
    clearInterval(timer);
    unsubscribe();
  }
}

export function createProcessService(deps: ProcessServiceDeps): Partial<ServiceImpl<Process>> {
  const { state, table } = deps;

  const mustFind = (sel: processPb.ProcessSelector | undefined): ManagedProcess => {
    const s = selectorOf(sel);
    const p = table.find(s);
    if (!p) throw new ConnectError(`process with ${describeSelector(s)} not found`, Code.NotFound);
    return p;
  };

  return {
    async *start(req, ctx) {
      const cfg = req.process;
      if (!cfg || cfg.cmd === "") throw new ConnectError("process.cmd is required", Code.InvalidArgument);
      const user = await deps.userFor(ctx);
      const identity = state.identity;
      const cwd = resolveUserPath(cfg.cwd ?? (identity?.defaultWorkdir || user.home), user.home);
      // SECURITY: the spawn changes directory before it drops to the user, so the
      // cwd is checked first with the user's own rights (a symlink is followed as
      // the user): a user cannot start in a directory it could not enter.
      // The home needs no check when only root could redirect it (saves a round trip
      // to the user's file worker on most commands).
      try {
        if (cwd !== user.home || !(await onlyRootCanRedirect(cwd))) {
          await deps.executors.for(user).checkEnterable(cwd);
        }
      } catch (err) {
        const code = toFsOpError(err, cwd).code;
        if (code === "EACCES" || code === "EPERM") {
          throw new ConnectError(
            `permission denied: user '${user.name}' may not enter '${cwd}'`,
            Code.PermissionDenied,
          );
        }
        throw new ConnectError(`cwd '${cwd}' does not exist or is not a directory`, Code.InvalidArgument);
      }
      // The client may have gone (or its deadline passed) during the check: start nothing then.
      if (ctx.signal.aborted) throw ConnectError.from(ctx.signal.reason);
      const pty = req.pty?.size
        ? { cols: req.pty.size.cols, rows: req.pty.size.rows }
        : req.pty
          ? { cols: 80, rows: 24 }
          : undefined;
      const asRoot = process.getuid?.() === 0;
      let proc: ManagedProcess;
      try {
        proc = await table.start({
          cmd: cfg.cmd,
          args: cfg.args,
          env: buildProcessEnv(user, cwd, identity?.envVars ?? {}, cfg.envs, pty !== undefined),
          cwd,
          // Only root can switch users; a non-root agent (tests) runs commands as itself.
          uid: asRoot ? user.uid : undefined,
          gid: asRoot ? user.gid : undefined,
          stdin: req.stdin === true,
          pty,
          tag: req.tag,
          config: { cmd: cfg.cmd, args: [...cfg.args], envs: { ...cfg.envs }, cwd: cfg.cwd },
        });
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        const code = e.code === "ENOENT" || e.code === "EACCES" ? Code.InvalidArgument : Code.Internal;
        throw new ConnectError(`failed to start '${cfg.cmd}': ${e.message}`, code);
      }
      yield* streamProcess(proc, ctx);
    },

    async *connect(req, ctx) {
      yield* streamProcess(mustFind(req.process), ctx);
    },

    list() {
      return {
        processes: table.list().map((p) => ({ pid: p.pid, tag: p.tag, config: p.config })),
      };
    },

    sendInput(req) {
      const p = mustFind(req.process);
      const input = req.input?.input;
      if (!input?.case) throw new ConnectError("input must carry stdin or pty bytes", Code.InvalidArgument);
      try {
        p.write(input.value, input.case);
      } catch (err) {
        inputError(err);
      }
      return {};
    },

    async streamInput(reqs) {
      let target: ManagedProcess | undefined;
      for await (const req of reqs) {
        const ev = req.event;
        if (ev.case === "start") {
          target = mustFind(ev.value.process);
        } else if (ev.case === "data") {
          if (!target)
            throw new ConnectError("the first StreamInput message must be start", Code.FailedPrecondition);
          const input = ev.value.input?.input;
          if (!input?.case) continue;
          try {
            target.write(input.value, input.case);
          } catch (err) {
            inputError(err);
          }
        }
      }
      return {};
    },

    sendSignal(req) {
      const p = mustFind(req.process);
      const sig =
        req.signal === processPb.Signal.SIGKILL
          ? "SIGKILL"
          : req.signal === processPb.Signal.SIGTERM
            ? "SIGTERM"
            : undefined;
      if (!sig)
        throw new ConnectError("signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL", Code.InvalidArgument);
      p.signal(sig);
      return {};
    },

    closeStdin(req) {
      const p = mustFind(req.process);
      try {
        p.closeStdin();
      } catch (err) {
        inputError(err);
      }
      return {};
    },

    update(req) {
      const p = mustFind(req.process);
      const size = req.pty?.size;
      if (!size) return {};
      try {
        p.resize(size.cols, size.rows);
      } catch (err) {
        inputError(err);
      }
      return {};
    },
  };
}
