import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { ACCESS_TOKEN_HEADER } from "@firebreak/protocol/envd";
import { syncClock } from "../control/system.ts";
import type { FileExecutors } from "../fs-worker/worker-pool.ts";
import { type AgentState, authFailureMessage } from "../identity/agent-state.ts";
import { fileSignature, tokensEqual, userFromAuthorization } from "../identity/auth.ts";
import { resolveRequestUser, UnknownUserError } from "../identity/request-user.ts";
import type { UserInfo } from "../identity/users.ts";
import { ProcessTable } from "../process/process-table.ts";
import { downloadFile, type FilesContext, uploadFiles } from "./files-route.ts";
import { mergeHttpInit, parseHttpInit, readJsonBody } from "./init-route.ts";
import { sendError } from "./respond.ts";
import type { RpcHandler } from "./rpc-handler.ts";

export type AgentServerOptions = {
  state: AgentState;
  /**
   * True when no control channel is configured. Only then may the first POST /init
   * arrive without a token (E2B's own behaviour); in a VM the control channel is the
   * only way to give the agent its first identity.
   */
  standalone: boolean;
  /** Runs each request's file operations as the request's user. */
  executors: FileExecutors;
};

export type AgentServer = {
  server: ReturnType<typeof createServer>;
  table: ProcessTable;
  /** Loads the Connect handler now instead of on the first RPC. */
  preload: () => Promise<unknown>;
};

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

export function createAgentServer(opts: AgentServerOptions): AgentServer {
  const { state } = opts;
  const table = new ProcessTable();
  let rpc: Promise<RpcHandler> | undefined;
  const loadRpc = () => {
    rpc ??= import("./rpc-handler.ts").then((m) => m.createRpcHandler(state, table, opts.executors));
    return rpc;
  };

  /**
   * SECURITY: REST authentication. A request passes with the sandbox's access
   * token, or (for /files only) with a valid unexpired E2B URL signature.
   */
  const restAuthorised = (req: IncomingMessage, url: URL, res: ServerResponse): boolean => {
    const verdict = state.authorise(header(req, ACCESS_TOKEN_HEADER));
    if (verdict.ok) return true;
    if (
      verdict.reason !== "not-initialised" &&
      url.pathname === "/files" &&
      url.searchParams.has("signature")
    ) {
      const token = state.identity?.accessToken ?? "";
      const expRaw = url.searchParams.get("signature_expiration");
      const expiration = expRaw === null ? undefined : Number(expRaw);
      const op = req.method === "GET" ? "read" : "write";
      const expected = fileSignature(
        url.searchParams.get("path") ?? "",
        op,
        url.searchParams.get("username") ?? "",
        token,
        expiration,
      );
      const fresh =
        expiration === undefined || (Number.isFinite(expiration) && expiration * 1000 > Date.now());
      if (fresh && tokensEqual(url.searchParams.get("signature") ?? "", expected)) return true;
      sendError(res, 401, "invalid or expired file signature");
      return false;
    }
    sendError(res, verdict.reason === "not-initialised" ? 503 : 401, authFailureMessage(verdict.reason));
    return false;
  };

  const handleInit = async (req: IncomingMessage, res: ServerResponse) => {
    // SECURITY: before the first identity, only a standalone agent (no control
    // channel) accepts an unauthenticated /init. Afterwards the current token is required.
    const firstStandalone = opts.standalone && state.phase === "awaiting-init";
    if (!firstStandalone) {
      const url = new URL(req.url ?? "/", "http://agent");
      if (!restAuthorised(req, url, res)) return;
    }
    let body: ReturnType<typeof parseHttpInit>;
    try {
      body = parseHttpInit(await readJsonBody(req));
    } catch (err) {
      return sendError(res, 400, `invalid init body: ${(err as Error).message}`);
    }
    state.init(mergeHttpInit(state.identity, body));
    if (body.timestamp) {
      const ms = Date.parse(body.timestamp);
      if (Number.isFinite(ms)) await syncClock(ms).catch(() => {});
    }
    res.writeHead(204).end();
  };

  const handleRest = async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    if (url.pathname === "/init" && req.method === "POST") return handleInit(req, res);
    if (!restAuthorised(req, url, res)) return;
    if (url.pathname === "/files" && (req.method === "GET" || req.method === "POST")) {
      let user: UserInfo;
      try {
        const named = url.searchParams.get("username") || userFromAuthorization(header(req, "authorization"));
        user = await resolveRequestUser(state, named);
      } catch (err) {
        if (err instanceof UnknownUserError) return sendError(res, 401, err.message);
        throw err;
      }
      const path = url.searchParams.get("path");
      const ctx: FilesContext = {
        user,
        exec: opts.executors.for(user),
        defaultWorkdir: state.identity?.defaultWorkdir ?? "",
      };
      if (req.method === "GET") return downloadFile(req, res, path, ctx);
      return uploadFiles(req, res, path, ctx);
    }
    if (url.pathname === "/envs" && req.method === "GET") {
      const body = JSON.stringify(state.identity?.envVars ?? {});
      res.writeHead(200, { "content-type": "application/json" }).end(body);
      return;
    }
    sendError(res, 404, `no route for ${req.method} ${url.pathname}`);
  };

  const server = createServer({ keepAliveTimeout: 65_000, requestTimeout: 0 }, (req, res) => {
    const url = new URL(req.url ?? "/", "http://agent");
    if (url.pathname === "/health" && (req.method === "GET" || req.method === "HEAD")) {
      res.writeHead(204).end();
      return;
    }
    // Connect routes are "/<package>.<Service>/<Method>".
    if (/^\/(process\.Process|filesystem\.Filesystem)\//.test(url.pathname)) {
      loadRpc().then(
        (h) => h.handle(req, res),
        (err: unknown) => {
          console.error("guest-agent: loading the RPC handler failed:", err);
          sendError(res, 500, "internal error");
        },
      );
      return;
    }
    handleRest(req, res, url).catch((err: unknown) => {
      console.error(`guest-agent: ${req.method} ${url.pathname} failed:`, err);
      sendError(res, 500, "internal error");
    });
  });
  server.on("close", () => {
    void rpc?.then((h) => h.close());
  });
  return { server, table, preload: loadRpc };
}
