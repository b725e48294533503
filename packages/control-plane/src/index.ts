export { createApp } from "./api/app.ts";
export { recoverAdminKey } from "./auth/admin-recovery.ts";
export { type ControlPlaneConfig, DEFAULT_LIMITS, defaultConfig } from "./config.ts";
export { API_ERRORS, ApiError, type ApiErrorCode } from "./errors.ts";
export type { NodeClient } from "./node/node-client.ts";
export { DEFAULT_TENANT_ID, type RunningServer, type ServerOptions, startServer } from "./server.ts";
export type { SandboxState, Scope, Store } from "./store/store.ts";
