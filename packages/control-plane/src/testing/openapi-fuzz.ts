// Test support: API fuzzing derived from the API's own description.
//
// Operations come from /openapi.json (every native route) and from the E2B
// route table (src/e2b/routes.ts, whose zod schemas become JSON Schema with
// zod's own converter), so a new route is fuzzed without touching this file.
// Values come from fast-check arbitraries built from each JSON Schema: valid
// values, and hostile ones (boundaries +-1, wrong types, unknown and missing
// fields, path tricks, huge and odd strings). fast-check gives seeded,
// reproducible runs and shrinks a failing request to a small one.
import fc from "fast-check";
import { z } from "zod";

export type JsonSchema = { [k: string]: unknown };

export interface FuzzParam {
  name: string;
  schema: JsonSchema;
  required: boolean;
}

export interface FuzzOperation {
  family: "v1" | "e2b";
  method: string;
  /** Path template with `{name}` parameters. */
  path: string;
  pathParams: string[];
  query: FuzzParam[];
  body?: { schema: JsonSchema; required: boolean; contentType: string };
}

export interface FuzzRequest {
  op: FuzzOperation;
  method: string;
  /** Path and query, as sent. */
  url: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
}

interface OpenApiDoc {
  paths: Record<string, Record<string, OpenApiOperation>>;
  components?: { schemas?: Record<string, JsonSchema> };
}
interface OpenApiOperation {
  parameters?: { name: string; in: string; required?: boolean; schema?: JsonSchema }[];
  requestBody?: { required?: boolean; content?: Record<string, { schema?: JsonSchema }> };
}

/** Every operation of an OpenAPI 3.1 document. */
export function operationsFromOpenApi(doc: unknown): FuzzOperation[] {
  const d = doc as OpenApiDoc;
  const out: FuzzOperation[] = [];
  for (const [path, ops] of Object.entries(d.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const params = op.parameters ?? [];
      const content = op.requestBody?.content ?? {};
      const contentType = Object.keys(content)[0];
      out.push({
        family: "v1",
        method: method.toUpperCase(),
        path,
        pathParams: params.filter((p) => p.in === "path").map((p) => p.name),
        query: params
          .filter((p) => p.in === "query")
          .map((p) => ({ name: p.name, schema: p.schema ?? {}, required: p.required === true })),
        ...(contentType
          ? {
              body: {
                schema: content[contentType]?.schema ?? {},
                required: op.requestBody?.required === true,
                contentType,
              },
            }
          : {}),
      });
    }
  }
  return out;
}

/** E2B's routes (Hono paths with `:param`), their zod bodies and queries converted to JSON Schema. */
export function operationsFromE2b(
  routes: readonly { method: string; path: string; body?: z.ZodType; query?: z.ZodType }[],
): FuzzOperation[] {
  const toSchema = (t: z.ZodType) => z.toJSONSchema(t, { io: "input", unrepresentable: "any" }) as JsonSchema;
  return routes.map((r) => {
    const path = r.path.replace(/:(\w+)/g, "{$1}");
    const query = r.query ? toSchema(r.query) : undefined;
    const props = (query?.["properties"] ?? {}) as Record<string, JsonSchema>;
    const required = new Set((query?.["required"] as string[] | undefined) ?? []);
    return {
      family: "e2b" as const,
      method: r.method,
      path,
      pathParams: [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!),
      query: Object.entries(props).map(([name, schema]) => ({ name, schema, required: required.has(name) })),
      ...(r.body
        ? { body: { schema: toSchema(r.body), required: false, contentType: "application/json" } }
        : {}),
    };
  });
}

/** Strings that have broken servers: traversal, encodings, control and odd Unicode, numbers as text. */
export const NASTY_STRINGS = [
  "",
  " ",
  "..",
  "../../../../etc/passwd",
  "..%2F..%2Fetc%2Fpasswd",
  "%2e%2e%2f",
  "a/b",
  "/",
  "\\",
  "\u0000",
  "a\u0000b",
  "\r\nX-Injected: 1",
  "\u202e",
  "😀",
  "\ud800",
  "null",
  "undefined",
  "NaN",
  "-1",
  "0",
  "1e309",
  "9007199254740993",
  "__proto__",
  "constructor",
  "$(reboot)",
  "' OR 1=1 --",
  "%",
  "%00",
  "?",
  "#",
];

const MAX_DEPTH = 4;

/** Arbitraries for the values of a JSON Schema (OpenAPI 3.1 / 2020-12 subset that zod emits). */
export class SchemaArbitraries {
  readonly #components: Record<string, JsonSchema>;

  constructor(doc?: unknown) {
    this.#components = (doc as OpenApiDoc | undefined)?.components?.schemas ?? {};
  }

  #resolve(s: JsonSchema): JsonSchema {
    let out = s;
    for (let i = 0; i < 10 && typeof out["$ref"] === "string"; i++) {
      const ref = out["$ref"] as string;
      const m = /^#\/components\/schemas\/(.+)$/.exec(ref);
      const target = m ? this.#components[decodeURIComponent(m[1]!)] : undefined;
      out = target ?? {};
    }
    return out;
  }

  /** A value the schema accepts (as far as its keywords say). */
  valid(schema: JsonSchema, depth = 0): fc.Arbitrary<unknown> {
    const s = this.#resolve(schema);
    if ("const" in s) return fc.constant(s["const"]);
    if (Array.isArray(s["enum"]) && s["enum"].length) return fc.constantFrom(...(s["enum"] as unknown[]));
    for (const k of ["anyOf", "oneOf"]) {
      const alts = s[k] as JsonSchema[] | undefined;
      if (Array.isArray(alts) && alts.length) return fc.oneof(...alts.map((a) => this.valid(a, depth + 1)));
    }
    if (Array.isArray(s["allOf"]) && (s["allOf"] as JsonSchema[]).length) {
      return this.valid(
        Object.assign({}, ...(s["allOf"] as JsonSchema[]).map((x) => this.#resolve(x))),
        depth,
      );
    }
    const type = Array.isArray(s["type"]) ? (s["type"] as string[])[0] : (s["type"] as string | undefined);
    switch (type) {
      case "string":
        return this.#string(s);
      case "integer":
      case "number": {
        const min = typeof s["minimum"] === "number" ? (s["minimum"] as number) : -1e6;
        const max = typeof s["maximum"] === "number" ? (s["maximum"] as number) : 1e6;
        const lo = Math.max(min, Number.MIN_SAFE_INTEGER);
        const hi = Math.min(max, Number.MAX_SAFE_INTEGER);
        if (type === "integer")
          return fc.oneof(fc.constantFrom(lo, hi), fc.integer({ min: Math.ceil(lo), max: Math.floor(hi) }));
        return fc.double({ min: lo, max: hi, noNaN: true, noDefaultInfinity: true });
      }
      case "boolean":
        return fc.boolean();
      case "null":
        return fc.constant(null);
      case "array": {
        if (depth > MAX_DEPTH) return fc.constant([]);
        const items = (s["items"] as JsonSchema | undefined) ?? {};
        const minLength = (s["minItems"] as number | undefined) ?? 0;
        const maxLength = Math.max(minLength, Math.min((s["maxItems"] as number | undefined) ?? 4, 4));
        return fc.array(this.valid(items, depth + 1), { minLength, maxLength });
      }
      case "object":
        return this.#object(s, depth);
      default:
        return depth > MAX_DEPTH ? fc.constant(null) : fc.jsonValue({ maxDepth: 2 });
    }
  }

  #string(s: JsonSchema): fc.Arbitrary<string> {
    if (s["format"] === "date-time") {
      return fc
        .date({
          min: new Date("1970-01-01T00:00:00Z"),
          max: new Date("2100-01-01T00:00:00Z"),
          noInvalidDate: true,
        })
        .map((d) => d.toISOString());
    }
    const minLength = (s["minLength"] as number | undefined) ?? 0;
    const maxLength = Math.max(minLength, Math.min((s["maxLength"] as number | undefined) ?? 24, 64));
    if (typeof s["pattern"] === "string") {
      let re: RegExp | undefined;
      try {
        re = new RegExp(s["pattern"] as string);
      } catch {
        re = undefined;
      }
      if (re) return fc.stringMatching(re).filter((x) => x.length >= minLength && x.length <= 4096);
    }
    return fc.string({ minLength, maxLength, unit: "grapheme" });
  }

  #object(s: JsonSchema, depth: number): fc.Arbitrary<Record<string, unknown>> {
    const props = (s["properties"] as Record<string, JsonSchema> | undefined) ?? {};
    const required = (s["required"] as string[] | undefined) ?? [];
    const names = Object.keys(props);
    if (names.length && depth <= MAX_DEPTH) {
      const model: Record<string, fc.Arbitrary<unknown>> = {};
      for (const n of names) model[n] = this.valid(props[n]!, depth + 1);
      return fc.record(model, { requiredKeys: required.filter((r) => r in model) });
    }
    const extra = s["additionalProperties"];
    if (extra && typeof extra === "object" && depth <= MAX_DEPTH) {
      const keys = s["propertyNames"]
        ? (this.valid(s["propertyNames"] as JsonSchema, depth + 1) as fc.Arbitrary<string>)
        : fc.string({ minLength: 1, maxLength: 12 });
      return fc.dictionary(keys, this.valid(extra as JsonSchema, depth + 1), { maxKeys: 4 });
    }
    return fc.constant({});
  }

  /**
   * A value aimed at the schema's edges: mostly valid, else just outside a
   * bound, the wrong type, a required field missing, an unknown field, or
   * something from NASTY_STRINGS, recursively.
   */
  hostile(schema: JsonSchema, depth = 0): fc.Arbitrary<unknown> {
    const s = this.#resolve(schema);
    const wrongType = fc.constantFrom<unknown>(null, true, 0, -1, 1.5, "", "x", [], {}, [null], { a: 1 });
    const edges: fc.Arbitrary<unknown>[] = [wrongType, fc.constantFrom(...NASTY_STRINGS)];
    const type = Array.isArray(s["type"]) ? (s["type"] as string[])[0] : (s["type"] as string | undefined);
    if (type === "integer" || type === "number") {
      const near: number[] = [0, -1, 1.5, -0, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -1e308, Number.MIN_VALUE];
      if (typeof s["minimum"] === "number") near.push((s["minimum"] as number) - 1, s["minimum"] as number);
      if (typeof s["maximum"] === "number") near.push((s["maximum"] as number) + 1, s["maximum"] as number);
      edges.push(fc.constantFrom(...near));
    }
    if (type === "string") {
      const max = s["maxLength"] as number | undefined;
      if (typeof max === "number" && max <= 2 * 1024 * 1024) edges.push(fc.constant("y".repeat(max + 1)));
      const min = s["minLength"] as number | undefined;
      if (typeof min === "number" && min > 0) edges.push(fc.constant("z".repeat(min - 1)));
      edges.push(fc.string({ maxLength: 300, unit: "binary" }));
    }
    if (type === "array" && depth <= MAX_DEPTH) {
      const items = (s["items"] as JsonSchema | undefined) ?? {};
      const max = s["maxItems"] as number | undefined;
      if (typeof max === "number" && max <= 20_000)
        edges.push(fc.constant(Array.from({ length: max + 1 }, () => "a")));
      edges.push(fc.array(this.hostile(items, depth + 1), { maxLength: 4 }));
    }
    if (type === "object" && depth <= MAX_DEPTH) {
      const props = (s["properties"] as Record<string, JsonSchema> | undefined) ?? {};
      const names = Object.keys(props);
      const base = this.valid(s, depth) as fc.Arbitrary<Record<string, unknown>>;
      edges.push(base.map((o) => ({ ...o, unknownField: 1 })));
      edges.push(base.map((o) => JSON.parse(`{"__proto__": {"polluted": true}, "x": ${JSON.stringify(o)}}`)));
      if (names.length) {
        // One field replaced by a hostile value, or removed.
        edges.push(
          fc.tuple(base, fc.constantFrom(...names)).chain(([o, n]) =>
            fc.oneof(
              this.hostile(props[n]!, depth + 1).map((v) => ({ ...o, [n]: v })),
              fc.constant(Object.fromEntries(Object.entries(o).filter(([k]) => k !== n))),
            ),
          ),
        );
      } else {
        const extra = s["additionalProperties"];
        if (extra && typeof extra === "object") {
          edges.push(
            fc.dictionary(fc.constantFrom(...NASTY_STRINGS), this.hostile(extra as JsonSchema, depth + 1), {
              maxKeys: 3,
            }),
          );
        }
      }
    }
    return fc.oneof(
      { weight: 3, arbitrary: this.valid(s, depth) },
      { weight: 2, arbitrary: fc.oneof(...edges) },
    );
  }
}

export interface RequestContext {
  /** Values for a path parameter (known ids, another tenant's, hostile strings). */
  pathParam(name: string, op: FuzzOperation): fc.Arbitrary<string>;
  /** Authentication headers (mostly a valid key of the caller's tenant). */
  auth(op: FuzzOperation): fc.Arbitrary<Record<string, string>>;
  /** Extra headers (X-Firebreak-Sandbox-Token, X-Request-Id, ...). */
  extraHeaders?: fc.Arbitrary<Record<string, string>>;
}

/** A whole request for one of `ops`: path, query, headers and body. */
export function requestArbitrary(
  ops: FuzzOperation[],
  arbs: SchemaArbitraries,
  ctx: RequestContext,
): fc.Arbitrary<FuzzRequest> {
  // One arbitrary per operation, built once (building them is the costly part).
  return fc.oneof(...ops.map((op) => operationArbitrary(op, arbs, ctx)));
}

function operationArbitrary(
  op: FuzzOperation,
  arbs: SchemaArbitraries,
  ctx: RequestContext,
): fc.Arbitrary<FuzzRequest> {
  {
    const params = fc.tuple(
      ...op.pathParams.map((n) =>
        fc.tuple(ctx.pathParam(n, op), fc.integer({ min: 0, max: 9 })).map(([v, r]) =>
          // Mostly encoded; sometimes raw (a raw "/" or ".." changes the path itself).
          r === 0 ? v : encodePathSegment(v),
        ),
      ),
    );
    const query = fc.tuple(
      ...op.query.map((q) =>
        fc
          .option(arbs.hostile(q.schema), { nil: undefined, freq: q.required ? 10 : 2 })
          .map((v) => [q.name, v] as const),
      ),
    );
    const body = op.body ? bodyArbitrary(op.body, arbs) : fc.constant(undefined);
    const extra = ctx.extraHeaders ?? fc.constant({});
    return fc.tuple(params, query, body, ctx.auth(op), extra).map(([ps, qs, b, auth, more]) => {
      let path = op.path;
      op.pathParams.forEach((n, i) => {
        path = path.replace(`{${n}}`, ps[i]!);
      });
      const sp = new URLSearchParams();
      for (const [name, v] of qs) {
        if (v === undefined) continue;
        for (const one of Array.isArray(v) ? v : [v]) {
          sp.append(name, typeof one === "string" ? one : JSON.stringify(one));
        }
      }
      const qstr = sp.toString();
      const headers: Record<string, string> = { ...auth, ...more, ...(b?.headers ?? {}) };
      return {
        op,
        method: op.method,
        url: `${path}${qstr ? `?${qstr}` : ""}`,
        headers,
        ...(b?.body !== undefined ? { body: b.body } : {}),
      };
    });
  }
}

/** Percent-encodes every byte of the UTF-8 form but unreserved characters (lone surrogates included). */
function encodePathSegment(v: string): string {
  let out = "";
  for (const b of Buffer.from(v, "utf8")) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-._~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

function bodyArbitrary(
  body: NonNullable<FuzzOperation["body"]>,
  arbs: SchemaArbitraries,
): fc.Arbitrary<{ body?: string | Uint8Array; headers: Record<string, string> } | undefined> {
  if (body.contentType !== "application/json") {
    return fc
      .oneof(fc.uint8Array({ maxLength: 2048 }), fc.constant(new Uint8Array(0)))
      .map((b) => ({ body: b, headers: { "content-type": body.contentType } }));
  }
  const json = { "content-type": "application/json" };
  return fc.oneof(
    {
      weight: 6,
      arbitrary: arbs.hostile(body.schema).map((v) => ({ body: JSON.stringify(v) ?? "null", headers: json })),
    },
    { weight: 1, arbitrary: fc.constant(undefined) },
    {
      weight: 1,
      arbitrary: fc
        .constantFrom('{"a":', "{", "[", "nul", '{"a":1}}', "\u0000", '"\ud800"', "1e999999")
        .map((t) => ({ body: t, headers: json })),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(
          fc.constantFrom(
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "",
            "multipart/form-data",
          ),
          fc.string({ maxLength: 100 }),
        )
        .map(([ct, t]) => ({
          body: t,
          headers: (ct ? { "content-type": ct } : {}) as Record<string, string>,
        })),
    },
  );
}

// ------------------------------------------------------------- running and checking

export interface FuzzOutcome {
  status: number;
  contentType: string;
  json: unknown;
  text: string;
}

/** How long a streamed text answer (a followed log) is read before the fuzzer hangs up. */
const STREAM_READ_MS = 500;

/**
 * The answer's text. Streams that do not end by themselves are not waited
 * for: an event stream is closed at once (its headers are the answer), a
 * text stream (a followed log) is read for STREAM_READ_MS.
 */
async function readAnswer(res: Response): Promise<string> {
  const type = res.headers.get("content-type") ?? "";
  if (type.startsWith("text/event-stream")) {
    await res.body?.cancel();
    return "";
  }
  if (!type.startsWith("text/plain") || !res.body) return res.text();
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = "";
  const deadline = Date.now() + STREAM_READ_MS;
  try {
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      let timer: NodeJS.Timeout | undefined;
      const next = await Promise.race([
        reader.read(),
        new Promise<undefined>((r) => {
          timer = setTimeout(() => r(undefined), left);
        }),
      ]);
      clearTimeout(timer);
      if (!next || next.done) break;
      text += dec.decode(next.value, { stream: true });
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return text;
}

/**
 * Sends a fuzzed request with `fetcher` (path and init) and reads the whole
 * answer. Undefined when the request cannot even be built (a header value no
 * client could send) or, with `timeoutMs`, when no answer came in time.
 */
export async function sendFuzzRequest(
  fetcher: (path: string, init: RequestInit) => Promise<Response>,
  r: FuzzRequest,
  timeoutMs?: number,
): Promise<FuzzOutcome | undefined> {
  let init: RequestInit;
  try {
    init = {
      method: r.method,
      headers: new Headers(r.headers),
      ...(r.body !== undefined ? { body: r.body as RequestInit["body"] & object } : {}),
      ...(timeoutMs ? { signal: AbortSignal.timeout(timeoutMs) } : {}),
    };
    new Request(`http://x${r.url}`, init);
  } catch {
    return undefined;
  }
  let res: Response;
  let text: string;
  try {
    res = await fetcher(r.url, init);
    text = await readAnswer(res);
  } catch (e) {
    if (timeoutMs && (e as Error).name === "TimeoutError") return undefined;
    throw e;
  }
  const contentType = res.headers.get("content-type") ?? "";
  let json: unknown;
  if (contentType.startsWith("application/json")) json = JSON.parse(text);
  else if (contentType.startsWith("application/x-ndjson"))
    json = text
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
  return { status: res.status, contentType, json, text };
}

/**
 * What every answer must satisfy; a message when it does not.
 * INVARIANT (docs/API.md, Errors): no 5xx but the documented 503s (CAPACITY_EXHAUSTED,
 * NODE_UNAVAILABLE), E2B's 501 for features not served, and with
 * `allowSandbox502` the 502s that come from a sandbox itself; errors in the
 * native or E2B shape; /v1 answers as /openapi.json documents them.
 */
export function checkOutcome(
  o: FuzzOutcome,
  r: FuzzRequest,
  validator: {
    documents(m: string, p: string): boolean;
    validate(m: string, p: string, s: number, ct: string, b: unknown): void;
  },
  opts: { allowSandbox502?: boolean } = {},
): string | undefined {
  const j = o.json as Record<string, unknown> | undefined;
  const native = j?.["error"] as Record<string, unknown> | undefined;
  const code = native?.["code"] ?? j?.["code"];
  if (o.status >= 500) {
    const capacity =
      o.status === 503 && (code === "CAPACITY_EXHAUSTED" || code === "NODE_UNAVAILABLE" || code === 503);
    const sandbox =
      opts.allowSandbox502 === true &&
      o.status === 502 &&
      (code === "AGENT_ERROR" || code === "SANDBOX_BOOT_FAILED" || code === 502);
    // E2B features Firebreak does not serve answer 501 in E2B's shape, naming the feature.
    const notServed = o.status === 501 && code === 501;
    if (!capacity && !sandbox && !notServed) return `${o.status} ${o.text.slice(0, 300)}`;
  }
  if (o.status >= 400) {
    const nativeOk =
      typeof native?.["code"] === "string" &&
      typeof native["message"] === "string" &&
      typeof native["requestId"] === "string";
    const e2bOk = j?.["code"] === o.status && typeof j["message"] === "string";
    if (!nativeOk && !e2bOk) return `error without the documented shape: ${o.status} ${o.text.slice(0, 300)}`;
  }
  const pathname = new URL(`http://x${r.url}`).pathname;
  if (validator.documents(r.method, pathname)) {
    try {
      validator.validate(r.method, pathname, o.status, o.contentType, o.json);
    } catch (e) {
      return (e as Error).message;
    }
  }
  return undefined;
}

/**
 * Path parameters, keys and headers for a fuzz run: ids from `ids` (read when
 * a value is drawn, so ids created during the run are used too), the keys of
 * the caller's tenant, an admin, another tenant and a revoked key, no key,
 * and garbage.
 */
export function fuzzContext(world: {
  ids: string[];
  keys: { caller: string; admin: string; other: string; revoked: string };
  templateNames: string[];
}): RequestContext {
  const hostile = fc.oneof(fc.constantFrom(...NASTY_STRINGS), fc.string({ maxLength: 80 }));
  const pathParam = (name: string): fc.Arbitrary<string> => {
    switch (name) {
      case "id":
        return fc.oneof(
          { weight: 6, arbitrary: fc.nat().map((i) => world.ids[i % world.ids.length] ?? "none") },
          // Not the ids of the keys the fuzzer uses (revoking them would end the run's coverage).
          { weight: 1, arbitrary: fc.constantFrom("key_nope", "default", "x".repeat(300)) },
          { weight: 2, arbitrary: hostile },
        );
      case "pid":
        return fc.oneof(fc.integer({ min: -5, max: 70_000 }).map(String), hostile);
      case "port":
        return fc.oneof(fc.constantFrom("8000", "49983", "0", "65535", "65536", "-1", "1e3"), hostile);
      case "name":
        return fc.oneof(
          fc.constantFrom(...world.templateNames, "postgres.internal"),
          fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,39}$/),
          hostile,
        );
      default:
        return hostile;
    }
  };
  const auth = (op: FuzzOperation): fc.Arbitrary<Record<string, string>> => {
    const asHeader = (k: string): Record<string, string> =>
      op.family === "e2b" ? { "x-api-key": k.replace(/^fb_/, "e2b_") } : { authorization: `Bearer ${k}` };
    return fc.oneof(
      { weight: 10, arbitrary: fc.constant(asHeader(world.keys.caller)) },
      { weight: 2, arbitrary: fc.constant(asHeader(world.keys.admin)) },
      { weight: 1, arbitrary: fc.constant(asHeader(world.keys.other)) },
      { weight: 1, arbitrary: fc.constant(asHeader(world.keys.revoked)) },
      { weight: 1, arbitrary: fc.constant({} as Record<string, string>) },
      {
        weight: 1,
        arbitrary: fc
          .string({ maxLength: 100 })
          .map((s) => ({ authorization: `Bearer ${s}`, "x-api-key": s }) as Record<string, string>),
      },
    );
  };
  const extraHeaders = fc.record(
    {
      "x-firebreak-sandbox-token": fc.oneof(fc.constant("fbs_nope"), hostile),
      "x-request-id": fc.string({ maxLength: 80 }),
    },
    { requiredKeys: [] },
  );
  return { pathParam, auth, extraHeaders };
}
