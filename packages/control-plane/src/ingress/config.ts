// Ingress settings: the domain under which sandbox ports are served
// (`<port>-<sandboxId>.<domain>`), and the names browsers and clients use for
// the access token.

/** The guest agent's port: never served through ingress (the envd proxy has its own auth). */
export const AGENT_PORT = 49983;

/** Path-based URLs for setups without wildcard DNS: `/ingress/<sandboxId>/<port>/<path...>`. */
export const PATH_PREFIX = "/ingress/";

/** Header carrying the sandbox's access token (`envdAccessToken`), as for the envd proxy. */
export const TOKEN_HEADER = "x-access-token";
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
