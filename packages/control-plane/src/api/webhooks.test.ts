// The /v1/webhooks routes (in-process, fake node): create shows the secret
// once, validation, SSRF refusal without the operator's option, tenant
// isolation, and delete giving up pending deliveries.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { defaultWebhookConfig } from "../config.ts";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

describe("webhooks API", () => {
  let env: Env;
  let open: Env;
  before(async () => {
    env = await inProcess();
    open = await inProcess({ webhooks: { ...defaultWebhookConfig({}), allowPrivate: true } });
  });
  after(async () => {
    await env.close();
    await open.close();
  });

  test("create returns the secret once; list and get never show it", async () => {
    const a = await open.tenant();
    const r = await a.api.post("/v1/webhooks", {
      url: "http://127.0.0.1:9/hook",
      events: ["sandbox.ended", "usage.final", "sandbox.ended"],
      description: "billing",
    });
    assert.equal(r.status, 201, r.text);
    assert.match(r.json.secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
    assert.equal(Buffer.from(r.json.secret.slice(6), "base64").length, 32);
    assert.deepEqual(r.json.events, ["sandbox.ended", "usage.final"]);
    assert.equal(r.json.tenantId, a.id);
    const list = await a.api.get("/v1/webhooks");
    assert.equal(list.status, 200);
    assert.deepEqual(
      list.json.webhooks.map((w: { id: string }) => w.id),
      [r.json.id],
    );
    assert.ok(!("secret" in list.json.webhooks[0]));
    assert.ok(!list.text.includes(r.json.secret.slice(6)));
    const got = await a.api.get(`/v1/webhooks/${r.json.id}`);
    assert.equal(got.status, 200);
    assert.ok(!got.text.includes(r.json.secret.slice(6)));
    assert.equal(got.json.description, "billing");
  });

  test("bad URLs and unknown event types are refused with VALIDATION_FAILED", async () => {
    const a = await open.tenant();
    const bad: [unknown, string][] = [
      [{ url: "ftp://example.com/x", events: ["*"] }, "http"],
      [{ url: "not a url", events: ["*"] }, "absolute"],
      [{ url: "https://user:pw@example.com/x", events: ["*"] }, "credentials"],
      [{ url: `https://example.com/${"a".repeat(2100)}`, events: ["*"] }, ""],
      [{ url: "https://example.com/x", events: ["sandbox.nope"] }, "sandbox.nope"],
      [{ url: "https://example.com/x", events: [] }, ""],
      [{ url: "https://example.com/x", events: ["*"], extra: 1 }, ""],
    ];
    for (const [body, word] of bad) {
      const r = await a.api.post("/v1/webhooks", body);
      assert.equal(r.status, 400, JSON.stringify(body).slice(0, 80));
      assert.equal(r.json.error.code, "VALIDATION_FAILED");
      assert.ok(r.json.error.message.includes(word), r.json.error.message);
    }
  });

  test("SSRF: loopback, link-local, private and this host's addresses are refused without the operator's option", async () => {
    const a = await env.tenant();
    for (const url of [
      "http://127.0.0.1:8080/hook",
      "http://localhost/hook",
      "http://LOCALHOST./hook",
      "http://api.localhost/hook",
      "http://2130706433/hook",
      "http://0x7f.0.0.1/hook",
      "http://[0:0:0:0:0:ffff:7f00:1]/hook",
      "http://[::1]/hook",
      "http://[::ffff:127.0.0.1]/hook",
      "http://169.254.169.254/latest/meta-data",
      "http://10.1.2.3/hook",
      "http://192.168.0.1/hook",
      "http://0.0.0.0/hook",
      "http://[fd00::1]/hook",
    ]) {
      const r = await a.api.post("/v1/webhooks", { url, events: ["*"] });
      assert.equal(r.status, 400, url);
      assert.equal(r.json.error.code, "WEBHOOK_DESTINATION_FORBIDDEN", url);
      assert.match(r.json.error.message, /FIREBREAK_WEBHOOK_ALLOW_PRIVATE/);
    }
    // A public address is accepted (nothing is sent until the worker runs).
    const ok = await a.api.post("/v1/webhooks", { url: "https://203.0.114.1/hook", events: ["*"] });
    assert.equal(ok.status, 201, ok.text);
    assert.equal((await a.api.get("/v1/webhooks")).json.webhooks.length, 1);
  });

  test("another tenant can neither see nor delete a webhook (404, as for a missing one)", async () => {
    const a = await open.tenant();
    const b = await open.tenant();
    const w = (await a.api.post("/v1/webhooks", { url: "http://127.0.0.1:9/a", events: ["*"] })).json;
    for (const r of [
      await b.api.get(`/v1/webhooks/${w.id}`),
      await b.api.get(`/v1/webhooks/${w.id}/deliveries`),
      await b.api.delete(`/v1/webhooks/${w.id}`),
    ]) {
      assert.equal(r.status, 404);
      assert.equal(r.json.error.code, "NOT_FOUND");
    }
    assert.deepEqual((await b.api.get("/v1/webhooks")).json.webhooks, []);
    assert.equal((await a.api.get(`/v1/webhooks/${w.id}`)).json.disabledAt, null);
  });

  test("deleting a webhook gives up its pending deliveries, and nothing is claimed for it after", async () => {
    const a = await open.tenant();
    const w = (await a.api.post("/v1/webhooks", { url: "http://127.0.0.1:9/a", events: ["*"] })).json;
    const sb = (await a.api.post("/v1/sandboxes", {})).json;
    assert.equal((await a.api.delete(`/v1/sandboxes/${sb.id}`)).status, 204);
    const before = (await a.api.get(`/v1/webhooks/${w.id}/deliveries`)).json.deliveries;
    assert.ok(before.length >= 3, `deliveries: ${before.length}`);
    assert.ok(before.every((d: { status: string }) => d.status === "pending"));
    assert.ok(before.some((d: { type: string }) => d.type === "usage.final"));
    assert.equal((await a.api.delete(`/v1/webhooks/${w.id}`)).status, 204);
    const afterDel = (await a.api.get(`/v1/webhooks/${w.id}/deliveries`)).json.deliveries;
    assert.equal(afterDel.length, before.length);
    for (const d of afterDel) {
      assert.equal(d.status, "gave_up");
      assert.equal(d.lastError, "the webhook was deleted");
    }
    assert.notEqual((await a.api.get(`/v1/webhooks/${w.id}`)).json.disabledAt, null);
    assert.equal((await a.api.delete(`/v1/webhooks/${w.id}`)).status, 404);
    const claimed = await open.store.claimDeliveries(
      "test",
      new Date(Date.now() + 3600_000).toISOString(),
      1000,
      1000,
    );
    assert.deepEqual(
      claimed.filter((d) => d.webhookId === w.id),
      [],
    );
    // A new event of the tenant makes no delivery for the deleted webhook.
    await a.api.post("/v1/sandboxes", {});
    assert.equal((await a.api.get(`/v1/webhooks/${w.id}/deliveries`)).json.deliveries.length, before.length);
  });
});
