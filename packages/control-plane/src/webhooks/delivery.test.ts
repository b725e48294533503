// Webhook delivery end to end (in-process API, fake node, real HTTP
// receivers on 127.0.0.1): signatures verify with the SDK's verifyWebhook;
// a receiver that is down for 30 s gets every event once it is back (at least
// once, deduplicated by webhook-id); a hanging or endlessly streaming receiver
// does not hold up another webhook; the destination check at delivery time.
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, test } from "node:test";
import { verifyWebhook } from "@firebreak/sdk";
import { defaultWebhookConfig, type WebhookConfig } from "../config.ts";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

const FAST: Partial<WebhookConfig> = {
  allowPrivate: true,
  pollIntervalMs: 100,
  attemptTimeoutMs: 2_000,
  retryFirstDelayMs: 200,
  retryMaxDelayMs: 2_000,
  maxAttempts: 10_000,
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

interface Arrival {
  id: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A receiver on 127.0.0.1: `mode` decides each answer. */
class Receiver {
  server: http.Server;
  mode: "ok" | "503" | "hang" | "endless" = "ok";
  arrivals: Arrival[] = [];
  /** In "ok" mode, this many requests are received whole but their answer is lost (the connection is dropped). */
  loseAcks = 0;
  /** Connections the worker dropped while the endless body was being written. */
  endlessDropped = 0;
  constructor() {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (b: Buffer) => chunks.push(b));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        this.arrivals.push({ id: String(req.headers["webhook-id"]), headers: req.headers, body });
        if (this.mode === "ok" && this.loseAcks > 0) {
          this.loseAcks--;
          req.socket.destroy();
        } else if (this.mode === "ok") res.writeHead(204).end();
        else if (this.mode === "503")
          res.writeHead(503, { "content-type": "text/plain" }).end("down for maintenance");
        else if (this.mode === "endless") {
          res.writeHead(500, { "content-type": "text/plain" });
          const chunk = "x".repeat(16 * 1024);
          const t = setInterval(() => res.write(chunk), 5);
          res.on("close", () => {
            clearInterval(t);
            this.endlessDropped++;
          });
        }
        // hang: never answers
      });
    });
  }
  async listen(port = 0): Promise<number> {
    await new Promise<void>((r) => this.server.listen(port, "127.0.0.1", () => r()));
    return (this.server.address() as AddressInfo).port;
  }
  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A free port on 127.0.0.1 with nothing listening on it (yet). */
async function closedPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** The event keys the tenant's webhook subscribed to "*" is owed: every event, and a usage.final per ended sandbox. */
async function expectedKeys(env: Env, tenantId: string, ended: string[]): Promise<Set<string>> {
  const events = await env.store.listTenantEvents({ tenantId, afterSeq: 0, limit: 10_000 });
  return new Set([...events.map((e) => `evt_${e.seq}`), ...ended.map((id) => `usage_${id}`)]);
}

describe("webhook delivery", () => {
  const cleanups: (() => Promise<void>)[] = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  });

  test("signed: the SDK's verifyWebhook accepts a delivery; a tampered body, another secret or an old timestamp fail", async () => {
    const env = await inProcess({ webhooks: { ...defaultWebhookConfig({}), ...FAST } });
    cleanups.push(() => env.close());
    const rx = new Receiver();
    const port = await rx.listen();
    cleanups.push(() => rx.close());
    const a = await env.tenant();
    const w = (
      await a.api.post("/v1/webhooks", {
        url: `http://127.0.0.1:${port}/in`,
        events: ["sandbox.ended", "usage.final"],
      })
    ).json;
    const sb = (await a.api.post("/v1/sandboxes", { metadata: { project: "p1" } })).json;
    await a.api.delete(`/v1/sandboxes/${sb.id}`);
    env.webhooks.start();
    await until("both deliveries", async () => rx.arrivals.length >= 2);
    const byType = new Map(rx.arrivals.map((x) => [JSON.parse(x.body).type as string, x]));
    assert.deepEqual([...byType.keys()].sort(), ["sandbox.ended", "usage.final"]);
    for (const x of rx.arrivals) {
      const v = verifyWebhook(w.secret, x.headers as Record<string, string>, x.body);
      assert.ok(v.ok, JSON.stringify(v));
      assert.equal(v.id, x.id);
      const ev = JSON.parse(x.body);
      assert.equal(ev.specversion, "1.0");
      assert.equal(ev.id, x.headers["webhook-id"]);
      assert.equal(ev.subject, sb.id);
      assert.equal(ev.datacontenttype, "application/json");
      assert.match(x.headers["content-type"] ?? "", /^application\/cloudevents\+json/);
      assert.ok(!Number.isNaN(Date.parse(ev.time)));
      assert.ok(typeof ev.source === "string" && ev.source.length > 0);
      // Tampered body, wrong secret, replayed long after: refused.
      assert.equal(
        verifyWebhook(w.secret, x.headers as Record<string, string>, x.body.replace("1.0", "1.1")).ok,
        false,
      );
      const other = (await a.api.post("/v1/webhooks", { url: `http://127.0.0.1:${port}/x`, events: ["*"] }))
        .json;
      assert.equal(verifyWebhook(other.secret, x.headers as Record<string, string>, x.body).ok, false);
      await a.api.delete(`/v1/webhooks/${other.id}`);
      assert.equal(
        verifyWebhook(w.secret, x.headers as Record<string, string>, x.body, { nowMs: Date.now() + 3600_000 })
          .ok,
        false,
      );
    }
    const usage = JSON.parse(byType.get("usage.final")!.body);
    assert.equal(usage.id, `usage_${sb.id}`);
    assert.equal(usage.data.sandboxId, sb.id);
    assert.equal(usage.data.final, true);
    assert.equal(usage.data.tenantId, a.id);
    assert.ok(!("meterState" in usage.data));
    const ended = JSON.parse(byType.get("sandbox.ended")!.body);
    assert.equal(ended.data.type, "ended");
    assert.equal(ended.data.sandboxId, sb.id);
    assert.equal(ended.id, `evt_${ended.data.seq}`);
  });

  test("the receiver is down for 30 s (refused, then 503): every event arrives once it is back, each key processed once", async () => {
    const env = await inProcess({ webhooks: { ...defaultWebhookConfig({}), ...FAST } });
    cleanups.push(() => env.close());
    const port = await closedPort();
    const a = await env.tenant();
    const w = (await a.api.post("/v1/webhooks", { url: `http://127.0.0.1:${port}/in`, events: ["*"] })).json;
    env.webhooks.start();
    const downAt = Date.now();
    // While nothing listens: sandboxes are created and killed (events and usage.final enqueued).
    const ended: string[] = [];
    for (let i = 0; i < 4; i++) {
      const sb = (await a.api.post("/v1/sandboxes", {})).json;
      if (i < 3) {
        assert.equal((await a.api.delete(`/v1/sandboxes/${sb.id}`)).status, 204);
        ended.push(sb.id);
      }
    }
    await sleep(15_000 - (Date.now() - downAt));
    // Then it answers 503 until 30 s have passed.
    const rx = new Receiver();
    rx.mode = "503";
    await rx.listen(port);
    cleanups.push(() => rx.close());
    const refusedPhase = await env.api.withKey(a.key).get(`/v1/webhooks/${w.id}/deliveries`);
    assert.ok(refusedPhase.json.deliveries.every((d: { status: string }) => d.status === "pending"));
    await sleep(30_000 - (Date.now() - downAt));
    const downMs = Date.now() - downAt;
    const arrivalsWhileDown = rx.arrivals.length;
    assert.ok(arrivalsWhileDown > 0, "the 503 phase saw attempts");
    const keysWhileDown = new Set(rx.arrivals.map((x) => x.id));
    // What the receiver's application did: each key processed once (deduplicated by webhook-id).
    const processed = new Map<string, number>();
    const processedOnce: string[] = [];
    rx.arrivals = [];
    // Back up; the first 5 answers are lost on the way (processed, but the worker sees a reset): at least once means
    // those keys come again, with the same webhook-id, and the receiver must not process them twice.
    rx.loseAcks = 5;
    rx.mode = "ok";
    const backAt = Date.now();
    const expected = await expectedKeys(env, a.id, ended);
    const drain = () => {
      for (const x of rx.arrivals.splice(0)) {
        const v = verifyWebhook(w.secret, x.headers as Record<string, string>, x.body);
        assert.ok(v.ok, JSON.stringify(v));
        // The receiver deduplicates by webhook-id: a key is processed once.
        if (!processed.has(v.id)) processedOnce.push(v.id);
        processed.set(v.id, (processed.get(v.id) ?? 0) + 1);
      }
    };
    await until("every expected key", async () => {
      drain();
      return [...expected].every((k) => processed.has(k));
    });
    const allMs = Date.now() - backAt;
    type Delivery = { eventKey: string; status: string; attempts: number; lastError: string | null };
    // Recorded as delivered only once an answer came: the lost ones were sent again first.
    const final = await until("every delivery recorded as delivered", async () => {
      const ds = (await a.api.get(`/v1/webhooks/${w.id}/deliveries?limit=1000`)).json
        .deliveries as Delivery[];
      return ds.every((d) => d.status === "delivered") && ds;
    });
    drain();
    assert.deepEqual(new Set(processedOnce), expected);
    // Retries carry the same key: what was refused while down is among what was owed.
    for (const k of keysWhileDown) assert.ok(expected.has(k), k);
    assert.equal(processedOnce.length, expected.size);
    assert.deepEqual(new Set(final.map((d) => d.eventKey)), expected);
    for (const d of final) {
      assert.equal(d.status, "delivered");
      assert.ok(d.attempts > 1, `${d.eventKey}: ${d.attempts} attempts`);
      assert.equal(d.lastError, null);
    }
    // The attempts counter saw the retries and the deliveries.
    const counted = new Map(
      (await env.metrics.webhookDeliveries.get()).values.map((v) => [String(v.labels["outcome"]), v.value]),
    );
    assert.equal(counted.get("delivered"), expected.size);
    const duplicatesSeen = [...processed.values()].reduce((sum, n) => sum + n - 1, 0);
    assert.ok(duplicatesSeen >= 5, `lost answers were sent again: ${duplicatesSeen}`);
    assert.ok((counted.get("retry") ?? 0) >= expected.size);
    const duplicates = duplicatesSeen;
    const attempts = final.map((d) => d.attempts);
    console.log(
      `receiver down ${downMs} ms; ${expected.size} events (${ended.length} usage.final); all arrived ${allMs} ms after it came back; ` +
        `raw duplicates ${duplicates}; attempts per delivery min ${Math.min(...attempts)} max ${Math.max(...attempts)}; ` +
        `${arrivalsWhileDown} requests answered 503`,
    );
  });

  test("a hanging receiver and an endless body do not hold up another webhook", async () => {
    const env = await inProcess({
      webhooks: { ...defaultWebhookConfig({}), ...FAST, attemptTimeoutMs: 1_500, perWebhookConcurrency: 2 },
    });
    cleanups.push(() => env.close());
    const hang = new Receiver();
    hang.mode = "hang";
    const endless = new Receiver();
    endless.mode = "endless";
    const good = new Receiver();
    const ports = [await hang.listen(), await endless.listen(), await good.listen()];
    cleanups.push(
      () => hang.close(),
      () => endless.close(),
      () => good.close(),
    );
    const a = await env.tenant();
    const hooks: { id: string }[] = [];
    for (const p of ports)
      hooks.push((await a.api.post("/v1/webhooks", { url: `http://127.0.0.1:${p}/`, events: ["*"] })).json);
    const ended: string[] = [];
    for (let i = 0; i < 2; i++) {
      const sb = (await a.api.post("/v1/sandboxes", {})).json;
      await a.api.delete(`/v1/sandboxes/${sb.id}`);
      ended.push(sb.id);
    }
    const expected = await expectedKeys(env, a.id, ended);
    env.webhooks.start();
    await until("the good receiver got every key", async () =>
      [...expected].every((k) => good.arrivals.some((x) => x.id === k)),
    );
    const goodDs = (await a.api.get(`/v1/webhooks/${hooks[2]!.id}/deliveries?limit=1000`)).json.deliveries;
    await until("the good deliveries recorded", async () =>
      (await a.api.get(`/v1/webhooks/${hooks[2]!.id}/deliveries?limit=1000`)).json.deliveries.every(
        (d: { status: string }) => d.status === "delivered",
      ),
    );
    assert.equal(goodDs.length, expected.size);
    // The bad ones are still owed, and their failures are recorded as such.
    await until("the hanging receiver's attempts time out", async () => {
      const ds = (await a.api.get(`/v1/webhooks/${hooks[0]!.id}/deliveries?limit=1000`)).json.deliveries;
      return ds.some((d: { lastError: string | null }) => d.lastError?.startsWith("no answer within"));
    });
    await until("the endless body is cut off", async () => {
      const ds = (await a.api.get(`/v1/webhooks/${hooks[1]!.id}/deliveries?limit=1000`)).json.deliveries;
      return (
        ds.some((d: { lastError: string | null }) => d.lastError?.startsWith("HTTP 500")) &&
        endless.endlessDropped > 0
      );
    });
    for (const h of hooks.slice(0, 2)) {
      const ds = (await a.api.get(`/v1/webhooks/${h.id}/deliveries?limit=1000`)).json.deliveries;
      assert.ok(ds.every((d: { status: string }) => d.status === "pending"));
    }
  });

  test("at delivery time a name that resolves to loopback is refused without the operator's option", async () => {
    const env = await inProcess({ webhooks: { ...defaultWebhookConfig({}), ...FAST, allowPrivate: false } });
    cleanups.push(() => env.close());
    const rx = new Receiver();
    const port = await rx.listen();
    cleanups.push(() => rx.close());
    const a = await env.tenant();
    // As if the name had resolved to a public address at create (DNS rebinding): stored directly.
    await env.store.createWebhook({
      id: "wh_rebind",
      tenantId: a.id,
      url: `http://localhost:${port}/`,
      secret: "whsec_AAAA",
      events: ["*"],
      description: "",
      createdAt: new Date().toISOString(),
      createdByKey: null,
      disabledAt: null,
    });
    await env.store.createWebhook({
      id: "wh_literal",
      tenantId: a.id,
      url: `http://127.0.0.1:${port}/`,
      secret: "whsec_AAAA",
      events: ["*"],
      description: "",
      createdAt: new Date().toISOString(),
      createdByKey: null,
      disabledAt: null,
    });
    await a.api.post("/v1/sandboxes", {});
    env.webhooks.start();
    for (const id of ["wh_rebind", "wh_literal"]) {
      const ds = await until(`${id} refused`, async () => {
        const list = (await a.api.get(`/v1/webhooks/${id}/deliveries`)).json.deliveries;
        return list.length > 0 && list.every((d: { attempts: number }) => d.attempts >= 1) && list;
      });
      for (const d of ds) assert.match(d.lastError, /not allowed/);
    }
    assert.equal(rx.arrivals.length, 0);
  });

  test("redirects are not followed: a 3xx is a failed attempt and its Location gets nothing", async () => {
    const env = await inProcess({ webhooks: { ...defaultWebhookConfig({}), ...FAST } });
    cleanups.push(() => env.close());
    const target = new Receiver();
    const targetPort = await target.listen();
    cleanups.push(() => target.close());
    const redirector = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(307, { location: `http://127.0.0.1:${targetPort}/` }).end());
    });
    await new Promise<void>((r) => redirector.listen(0, "127.0.0.1", () => r()));
    cleanups.push(() => new Promise<void>((r) => redirector.close(() => r())));
    const a = await env.tenant();
    const port = (redirector.address() as AddressInfo).port;
    const w = (await a.api.post("/v1/webhooks", { url: `http://127.0.0.1:${port}/`, events: ["sandbox.*"] }))
      .json;
    await a.api.post("/v1/sandboxes", {});
    env.webhooks.start();
    const ds = await until("attempts recorded", async () => {
      const list = (await a.api.get(`/v1/webhooks/${w.id}/deliveries`)).json.deliveries;
      return list.length > 0 && list.every((d: { attempts: number }) => d.attempts >= 2) && list;
    });
    for (const d of ds) {
      assert.equal(d.status, "pending");
      assert.match(d.lastError, /^HTTP 307: redirects are not followed/);
    }
    assert.equal(target.arrivals.length, 0);
  });
});
