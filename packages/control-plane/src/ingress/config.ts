// Ingress settings: the domain under which sandbox ports are served
// (`<port>-<sandboxId>.<domain>`), and the names browsers and clients use for
// the access token.

/** The guest agent's port: never served through ingress (the envd proxy has its own auth). */
export const AGENT_PORT = 49983;

/** Path-based URLs for setups without wildcard DNS: `/ingress/<sandboxId>/<port>/<path...>`. */
export const PATH_PREFIX = "/ingress/";

/** Header carrying the sandbox's ingress token (`ingressToken`, ingress-token.ts). */
export const TOKEN_HEADER = "x-firebreak-ingress-token";
/** The same, under the name E2B SDK users send (`trafficAccessToken` of an E2B create). */
export const E2B_TOKEN_HEADER = "e2b-traffic-access-token";
/**
 * The envd access token's header. It does not open ingress (ingress-token.ts),
 * but it is never forwarded to the sandbox's app either.
 */
export const ENVD_TOKEN_HEADER = "x-access-token";
/** Query parameter for browsers: `?token=` (removed before the request reaches the sandbox). */
export const TOKEN_QUERY = "token";
/** Cookie set after a `?token=` request, so a page's later requests (assets, XHR, WebSockets) pass. */
export const TOKEN_COOKIE = "fb_ingress_token";

/**
 * The ingress domain.
 * @default FIREBREAK_INGRESS_DOMAIN or "firebreak.localhost"
 */
export function ingressDomain(env: NodeJS.ProcessEnv = process.env): string {
  const d = (env["FIREBREAK_INGRESS_DOMAIN"] ?? "").trim().toLowerCase().replace(/\.$/, "");
  return d || "firebreak.localhost";
}

/**
 * How long a request without a body waits for a sandbox port that refuses
 * the connection (a server still starting) before it is answered 502.
 * 0 answers at once. @default FIREBREAK_INGRESS_CONNECT_WAIT_MS or 10000
 */
export function ingressConnectWaitMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = (env["FIREBREAK_INGRESS_CONNECT_WAIT_MS"] ?? "").trim();
  if (raw === "") return 10_000;
  const ms = Number(raw);
  if (!Number.isInteger(ms) || ms < 0 || ms > 60_000) {
    throw new Error(
      `FIREBREAK_INGRESS_CONNECT_WAIT_MS must be an integer from 0 to 60000, got ${JSON.stringify(raw)}`,
    );
  }
  return ms;
}
