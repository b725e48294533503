// API fuzzing, in-process over the fake node: every route of /openapi.json and
// of the E2B route table, with valid, boundary and malformed values, hostile
// path parameters, wrong and missing keys, malformed and oversized bodies.
// Promise: no 5xx but the documented 503 CAPACITY_EXHAUSTED, every /v1 answer
// matches /openapi.json, every error has the documented shape, and the
// process survives (no unhandled rejection). Deterministic: a fixed seed
// (FIREBREAK_FUZZ_SEED and FIREBREAK_FUZZ_RUNS override it).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fc from "fast-check";
import { E2B_ROUTES } from "../e2b/routes.ts";
import { inProcess } from "../testing/in-process.ts";
import {
  checkOutcome,
  type FuzzOperation,
  fuzzContext,
  operationsFromE2b,
  operationsFromOpenApi,
  requestArbitrary,
  SchemaArbitraries,
  sendFuzzRequest,
} from "../testing/openapi-fuzz.ts";
import { OpenApiValidator } from "../testing/openapi-validator.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

const SEED = Number(process.env["FIREBREAK_FUZZ_SEED"] ?? 20_260_412);
const RUNS = Number(process.env["FIREBREAK_FUZZ_RUNS"] ?? 3000);

describe("API fuzzing (fake node)", () => {
  let env: Env;
  let validator: OpenApiValidator;
  let doc: unknown;
  let ops: FuzzOperation[];
  const ids: string[] = [];
  const keys: Record<string, string> = {};
  const rejections: unknown[] = [];
  const onRejection = (e: unknown) => rejections.push(e);

  before(async () => {
    process.on("unhandledRejection", onRejection);
    env = await inProcess({ pausedRetentionMs: 3_600_000 });
    env.sandboxes.start();
    doc = await (await env.app.request("/openapi.json")).json();
    validator = new OpenApiValidator(doc);
    ops = [...operationsFromOpenApi(doc), ...operationsFromE2b(E2B_ROUTES)];
    const big = {
      requestsPerMinute: 1_000_000,
      maxSandboxes: 100_000,
      maxVcpus: 1_000_000,
      maxMemoryMib: 1e9,
    };
    const a = await env.tenant(big, ["sandboxes", "templates"]);
    const b = await env.tenant(big, ["sandboxes", "templates"]);
    const admin = await env.tenant(big, ["admin"]);
    keys["a"] = a.key;
    keys["b"] = b.key;
    keys["admin"] = admin.key;
    const revoked = await a.api.post("/v1/keys", { name: "revoked" });
    await a.api.delete(`/v1/keys/${revoked.json.id}`);
    keys["revoked"] = revoked.json.key;
    // A's sandboxes in every state, B's, and B's own template.
    for (let i = 0; i < 3; i++) ids.push((await a.api.post("/v1/sandboxes", {})).json.id);
    await a.api.post(`/v1/sandboxes/${ids[1]}/pause`);
    await a.api.delete(`/v1/sandboxes/${ids[2]}`);
    ids.push((await b.api.post("/v1/sandboxes", {})).json.id);
    const built = await b.api.post("/v1/templates", { spec: { name: "bsecret" } });
    assert.equal(built.json.at(-1).type, "done", built.text);
  });

  after(async () => {
    process.off("unhandledRejection", onRejection);
    await env.close();
  });

  const arbs = () => new SchemaArbitraries(doc);
  const inProcessFetch = async (path: string, init: RequestInit) =>
    env.app.fetch(new Request(`http://in-process${path}`, init));
  const ctx = () =>
    fuzzContext({
      ids,
      keys: { caller: keys["a"]!, admin: keys["admin"]!, other: keys["b"]!, revoked: keys["revoked"]! },
      templateNames: ["base", "bsecret", "nope"],
    });

  test(`every route of /openapi.json and the E2B table, ${RUNS} seeded requests: no 5xx but documented 503s`, async () => {
    assert.ok(ops.some((o) => o.family === "e2b") && ops.some((o) => o.family === "v1"));
    const seen = new Map<string, Set<number>>();
    await fc.assert(
      fc.asyncProperty(requestArbitrary(ops, arbs(), ctx()), async (r) => {
        const o = await sendFuzzRequest(inProcessFetch, r);
        if (!o) return;
        const key = `${r.op.method} ${r.op.path}`;
        seen.set(key, (seen.get(key) ?? new Set()).add(o.status));
        // New sandboxes join the pool of ids the next requests use.
        const made = o.json as { id?: string; sandboxID?: string } | undefined;
        if (o.status === 201 && (made?.id || made?.sandboxID)) ids.push((made.id ?? made.sandboxID)!);
        const problem = checkOutcome(o, r, validator);
        assert.equal(
          problem,
          undefined,
          `${r.method} ${r.url}\n${JSON.stringify(r.headers)}\n${String(r.body ?? "").slice(0, 300)}\n-> ${problem}`,
        );
      }),
      { seed: SEED, numRuns: RUNS, endOnFailure: true },
    );
    // Every operation was exercised, and most reached past authentication.
    for (const op of ops)
      assert.ok(seen.has(`${op.method} ${op.path}`), `${op.method} ${op.path} was never fuzzed`);
    assert.deepEqual(rejections, []);
  });

  test("bodies over 1 MiB on every route with a JSON body: 413, with or without Content-Length", async () => {
    const huge = JSON.stringify({ pad: "x".repeat(1024 * 1024) });
    for (const op of ops) {
      if (op.method === "GET" || op.method === "DELETE") continue;
      if (op.body && op.body.contentType !== "application/json") continue; // raw uploads stream (files PUT)
      const path = op.path.replace(/\{(\w+)\}/g, (_m, n: string) =>
        n === "id" ? ids[0]! : n === "port" ? "8000" : "1",
      );
      const headers = {
        "content-type": "application/json",
        ...(op.family === "e2b"
          ? { "x-api-key": keys["a"]!.replace(/^fb_/, "e2b_") }
          : { authorization: `Bearer ${keys["a"]}` }),
      };
      for (const chunked of [false, true]) {
        const body = chunked
          ? new ReadableStream({
              start(ctl) {
                const bytes = new TextEncoder().encode(huge);
                for (let i = 0; i < bytes.length; i += 65_536) ctl.enqueue(bytes.subarray(i, i + 65_536));
                ctl.close();
              },
            })
          : huge;
        const res = await env.app.fetch(
          new Request(`http://in-process${path}`, {
            method: op.method,
            headers,
            body,
            ...(chunked ? { duplex: "half" } : {}),
          } as RequestInit),
        );
        const text = await res.text();
        assert.equal(res.status, 413, `${op.method} ${path} (chunked: ${chunked}): ${text.slice(0, 200)}`);
      }
    }
    assert.deepEqual(rejections, []);
  });

  test("after the fuzzing the server still answers and still creates sandboxes", async () => {
    assert.equal((await env.app.request("/v1/health")).status, 200);
    // The fuzzer may have deleted base with the admin key: build it again.
    const admin = env.api.withKey(keys["admin"]);
    assert.equal((await admin.post("/v1/templates", { name: "base" })).json.at(-1).type, "done");
    const t = await env.tenant();
    assert.equal((await t.api.post("/v1/sandboxes", {})).status, 201);
  });
});
