// The CLI's network flags, `sandbox network get|set` and `services` against the
// control plane's real routes over its fake node (served on loopback). No VMs, no root.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { getRequestListener } from "@hono/node-server";
import { inProcess } from "../../control-plane/src/testing/in-process.ts";
import { runCli } from "./api-helpers.ts";

describe("CLI: egress policy and private services", { timeout: 120_000 }, () => {
  let env: Awaited<ReturnType<typeof inProcess>>;
  let server: http.Server;
  let url = "";
  let adminKey = "";
  let userKey = "";
  let tenantId = "";
  const as =
    (key: string) =>
    (args: string[], extra: Record<string, string> = {}) =>
      runCli(args, { env: { FIREBREAK_URL: url, FIREBREAK_API_KEY: key, ...extra } });

  before(async () => {
    env = await inProcess();
    adminKey = (await env.tenant({}, ["admin", "sandboxes"])).key;
    const t = await env.tenant();
    userKey = t.key;
    tenantId = t.id;
    server = http.createServer(getRequestListener(env.app.fetch));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    await new Promise((r) => server.close(r));
    await env.close();
  });

  test("services create (credential from the environment) / list (redacted for tenants) / delete", async () => {
    const admin = as(adminKey);
    const made = await admin(
      [
        "services",
        "create",
        "api.internal",
        "--address",
        "10.20.0.6",
        "--port",
        "8080",
        "--tenant",
        tenantId,
        "--inject-header",
        "Authorization",
        "--inject-value-env",
        "API_TOKEN",
      ],
      { API_TOKEN: "Bearer s3cret" },
    );
    assert.equal(made.code, 0, made.stderr);
    assert.match(made.stdout, /service api\.internal -> 10\.20\.0\.6:8080 \(http\)/);
    assert.equal((await env.node.listServices())[0]!.inject!.value, "Bearer s3cret");
    assert.equal(
      (await admin(["services", "create", "pg.internal", "--address", "10.20.0.5", "--port", "5432"])).code,
      0,
    );
    const listed = await as(userKey)(["services", "list"]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /api\.internal\s+10\.20\.0\.6:8080\s+http\s+\S+\s+Authorization: \*\*\*/);
    assert.doesNotMatch(listed.stdout, /s3cret/);
    const denied = await as(userKey)(["services", "delete", "pg.internal"]);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /FORBIDDEN/);
    assert.equal((await admin(["services", "delete", "pg.internal"])).code, 0);
    const gone = await admin(["services", "delete", "pg.internal"]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /no service pg\.internal/);
  });

  test("sandbox create with policy flags; network get; network set --policy-file; 409 when paused", async () => {
    const cli = as(userKey);
    const c = await cli([
      "sandbox",
      "create",
      "--allow-domain",
      "api.good.test",
      "--allow-cidr",
      "11.0.0.0/8:5432",
      "--internet",
      "--service",
      "api.internal",
      "--json",
    ]);
    assert.equal(c.code, 0, c.stderr);
    const id = JSON.parse(c.stdout).id as string;
    const got = await cli(["sandbox", "network", "get", id, "--json"]);
    assert.equal(got.code, 0, got.stderr);
    assert.deepEqual(JSON.parse(got.stdout).policy, {
      internet: true,
      allow: [{ cidr: "11.0.0.0/8", ports: [5432], protocol: "any" }],
      allowDomains: ["api.good.test"],
      services: ["api.internal"],
      networks: [],
    });
    const text = await cli(["sandbox", "network", "get", id]);
    assert.match(text.stdout, /internet:\s+allowed/);
    assert.match(text.stdout, /allow:\s+11\.0\.0\.0\/8:5432/);

    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-cli-net-"));
    const file = path.join(dir, "f.json");
    await fs.writeFile(file, JSON.stringify({ allowDomains: ["*.example.test"] }));
    const set = await cli(["sandbox", "network", "set", id, "--policy-file", file]);
    assert.equal(set.code, 0, set.stderr);
    assert.match(set.stdout, /domains:\s+\*\.example\.test/);
    assert.match(set.stdout, /internet:\s+denied/);

    const bad = await cli(["sandbox", "create", "--service", "nope.internal"]);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /VALIDATION_FAILED.*nope\.internal/);
    const badCidr = await cli(["sandbox", "create", "--allow-cidr", "ten.0.0.0"]);
    assert.notEqual(badCidr.code, 0);
    assert.match(badCidr.stderr, /CIDR\[:PORT/);

    assert.equal((await cli(["sandbox", "pause", id])).code, 0);
    const paused = await cli(["sandbox", "network", "set", id, "--internet"]);
    assert.equal(paused.code, 1);
    assert.match(paused.stderr, /CONFLICT/);
    await fs.rm(dir, { recursive: true, force: true });
  });
});
