// OTLP export: with OTEL_EXPORTER_OTLP_ENDPOINT set, a create's spans reach
// an OTLP/HTTP receiver (here, one this test runs on loopback), besides the
// embedded store. Its own file: the tracer provider is made once per process.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { flushTraces } from "@firebreak/node-agent";
import type { inProcess as InProcess } from "../testing/in-process.ts";

let receiver: http.Server;
const bodies: { path: string; type: string; text: string }[] = [];
let env: Awaited<ReturnType<typeof InProcess>>;

before(async () => {
  receiver = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      bodies.push({
        path: req.url ?? "",
        type: req.headers["content-type"] ?? "",
        text: Buffer.concat(chunks).toString("utf8"),
      });
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
  process.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
  process.env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/json";
  // Imported after the variable is set: the tracer provider reads it once.
  const { inProcess } = await import("../testing/in-process.ts");
  env = await inProcess();
});

after(async () => {
  await env?.close();
  await new Promise((r) => receiver.close(r));
  delete process.env["OTEL_EXPORTER_OTLP_ENDPOINT"];
  delete process.env["OTEL_EXPORTER_OTLP_PROTOCOL"];
});

test("a create's spans are exported over OTLP/HTTP with the caller's trace id", async () => {
  const t = await env.tenant();
  const traceId = randomBytes(16).toString("hex");
  const r = await env.app.request("/v1/sandboxes", {
    method: "POST",
    headers: {
      authorization: `Bearer ${t.key}`,
      "content-type": "application/json",
      traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01`,
    },
    body: "{}",
  });
  assert.equal(r.status, 201);
  await flushTraces();
  const traces = bodies.filter((b) => b.path === "/v1/traces");
  assert.ok(traces.length > 0, `OTLP posts: ${bodies.map((b) => b.path).join(", ")}`);
  const spans: { traceId: string; name: string }[] = [];
  for (const b of traces) {
    assert.match(b.type, /application\/json/);
    const doc = JSON.parse(b.text) as {
      resourceSpans: { scopeSpans: { spans: { traceId: string; name: string }[] }[] }[];
    };
    for (const rs of doc.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans);
  }
  const ours = spans.filter((s) => s.traceId === traceId).map((s) => s.name);
  for (const n of ["POST /v1/sandboxes", "admission", "placement", "start", "record"]) {
    assert.ok(ours.includes(n), `${n} exported (got ${ours.join(", ")})`);
  }
});
