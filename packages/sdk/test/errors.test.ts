// Error mapping: the wire's { error: { code, message, requestId } } becomes a
// typed FirebreakApiError; transport and configuration problems get client codes
// whose messages say how to fix them.
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import {
  API_ERROR_CODES,
  AuthenticationError,
  ConflictError,
  Firebreak,
  type FirebreakApiError,
  isFirebreakApiError,
  LimitError,
  NotFoundError,
  PermissionError,
  Sandbox,
  ServerError,
  TemplateBuildError,
  ValidationError,
} from "../src/index.ts";
import { ADMIN_KEY, type Fixture, startFixture } from "./fixture-server.ts";

let fx: Fixture;
const conn = () => ({ baseUrl: fx.url, apiKey: ADMIN_KEY });

describe("error mapping", { timeout: 20_000 }, () => {
  before(async () => {
    fx = await startFixture();
  });
  after(() => fx.close());

  const cases: [number, string, new (...a: never[]) => FirebreakApiError][] = [
    [401, "UNAUTHENTICATED", AuthenticationError],
    [403, "FORBIDDEN", PermissionError],
    [404, "NOT_FOUND", NotFoundError],
    [404, "TEMPLATE_NOT_FOUND", NotFoundError],
    [400, "VALIDATION_FAILED", ValidationError],
    [400, "WEBHOOK_DESTINATION_FORBIDDEN", ValidationError],
    [413, "PAYLOAD_TOO_LARGE", ValidationError],
    [409, "CONFLICT", ConflictError],
    [429, "QUOTA_EXCEEDED", LimitError],
    [429, "RATE_LIMITED", LimitError],
    [503, "CAPACITY_EXHAUSTED", ServerError],
    [502, "SANDBOX_BOOT_FAILED", ServerError],
    [502, "AGENT_ERROR", ServerError],
    [502, "GUEST_RESPONSE_INVALID", ServerError],
    [502, "GUEST_RESPONSE_TOO_LARGE", ServerError],
    [422, "TEMPLATE_BUILD_FAILED", TemplateBuildError],
    [500, "INTERNAL", ServerError],
  ];

  test("every contract code maps to a class, with code, status, message and requestId", async () => {
    assert.deepEqual(cases.map((c) => c[1]).sort(), [...API_ERROR_CODES].sort());
    for (const [status, code, cls] of cases) {
      fx.failNext(/^POST \/v1\/sandboxes$/, status, code, `fix it: ${code}`);
      const e = await Sandbox.create(conn()).then(
        () => assert.fail("expected an error"),
        (e: unknown) => e,
      );
      assert.ok(e instanceof cls, `${code} -> ${cls.name}, got ${(e as Error).name}`);
      assert.ok(isFirebreakApiError(e, code));
      assert.equal(e.status, status);
      assert.equal(e.message, `fix it: ${code}`);
      assert.match(e.requestId ?? "", /^req_\d+$/);
    }
  });

  test("a code the SDK does not know keeps its code, class from the status", async () => {
    fx.failNext(/^POST \/v1\/templates$/, 409, "TEMPLATE_BUSY", "a build of x is running");
    const e = await new Firebreak(conn()).templates.build("x").catch((e: unknown) => e);
    assert.ok(e instanceof ConflictError);
    assert.equal(e.code, "TEMPLATE_BUSY");
    assert.equal(e.status, 409);
    fx.failNext(/^GET \/v1\/keys$/, 507, "NO_SPACE", "free some disk");
    const e2 = await new Firebreak(conn()).keys.list().catch((e: unknown) => e);
    assert.ok(e2 instanceof ServerError);
    assert.equal(e2.code, "NO_SPACE");
  });

  test("a wrong key is UNAUTHENTICATED from the server", async () => {
    const e = await Sandbox.create({ baseUrl: fx.url, apiKey: "fb_nope" }).catch((e: unknown) => e);
    assert.ok(e instanceof AuthenticationError);
    assert.equal(e.code, "UNAUTHENTICATED");
  });

  test("an unknown sandbox: kill() is false, connect() is NOT_FOUND", async () => {
    assert.equal(await Sandbox.kill("sbnope", conn()), false);
    await assert.rejects(Sandbox.connect("sbnope", conn()), NotFoundError);
  });

  test("a non-JSON error body still gives a code from the status and the request id", async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(502, { "x-request-id": "req_proxy" }).end("<html>bad gateway</html>");
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const e = await Sandbox.connect("x", { baseUrl: url, apiKey: ADMIN_KEY }).catch((e: unknown) => e);
      assert.ok(e instanceof ServerError);
      assert.equal(e.code, "SANDBOX_BOOT_FAILED");
      assert.equal(e.requestId, "req_proxy");
      assert.match(e.message, /bad gateway.*FIREBREAK_URL/s);
    } finally {
      server.close();
    }
  });
});

describe("client-side errors", { timeout: 20_000 }, () => {
  test("no URL or key: CONFIG_MISSING naming the variable and `firebreak up`", () => {
    const saved = { url: process.env["FIREBREAK_URL"], key: process.env["FIREBREAK_API_KEY"] };
    delete process.env["FIREBREAK_URL"];
    delete process.env["FIREBREAK_API_KEY"];
    try {
      assert.throws(
        () => new Firebreak(),
        (e: unknown) =>
          isFirebreakApiError(e, "CONFIG_MISSING") &&
          /FIREBREAK_URL/.test(e.message) &&
          /firebreak up/.test(e.message),
      );
      assert.throws(
        () => new Firebreak({ baseUrl: "http://127.0.0.1:1" }),
        (e: unknown) => isFirebreakApiError(e, "CONFIG_MISSING") && /FIREBREAK_API_KEY/.test(e.message),
      );
      assert.throws(
        () => new Firebreak({ baseUrl: "127.0.0.1:3000", apiKey: "k" }),
        (e: unknown) => isFirebreakApiError(e, "CONFIG_MISSING"),
      );
      process.env["FIREBREAK_URL"] = "http://127.0.0.1:9";
      process.env["FIREBREAK_API_KEY"] = ADMIN_KEY;
      assert.ok(new Firebreak());
    } finally {
      for (const [k, v] of [
        ["FIREBREAK_URL", saved.url],
        ["FIREBREAK_API_KEY", saved.key],
      ] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  test("nothing listening: CONNECTION_FAILED saying to run `firebreak up`", async () => {
    const server = http.createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    await new Promise((r) => server.close(r));
    const e = await Sandbox.create({ baseUrl: `http://127.0.0.1:${port}`, apiKey: ADMIN_KEY }).catch(
      (e: unknown) => e,
    );
    assert.ok(isFirebreakApiError(e, "CONNECTION_FAILED"), String(e));
    assert.equal(e.status, 0);
    assert.match(e.message, /ECONNREFUSED.*firebreak up/);
  });

  test("a slow server: REQUEST_TIMEOUT; an aborted signal: ABORTED", async () => {
    const server = http.createServer(() => {});
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const e = await Sandbox.list({ baseUrl, apiKey: ADMIN_KEY, requestTimeoutMs: 50 })
        .nextItems()
        .catch((e: unknown) => e);
      assert.ok(isFirebreakApiError(e, "REQUEST_TIMEOUT"), String(e));
      assert.match(e.message, /requestTimeoutMs/);
      const ac = new AbortController();
      const p = Sandbox.create({ baseUrl, apiKey: ADMIN_KEY, signal: ac.signal });
      ac.abort();
      const e2 = await p.catch((e: unknown) => e);
      assert.ok(isFirebreakApiError(e2, "ABORTED"), String(e2));
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
