/** TCP port the guest agent (E2B's "envd") listens on inside every microVM. */
export const ENVD_PORT = 49983;

/**
 * envd version the platform advertises to E2B SDKs (`envdVersion` in create/connect
 * answers). 0.5.7 or later keeps the SDK off its legacy code paths (octet-stream
 * uploads, stdin close, per-user auth header).
 */
export const ENVD_VERSION = "0.5.7";

/** Header carrying the per-sandbox access token on every envd request. */
export const ACCESS_TOKEN_HEADER = "x-access-token";
