// Traces through the API (in-process, fake node): every request is a span
// joined to the caller's traceparent; a create's phases are spans that tile
// it without gaps; the last traces are served by GET /v1/traces/{id} and GET
// /v1/sandboxes/{id}/trace, each tenant seeing its own spans only.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import type { SpanJson } from "@firebreak/node-agent";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

const hex = (bytes: number) => randomBytes(bytes).toString("hex");

/** A request with a caller's traceparent, through the app (the ApiClient does not send headers of its own). */
async function call(
  env: Env,
  key: string,
  method: string,
  path: string,
  traceparent?: string,
  body?: unknown,
) {
  const r = await env.app.request(path, {
    method,
    headers: {
      authorization: `Bearer ${key}`,
      ...(traceparent ? { traceparent } : {}),
      ...(body ? { "content-type": "application/json" } : {}),
    },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await r.text();
  return { status: r.status, headers: r.headers, json: text ? JSON.parse(text) : undefined };
}

describe("traces", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("a create joins the caller's traceparent; its phases tile it without gaps", async () => {
    const t = await env.tenant();
    const traceId = hex(16);
    const callerSpan = hex(8);
    const r = await call(env, t.key, "POST", "/v1/sandboxes", `00-${traceId}-${callerSpan}-01`, {});
    assert.equal(r.status, 201, JSON.stringify(r.json));
    assert.equal(r.headers.get("x-trace-id"), traceId);
    assert.match(r.headers.get("traceparent") ?? "", new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));

    const got = await t.api.get(`/v1/traces/${traceId}`);
    assert.equal(got.status, 200, JSON.stringify(got.json));
    const spans: SpanJson[] = got.json.spans;
    const server = spans.find((s) => s.name === "POST /v1/sandboxes");
    assert.ok(server, spans.map((s) => s.name).join(", "));
    assert.equal(server.kind, "server");
    assert.equal(server.parentSpanId, callerSpan);
    assert.equal(server.attributes["http.route"], "/v1/sandboxes");
    assert.equal(server.attributes["http.response.status_code"], 201);
    assert.equal(server.attributes["firebreak.sandbox.id"], r.json.id);

    const phases = spans
      .filter((s) => s.parentSpanId === server.spanId && s.attributes["firebreak.phase"])
      .sort((a, b) => a.startMs - b.startMs);
    assert.deepEqual(
      phases.map((s) => s.name),
      ["admission", "placement", "start", "record"],
    );
    // Tiled: each phase starts where the previous ended (to the rounding of
    // the JSON's microseconds), inside the request's span.
    for (let i = 1; i < phases.length; i++) {
      const prevEnd = phases[i - 1]!.startMs + phases[i - 1]!.durationMs;
      assert.ok(
        Math.abs(phases[i]!.startMs - prevEnd) < 0.01,
        `${phases[i]!.name} starts at its predecessor's end`,
      );
    }
    const first = phases[0]!;
    const last = phases.at(-1)!;
    const phaseSum = phases.reduce((n, s) => n + s.durationMs, 0);
    assert.ok(Math.abs(phaseSum - (last.startMs + last.durationMs - first.startMs)) < 0.05);
    assert.ok(first.startMs >= server.startMs);
    assert.ok(last.startMs + last.durationMs <= server.startMs + server.durationMs + 0.01);
    assert.equal(phases.find((s) => s.name === "start")?.attributes["firebreak.start_path"], "snapshot");

    // Another tenant does not see it.
    const other = await env.tenant();
    assert.equal((await call(env, other.key, "GET", `/v1/traces/${traceId}`)).status, 404);
    await call(env, t.key, "DELETE", `/v1/sandboxes/${r.json.id}`);
  });

  test("a tenant that joins another tenant's trace id sees its own spans only; an admin sees all", async () => {
    const a = await env.tenant();
    const b = await env.tenant();
    const admin = await env.tenant({}, ["admin"]);
    const traceId = hex(16);
    const made = await call(env, a.key, "POST", "/v1/sandboxes", `00-${traceId}-${hex(8)}-01`, {});
    assert.equal(made.status, 201);
    // B sends A's trace id (it guessed or saw it).
    await call(env, b.key, "GET", "/v1/sandboxes", `00-${traceId}-${hex(8)}-01`);
    const forB = (await call(env, b.key, "GET", `/v1/traces/${traceId}`)).json;
    assert.deepEqual(
      forB.spans.map((s: SpanJson) => s.name),
      ["GET /v1/sandboxes"],
    );
    const forA = (await call(env, a.key, "GET", `/v1/traces/${traceId}`)).json;
    assert.ok(!forA.spans.some((s: SpanJson) => s.name === "GET /v1/sandboxes"));
    assert.ok(forA.spans.some((s: SpanJson) => s.name === "POST /v1/sandboxes"));
    const all = (await call(env, admin.key, "GET", `/v1/traces/${traceId}`)).json;
    assert.equal(all.spans.length, forA.spans.length + forB.spans.length);
    await call(env, a.key, "DELETE", `/v1/sandboxes/${made.json.id}`);
  });

  test("a sandbox's traces: create, pause, resume, kill, each with its phases", async () => {
    const t = await env.tenant();
    const sb = (await call(env, t.key, "POST", "/v1/sandboxes", undefined, {})).json;
    await call(env, t.key, "POST", `/v1/sandboxes/${sb.id}/pause`);
    await call(env, t.key, "POST", `/v1/sandboxes/${sb.id}/resume`, undefined, {});
    const killed = await call(env, t.key, "DELETE", `/v1/sandboxes/${sb.id}`);
    assert.equal(killed.status, 204);
    // Through the ApiClient: the answer is checked against /openapi.json.
    const r = await t.api.get(`/v1/sandboxes/${sb.id}/trace`);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.sandboxId, sb.id);
    const names = r.json.traces.map((x: { name: string }) => x.name);
    for (const n of [
      "POST /v1/sandboxes",
      "POST /v1/sandboxes/:id/pause",
      "POST /v1/sandboxes/:id/resume",
      "DELETE /v1/sandboxes/:id",
    ]) {
      assert.ok(names.includes(n), `${n} in ${names.join(", ")}`);
    }
    const phasesOf = (name: string) =>
      r.json.traces
        .find((x: { name: string }) => x.name === name)
        .spans.filter((s: SpanJson) => s.attributes["firebreak.phase"])
        .map((s: SpanJson) => s.name);
    assert.deepEqual(phasesOf("POST /v1/sandboxes/:id/pause"), ["save", "record"]);
    assert.deepEqual(phasesOf("POST /v1/sandboxes/:id/resume"), ["admission", "restore", "record"]);
    assert.deepEqual(phasesOf("DELETE /v1/sandboxes/:id"), ["admission", "teardown", "record"]);
    // Tenant-scoped.
    const other = await env.tenant();
    assert.equal((await call(env, other.key, "GET", `/v1/sandboxes/${sb.id}/trace`)).status, 404);
  });

  test("a malformed trace id is a validation error; an unknown one is NOT_FOUND", async () => {
    const t = await env.tenant();
    const bad = await call(env, t.key, "GET", "/v1/traces/xyz");
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.code, "VALIDATION_FAILED");
    const none = await call(env, t.key, "GET", `/v1/traces/${hex(16)}`);
    assert.equal(none.status, 404);
    assert.equal(none.json.error.code, "NOT_FOUND");
    // A request without traceparent starts a trace of its own.
    const r = await call(env, t.key, "GET", "/v1/sandboxes");
    assert.match(r.headers.get("x-trace-id") ?? "", /^[0-9a-f]{32}$/);
  });
});
