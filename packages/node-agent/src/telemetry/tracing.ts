// OpenTelemetry tracing for every Firebreak process (control plane and node
// daemon): the official JS SDK, one tracer provider per process, W3C trace
// context across processes, AsyncLocalStorage context inside one.
//
// Where spans go:
// - always: `RecentTraces`, the last N traces in this process's memory, so a
//   single-machine user reads them from the API without a collector;
// - also over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or
//   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set (batched; the exporter reads
//   the standard OTEL_EXPORTER_OTLP_* variables itself).
import {
  type Attributes,
  type Context,
  context,
  propagation,
  ROOT_CONTEXT,
  type Span,
  type SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  type ReadableSpan,
  type SpanProcessor,
  TracerProvider,
} from "@opentelemetry/sdk-trace";
import { RecentTraces } from "./recent-traces.ts";

export type { SpanJson, TraceJson } from "./recent-traces.ts";
export { RecentTraces };

/** Attribute names Firebreak puts on its spans. */
export const ATTR = {
  sandboxId: "firebreak.sandbox.id",
  nodeSandboxId: "firebreak.node.sandbox_id",
  tenantId: "firebreak.tenant.id",
  nodeId: "firebreak.node.id",
  template: "firebreak.template",
  startPath: "firebreak.start_path",
  phase: "firebreak.phase",
  component: "firebreak.component",
} as const;

interface Telemetry {
  provider: TracerProvider;
  recent: RecentTraces;
  otlp: boolean;
}

let installed: Telemetry | undefined;

/** Whether spans are also exported over OTLP (an endpoint is configured). */
export function otlpConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env["OTEL_TRACES_EXPORTER"] ?? "").split(",").includes("none")) return false;
  return Boolean(env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] || env["OTEL_EXPORTER_OTLP_ENDPOINT"]);
}

/**
 * Installs the process's tracer provider, context manager and propagator,
 * once (later calls return the first one's store). `keepTraces`: how many
 * traces RecentTraces holds. @default FIREBREAK_TRACE_KEEP or 500
 */
export function initTracing(opts: { keepTraces?: number } = {}): RecentTraces {
  if (installed) return installed.recent;
  const keep = opts.keepTraces ?? Number(process.env["FIREBREAK_TRACE_KEEP"] ?? 500);
  const recent = new RecentTraces({ maxTraces: Number.isFinite(keep) && keep > 0 ? keep : 500 });
  const processors: SpanProcessor[] = [recent];
  const otlp = otlpConfigured();
  if (otlp)
    processors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter(), scheduledDelayMillis: 500 }));
  const provider = new TracerProvider({
    resource: resourceFromAttributes({
      "service.name": process.env["OTEL_SERVICE_NAME"] ?? "firebreak",
      "service.instance.id": `${process.pid}`,
    }),
    spanProcessors: processors,
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  installed = { provider, recent, otlp };
  return recent;
}

/** The process's recent traces (empty store when tracing is not installed). */
export function recentTraces(): RecentTraces {
  return installed?.recent ?? initTracing();
}

/** Sends every finished span to the exporters now (tests; shutdown). */
export async function flushTraces(): Promise<void> {
  await installed?.provider.forceFlush();
}

export function tracer(name: string): Tracer {
  return trace.getTracer(name);
}

/** The trace id of the active span ("" when there is none). */
export function activeTraceId(): string {
  const sc = trace.getActiveSpan()?.spanContext();
  return sc && sc.traceId !== "00000000000000000000000000000000" ? sc.traceId : "";
}

/** W3C trace context headers for the active span (to send with an outgoing call). */
export function traceHeaders(ctx: Context = context.active()): Record<string, string> {
  const out: Record<string, string> = {};
  propagation.inject(ctx, out);
  return out;
}

/** The context a `traceparent` (and `tracestate`) header carries; ROOT when none or malformed. */
export function contextFromHeaders(get: (name: string) => string | null | undefined): Context {
  return propagation.extract(ROOT_CONTEXT, null, {
    keys: () => ["traceparent", "tracestate"],
    get: (_carrier, key) => get(key) ?? undefined,
  });
}

/**
 * Runs fn inside a new active span, ending it when fn settles (an error sets
 * the span's status and is rethrown).
 */
export async function inSpan<T>(
  t: Tracer,
  name: string,
  opts: { attributes?: Attributes; kind?: SpanKind; parent?: Context },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = opts.parent ?? context.active();
  return t.startActiveSpan(
    name,
    {
      ...(opts.attributes ? { attributes: opts.attributes } : {}),
      ...(opts.kind ? { kind: opts.kind } : {}),
    },
    parent,
    async (span) => {
      try {
        return await fn(span);
      } catch (e) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error)?.message ?? String(e) });
        throw e;
      } finally {
        span.end();
      }
    },
  );
}

/**
 * Phases as sibling spans that tile a piece of work without gaps: each
 * `next(name)` ends the current phase and starts the next at the same
 * instant, so their durations add up to the whole. Spans are children of
 * the context active when the clock was made.
 */
export class PhaseClock {
  readonly #tracer: Tracer;
  readonly #parent: Context;
  readonly #attributes: Attributes;
  #current: { span: Span; name: string } | undefined;

  constructor(t: Tracer, attributes: Attributes = {}, parent: Context = context.active()) {
    this.#tracer = t;
    this.#parent = parent;
    this.#attributes = attributes;
  }

  /** Ends the running phase (if any) and starts `name`; returns its context (for child spans). */
  next(name: string, attributes: Attributes = {}): Context {
    const now = performance.timeOrigin + performance.now();
    this.#current?.span.end(now);
    const span = this.#tracer.startSpan(
      name,
      { startTime: now, attributes: { ...this.#attributes, [ATTR.phase]: name, ...attributes } },
      this.#parent,
    );
    this.#current = { span, name };
    return trace.setSpan(this.#parent, span);
  }

  /** Runs fn inside phase `name` (its spans become the phase's children). */
  async phase<T>(name: string, fn: () => Promise<T>, attributes: Attributes = {}): Promise<T> {
    const ctx = this.next(name, attributes);
    return context.with(ctx, fn);
  }

  /** Sets an attribute on the running phase. */
  set(key: string, value: string | number | boolean): void {
    this.#current?.span.setAttribute(key, value);
  }

  /** Ends the running phase; `error` marks it failed. */
  end(error?: unknown): void {
    if (!this.#current) return;
    if (error !== undefined) {
      this.#current.span.setStatus({
        code: SpanStatusCode.ERROR,
        message: (error as Error)?.message ?? String(error),
      });
    }
    this.#current.span.end(performance.timeOrigin + performance.now());
    this.#current = undefined;
  }
}

/**
 * Records finished phases measured elsewhere (the node runtime's laps) as
 * spans with their own start and end times, children of `parent`.
 * `startMs` is a performance.now() reading.
 */
export function recordPhases(
  t: Tracer,
  parent: Context,
  startMs: number,
  phases: Record<string, number>,
  attributes: Attributes = {},
): void {
  let at = startMs;
  for (const [name, ms] of Object.entries(phases)) {
    const start = performance.timeOrigin + at;
    const span = t.startSpan(
      name,
      { startTime: start, attributes: { ...attributes, [ATTR.phase]: name } },
      parent,
    );
    at += ms;
    span.end(performance.timeOrigin + at);
  }
}

/** Milliseconds of a finished span. */
export function spanMs(s: ReadableSpan): number {
  return s.duration[0] * 1e3 + s.duration[1] / 1e6;
}
