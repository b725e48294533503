import type { ServerResponse } from "node:http";
import { Code, ConnectError, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Filesystem, Process } from "@firebreak/protocol";
import { ACCESS_TOKEN_HEADER } from "@firebreak/protocol/envd";
import { createFilesystemService } from "../filesystem/filesystem-service.ts";
import { WatcherRegistry } from "../filesystem/watcher-registry.ts";
import type { FileExecutors } from "../fs-worker/worker-pool.ts";
import { type AgentState, authFailureMessage } from "../identity/agent-state.ts";
import { userFromAuthorization } from "../identity/auth.ts";
import { resolveRequestUser, UnknownUserError } from "../identity/request-user.ts";
import type { UserInfo } from "../identity/users.ts";
import { createProcessService } from "../process/process-service.ts";
import type { ProcessTable } from "../process/process-table.ts";
import { sendError } from "./respond.ts";

export type RpcHandler = {
  handle: (req: import("node:http").IncomingMessage, res: ServerResponse) => void;
  close: () => void;
};

/**
 * The Connect side of the agent (process.Process, filesystem.Filesystem). Loaded
 * on the first RPC so that start-up (and `ready`) does not pay for Connect and the
 * protobuf descriptors: inside the VM the CPU is emulated and every ms counts.
 */
export function createRpcHandler(
  state: AgentState,
  table: ProcessTable,
  executors: FileExecutors,
): RpcHandler {
  const watchers = new WatcherRegistry();

  const userFor = async (ctx: HandlerContext): Promise<UserInfo> => {
    try {
      return await resolveRequestUser(state, userFromAuthorization(ctx.requestHeader.get("authorization")));
    } catch (err) {
      if (err instanceof UnknownUserError) throw new ConnectError(err.message, Code.Unauthenticated);
      throw err;
    }
  };

  // SECURITY: every RPC passes through this check of X-Access-Token (constant time).
  const authInterceptor: Interceptor = (next) => async (req) => {
    const verdict = state.authorise(req.header.get(ACCESS_TOKEN_HEADER));
    if (!verdict.ok) {
      const code = verdict.reason === "not-initialised" ? Code.Unavailable : Code.Unauthenticated;
      throw new ConnectError(authFailureMessage(verdict.reason), code);
    }
    return next(req);
  };

  const handle = connectNodeAdapter({
    connect: true,
    grpc: false,
    grpcWeb: false,
    interceptors: [authInterceptor],
    jsonOptions: { ignoreUnknownFields: true },
    routes(router) {
      router.service(Process, createProcessService({ state, table, userFor, executors }));
      router.service(Filesystem, createFilesystemService({ state, watchers, executors, userFor }));
    },
    fallback(_req, res) {
      sendError(res as ServerResponse, 404, "no such route");
    },
  });
  return { handle, close: () => watchers.closeAll() };
}
