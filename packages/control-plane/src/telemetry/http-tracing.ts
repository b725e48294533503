// Every API request is a trace (or a span of the caller's): a server span
// named after the route, a child of the caller's W3C `traceparent` when it
// sends one, active while the request runs so the service's phase spans and
// the node's spans join it. The answer carries `traceparent` (this request's
// span) and `X-Trace-Id`, to look the trace up (GET /v1/traces/{id}).
import { ATTR, contextFromHeaders, tracer } from "@firebreak/node-agent";
import { context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import type { Context, Next } from "hono";
import { routeOf } from "./http-metrics.ts";

const httpTracer = tracer("firebreak-control-plane");

export function httpTracing(opts: { onDone?: (c: Context, route: string, seconds: number) => void } = {}) {
  return async (c: Context, next: Next) => {
    const parent = contextFromHeaders((name) => c.req.header(name));
    const span = httpTracer.startSpan(
      `${c.req.method} ${c.req.path}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "http.request.method": c.req.method,
          "url.path": c.req.path,
          [ATTR.component]: "api",
        },
      },
      parent,
    );
    const sc = span.spanContext();
    const t0 = performance.now();
    try {
      await context.with(trace.setSpan(parent, span), next);
    } finally {
      const route = routeOf(c);
      const status = c.res.status;
      span.updateName(`${c.req.method} ${route}`);
      span.setAttributes({ "http.route": route, "http.response.status_code": status });
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      try {
        c.header("x-trace-id", sc.traceId);
        c.header("traceparent", `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags.toString(16)}`);
      } catch {
        // an answer whose headers cannot change (a relayed stream) goes without them
      }
      span.end();
      opts.onDone?.(c, route, (performance.now() - t0) / 1000);
    }
  };
}
