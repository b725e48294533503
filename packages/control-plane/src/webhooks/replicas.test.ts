// Two control planes (two PostgreSQL stores on one database, a worker each)
// deliver one outbox: with a healthy receiver every event arrives exactly
// once (the store's claim keeps replicas from sending one delivery twice),
// and both replicas take part.
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { verifyWebhook } from "@firebreak/sdk";
import pino from "pino";
import { DEFAULT_LIMITS, defaultWebhookConfig } from "../config.ts";
import { PgStore } from "../store/pg-store.ts";
import { sandboxRec } from "../store/store.contract.ts";
import { startPostgres, type TestPostgres } from "../testing/postgres.ts";
import { WebhookWorker } from "./worker.ts";

let server: TestPostgres;
before(async () => {
  server = await startPostgres();
});
after(() => server?.stop());

test("two replicas share the outbox: each event is sent once, by one of them", async (t) => {
  const url = await server.createDatabase();
  const a = await PgStore.open(url);
  const b = await PgStore.open(url);
  t.after(() => Promise.all([a.close(), b.close()]));
  const got: string[] = [];
  const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  const rx = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const v = verifyWebhook(secret, req.headers as Record<string, string>, Buffer.concat(chunks));
      if (v.ok) got.push(v.id);
      // A little latency, so the work spreads over both replicas.
      setTimeout(() => res.writeHead(v.ok ? 204 : 400).end(), 50);
    });
  });
  await new Promise<void>((r) => rx.listen(0, "127.0.0.1", () => r()));
  t.after(() => new Promise<void>((r) => rx.close(() => r())));
  const port = (rx.address() as AddressInfo).port;

  const T0 = new Date().toISOString();
  await a.createTenant({ id: "t1", name: "t1", limits: DEFAULT_LIMITS, createdAt: T0 });
  await a.createWebhook({
    id: "w1",
    tenantId: "t1",
    url: `http://127.0.0.1:${port}/`,
    secret,
    events: ["*"],
    description: "",
    createdAt: T0,
    createdByKey: null,
    disabledAt: null,
  });
  const sandboxes = ["s1", "s2", "s3"];
  for (const id of sandboxes) {
    await a.insertSandboxWithinQuota(sandboxRec(id, { state: "running", createdAt: T0 }), {
      ...DEFAULT_LIMITS,
      maxSandboxes: 100,
    });
    // Events written through either replica.
    for (let i = 0; i < 10; i++) await (i % 2 ? a : b).addEvent(id, { at: T0, type: "state", detail: { i } });
  }
  const expected = new Set(
    (await a.listTenantEvents({ tenantId: "t1", afterSeq: 0, limit: 1000 })).map((e) => `evt_${e.seq}`),
  );
  assert.equal(expected.size, 30);

  const config = {
    ...defaultWebhookConfig({}),
    allowPrivate: true,
    pollIntervalMs: 50,
    concurrency: 4,
    perWebhookConcurrency: 4,
  };
  const log = pino({ level: "silent" });
  const counts = { a: 0, b: 0 };
  const wa = new WebhookWorker({ store: a, config, log, onAttempt: () => counts.a++ });
  const wb = new WebhookWorker({ store: b, config, log, onAttempt: () => counts.b++ });
  t.after(() => Promise.all([wa.close(), wb.close()]));
  wa.start();
  wb.start();
  const end = Date.now() + 60_000;
  while (got.length < expected.size || (await a.listDeliveries("w1", 100)).some((d) => !d.deliveredAt)) {
    assert.ok(Date.now() < end, `timed out: ${got.length} of ${expected.size} arrived`);
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(got.length, expected.size, "no event was sent twice");
  assert.deepEqual(new Set(got), expected);
  assert.equal(counts.a + counts.b, expected.size);
  assert.ok(counts.a > 0 && counts.b > 0, `both replicas delivered: ${counts.a} + ${counts.b}`);
  for (const d of await b.listDeliveries("w1", 100)) assert.equal(d.attempts, 1);
  console.log(`replicas: ${counts.a} + ${counts.b} of ${expected.size} deliveries, 0 sent twice`);
});
