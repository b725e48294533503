// API latency and errors as Prometheus metrics: every request is observed
// by method, route (the matched pattern, never the raw path: bounded label
// values) and status; error answers count by their stable error code.
import type { Context, Next } from "hono";
import { routePath } from "hono/route";
import type { ControlPlaneMetrics } from "./metrics.ts";

/** The route a request matched (`/v1/sandboxes/:id`), or "unmatched". */
export function routeOf(c: Context): string {
  const r = routePath(c, -1);
  return !r || r.includes("*") ? "unmatched" : r;
}

export function httpMetrics(metrics: ControlPlaneMetrics) {
  return async (c: Context, next: Next) => {
    const t0 = performance.now();
    try {
      await next();
    } finally {
      metrics.httpDuration.observe(
        { method: c.req.method, route: routeOf(c), status: String(c.res.status) },
        (performance.now() - t0) / 1000,
      );
    }
  };
}
