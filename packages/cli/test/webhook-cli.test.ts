// firebreak webhook add|list|rm|deliveries against the real control plane
// API (in-process, fake node, served on 127.0.0.1): output, --json, the
// secret printed once, exit codes and the API's errors. No VMs, no root.
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { getRequestListener } from "@hono/node-server";
import { defaultWebhookConfig } from "../../control-plane/src/config.ts";
import { inProcess } from "../../control-plane/src/testing/in-process.ts";
import { runCli } from "./api-helpers.ts";

describe("firebreak webhook", { timeout: 120_000 }, () => {
  let env: Awaited<ReturnType<typeof inProcess>>;
  let server: http.Server;
  let url = "";
  let key = "";
  const cli = (args: string[]) =>
    runCli(["webhook", ...args], { env: { FIREBREAK_URL: url, FIREBREAK_API_KEY: key } });

  before(async () => {
    env = await inProcess({ webhooks: { ...defaultWebhookConfig({}), allowPrivate: false } });
    server = http.createServer(getRequestListener(env.app.fetch));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    key = (await env.tenant()).key;
  });
  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    await env.close();
  });

  test("add prints the secret once; list, deliveries and rm", async () => {
    const add = await cli(["add", "https://203.0.114.9/hook", "--event", "sandbox.ended,usage.final"]);
    assert.equal(add.code, 0, add.stderr);
    const m =
      /^created webhook (wh_\w+) -> https:\/\/203\.0\.114\.9\/hook \(events sandbox\.ended,usage\.final\)\n(whsec_\S+)\n$/.exec(
        add.stdout,
      );
    assert.ok(m, add.stdout);
    const [, id, secret] = m;
    assert.match(add.stderr, /only time the signing secret is shown/);
    const l = await cli(["list"]);
    assert.equal(l.code, 0, l.stderr);
    assert.match(
      l.stdout,
      new RegExp(`^${id}\\s+https://203\\.0\\.114\\.9/hook\\s+sandbox\\.ended,usage\\.final`, "m"),
    );
    assert.ok(!l.stdout.includes(secret!.slice(6)));
    const json = JSON.parse((await cli(["list", "--json"])).stdout);
    assert.equal(json[0].id, id);
    assert.equal((await cli(["deliveries", id!])).stdout, `no deliveries for webhook ${id} yet\n`);
    const sb = (await env.api.withKey(key).post("/v1/sandboxes", {})).json;
    await env.api.withKey(key).delete(`/v1/sandboxes/${sb.id}`);
    const d = await cli(["deliveries", id!]);
    assert.match(d.stdout, /^EVENT\s+TYPE\s+SANDBOX\s+STATUS\s+ATTEMPTS/);
    assert.match(d.stdout, new RegExp(`^usage_${sb.id}\\s+usage\\.final\\s+${sb.id}\\s+pending\\s+0`, "m"));
    assert.match(d.stdout, new RegExp(`^evt_\\d+\\s+sandbox\\.ended\\s+${sb.id}\\s+pending`, "m"));
    const rm = await cli(["rm", id!]);
    assert.equal(rm.stdout, `deleted webhook ${id} (its pending deliveries are given up)\n`);
    const again = await cli(["rm", id!]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /no webhook/);
    const gaveUp = JSON.parse((await cli(["deliveries", id!, "--json"])).stdout);
    assert.ok(gaveUp.length === 2 && gaveUp.every((x: { status: string }) => x.status === "gave_up"));
  });

  test("a loopback URL: WEBHOOK_DESTINATION_FORBIDDEN, exit 1, saying how to allow it", async () => {
    const r = await cli(["add", "http://127.0.0.1:8080/hook"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /error \[WEBHOOK_DESTINATION_FORBIDDEN\].*FIREBREAK_WEBHOOK_ALLOW_PRIVATE=1/);
  });
});
