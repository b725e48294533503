/** TCP port the guest agent (E2B's "envd") listens on inside every microVM. */
export const ENVD_PORT = 49983;

/**
 * envd version the platform advertises to E2B SDKs (`envdVersion` in create/connect
 * answers). The SDK gates features on it; the guest agent implements all of them
 * up to this version:
 * - 0.5.7: octet-stream and gzip uploads (older: multipart only);
 * - 0.6.2: file metadata (`X-Metadata-*` upload headers, `EntryInfo.metadata`);
 * - 0.6.3: `includeEntry` on directory watches;
 * - 0.6.4: `allowNetworkMounts` on directory watches (network filesystems refused without it).
 * Raising it promises the features the SDK unlocks at the new version.
 */
export const ENVD_VERSION = "0.6.4";

/** Header carrying the per-sandbox access token on every envd request. */
export const ACCESS_TOKEN_HEADER = "x-access-token";
