// The last N traces of this process, kept in memory: a span processor that
// turns every finished span into JSON and files it under its trace. Bounded:
// at most `maxTraces` traces (the least recently touched go first) and
// `maxSpansPerTrace` spans each (later spans of a full trace are counted,
// not kept). Indexed by the sandbox ids on their spans.
import type { Context } from "@opentelemetry/api";
import type { ReadableSpan, Span, SpanProcessor } from "@opentelemetry/sdk-trace";

export interface SpanJson {
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  name: string;
  /** internal | server | client | producer | consumer */
  kind: string;
  /** The instrumentation scope: firebreak-control-plane, firebreak-node. */
  scope: string;
  startTime: string;
  endTime: string;
  /** Start as milliseconds since the epoch (fractional). */
  startMs: number;
  durationMs: number;
  status: "unset" | "ok" | "error";
  statusMessage?: string;
  attributes: Record<string, unknown>;
  events: { name: string; time: string; attributes: Record<string, unknown> }[];
}

export interface TraceJson {
  traceId: string;
  /** The root span's name (the earliest span when the root is elsewhere). */
  name: string;
  startTime: string;
  durationMs: number;
  spans: SpanJson[];
  /** Spans not kept because the trace was full. */
  droppedSpans: number;
}

const KINDS = ["internal", "server", "client", "producer", "consumer"];

function hrMs(t: [number, number]): number {
  return t[0] * 1e3 + t[1] / 1e6;
}

export function spanToJson(s: ReadableSpan): SpanJson {
  const sc = s.spanContext();
  const startMs = hrMs(s.startTime);
  const endMs = hrMs(s.endTime);
  return {
    traceId: sc.traceId,
    spanId: sc.spanId,
    parentSpanId: s.parentSpanContext?.spanId ?? null,
    name: s.name,
    kind: KINDS[s.kind] ?? "internal",
    scope: s.instrumentationScope.name,
    startTime: new Date(startMs).toISOString(),
    endTime: new Date(endMs).toISOString(),
    startMs: Math.round(startMs * 1000) / 1000,
    durationMs: Math.round(hrMs(s.duration) * 1000) / 1000,
    status: s.status.code === 2 ? "error" : s.status.code === 1 ? "ok" : "unset",
    ...(s.status.message ? { statusMessage: s.status.message } : {}),
    attributes: { ...s.attributes },
    events: s.events.map((e) => ({
      name: e.name,
      time: new Date(hrMs(e.time)).toISOString(),
      attributes: { ...(e.attributes ?? {}) },
    })),
  };
}

interface Entry {
  spans: SpanJson[];
  dropped: number;
  sandboxes: Set<string>;
}

/** Builds a trace's summary from its spans (any order; duplicates by span id removed). */
export function assembleTrace(traceId: string, spans: SpanJson[], dropped = 0): TraceJson {
  const seen = new Set<string>();
  const unique = spans
    .filter((s) => (seen.has(s.spanId) ? false : (seen.add(s.spanId), true)))
    .sort((a, b) => a.startMs - b.startMs);
  const ids = new Set(unique.map((s) => s.spanId));
  const root = unique.find((s) => !s.parentSpanId || !ids.has(s.parentSpanId)) ?? unique[0];
  const start = Math.min(...unique.map((s) => s.startMs));
  const end = Math.max(...unique.map((s) => s.startMs + s.durationMs));
  return {
    traceId,
    name: root?.name ?? "",
    startTime: unique.length ? new Date(start).toISOString() : "",
    durationMs: unique.length ? Math.round((end - start) * 1000) / 1000 : 0,
    spans: unique,
    droppedSpans: dropped,
  };
}

export class RecentTraces implements SpanProcessor {
  readonly maxTraces: number;
  readonly maxSpansPerTrace: number;
  /** Insertion order is recency: a new span moves its trace to the end. */
  readonly #traces = new Map<string, Entry>();
  readonly #bySandbox = new Map<string, string[]>();

  constructor(opts: { maxTraces?: number; maxSpansPerTrace?: number } = {}) {
    this.maxTraces = opts.maxTraces ?? 500;
    this.maxSpansPerTrace = opts.maxSpansPerTrace ?? 1000;
  }

  onStart(_span: Span, _ctx: Context): void {}

  onEnd(span: ReadableSpan): void {
    this.add(spanToJson(span));
  }

  /** Files one finished span (also used for spans fetched from a node). */
  add(s: SpanJson): void {
    let e = this.#traces.get(s.traceId);
    if (e) this.#traces.delete(s.traceId);
    else e = { spans: [], dropped: 0, sandboxes: new Set() };
    this.#traces.set(s.traceId, e);
    if (e.spans.length >= this.maxSpansPerTrace) e.dropped++;
    else e.spans.push(s);
    for (const key of ["firebreak.sandbox.id", "firebreak.node.sandbox_id"]) {
      const id = s.attributes[key];
      if (typeof id !== "string" || e.sandboxes.has(id)) continue;
      e.sandboxes.add(id);
      const list = this.#bySandbox.get(id) ?? [];
      list.push(s.traceId);
      if (list.length > 64) list.shift();
      this.#bySandbox.set(id, list);
    }
    // INVARIANT: at most maxTraces traces are held (memory is bounded).
    while (this.#traces.size > this.maxTraces) {
      const [oldest, old] = this.#traces.entries().next().value as [string, Entry];
      this.#traces.delete(oldest);
      for (const id of old.sandboxes) {
        const left = (this.#bySandbox.get(id) ?? []).filter((t) => t !== oldest);
        if (left.length) this.#bySandbox.set(id, left);
        else this.#bySandbox.delete(id);
      }
    }
  }

  /** The spans of one trace, as recorded here (undefined: not held). */
  get(traceId: string): TraceJson | undefined {
    const e = this.#traces.get(traceId);
    return e ? assembleTrace(traceId, e.spans, e.dropped) : undefined;
  }

  /** Spans of a trace (raw; for a node's Spans call). */
  spans(traceId: string): SpanJson[] {
    return [...(this.#traces.get(traceId)?.spans ?? [])];
  }

  /** Trace ids that touched a sandbox (the control plane's or a node's id), oldest first. */
  traceIdsOf(sandboxId: string): string[] {
    return [...(this.#bySandbox.get(sandboxId) ?? [])];
  }

  get size(): number {
    return this.#traces.size;
  }

  async forceFlush(): Promise<void> {}
  async shutdown(): Promise<void> {}
}
