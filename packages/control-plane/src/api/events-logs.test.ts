// The lifecycle event stream (SSE, tenant-scoped, resumable) and a sandbox's
// console and start-command output through the API (in-process, fake node).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inProcess } from "../testing/in-process.ts";
import { MAX_STREAMS_PER_TENANT } from "./routes/events.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

interface Sse {
  id: string;
  event: string;
  data: { seq: number; sandboxId: string; tenantId: string; type: string; detail: Record<string, unknown> };
}

/** Opens the stream; `until` decides when enough events came; the stream is closed after. */
async function readEvents(
  env: Env,
  key: string,
  query: string,
  until: (got: Sse[]) => boolean,
  headers: Record<string, string> = {},
): Promise<Sse[]> {
  const r = await env.app.request(`/v1/events${query}`, {
    headers: { authorization: `Bearer ${key}`, ...headers },
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/event-stream/);
  const reader = r.body!.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const got: Sse[] = [];
  try {
    while (!until(got)) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let end = buf.indexOf("\n\n");
      while (end >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const f: Record<string, string> = {};
        for (const line of block.split("\n")) {
          const i = line.indexOf(":");
          if (i > 0) f[line.slice(0, i)] = line.slice(i + 1).trimStart();
        }
        if (f["data"]) got.push({ id: f["id"]!, event: f["event"]!, data: JSON.parse(f["data"]) });
        end = buf.indexOf("\n\n");
      }
    }
  } finally {
    await reader.cancel();
  }
  return got;
}

describe("event stream", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("a tenant's stream carries its own sandboxes' events in order, and resumes from Last-Event-ID", async () => {
    const a = await env.tenant();
    const b = await env.tenant();
    let mine = "";
    const reading = readEvents(env, a.key, "", (got) =>
      got.some((e) => e.data.sandboxId === mine && e.event === "ready"),
    );
    // The stream starts with new events only: made after it opened.
    await new Promise((r) => setTimeout(r, 100));
    const other = (await b.api.post("/v1/sandboxes", {})).json;
    mine = (await a.api.post("/v1/sandboxes", {})).json.id;
    const got = await reading;
    assert.ok(got.length >= 3);
    for (const e of got) {
      assert.equal(e.data.tenantId, a.id);
      assert.notEqual(e.data.sandboxId, other.id);
      assert.equal(e.id, String(e.data.seq));
      assert.equal(e.event, e.data.type);
    }
    assert.deepEqual(
      got.map((e) => e.data.seq),
      got.map((e) => e.data.seq).sort((x, y) => x - y),
    );
    assert.deepEqual(
      got.slice(0, 2).map((e) => e.event),
      ["requested", "scheduled"],
    );

    // Resume after the first: everything after it again, and a kill's events.
    await a.api.delete(`/v1/sandboxes/${mine}`);
    const again = await readEvents(env, a.key, "", (g) => g.some((e) => e.event === "ended"), {
      "last-event-id": got[0]!.id,
    });
    assert.equal(again[0]!.data.seq, got[1]!.data.seq);
    // A sandbox filter and ?after= from the beginning.
    const one = await readEvents(env, a.key, `?after=0&sandboxId=${mine}`, (g) =>
      g.some((e) => e.event === "ended"),
    );
    assert.ok(one.every((e) => e.data.sandboxId === mine));
    assert.equal(one[0]!.event, "requested");
    await b.api.delete(`/v1/sandboxes/${other.id}`);
  });

  test("open streams per tenant are bounded", async () => {
    const t = await env.tenant({ requestsPerMinute: 10_000 });
    const open: ReadableStreamDefaultReader<Uint8Array>[] = [];
    try {
      for (let i = 0; i < MAX_STREAMS_PER_TENANT; i++) {
        const r = await env.app.request("/v1/events", { headers: { authorization: `Bearer ${t.key}` } });
        assert.equal(r.status, 200);
        open.push(r.body!.getReader());
      }
      const over = await env.app.request("/v1/events", { headers: { authorization: `Bearer ${t.key}` } });
      assert.equal(over.status, 429);
      assert.equal(((await over.json()) as { error: { code: string } }).error.code, "RATE_LIMITED");
    } finally {
      for (const r of open) await r.cancel();
    }
    // Closed streams give their places back (the stream notices within a poll).
    await new Promise((r) => setTimeout(r, 700));
    const r = await env.app.request("/v1/events", { headers: { authorization: `Bearer ${t.key}` } });
    assert.equal(r.status, 200);
    await r.body!.cancel();
  });
});

describe("logs", () => {
  let env: Env;
  before(async () => {
    env = await inProcess();
  });
  after(() => env.close());

  test("console and start output: offsets, nosniff text, follow until the sandbox ends, tenant-scoped", async () => {
    const t = await env.tenant();
    const other = await env.tenant();
    const sb = (await t.api.post("/v1/sandboxes", {})).json;
    const nodeId = (await env.store.getSandbox(sb.id))!.nodeSandboxId!;
    env.node.logText.set(nodeId, { console: "booted\n<script>x</script>\n", start: "server up\n" });
    const get = (q: string, key = t.key) =>
      env.app.request(`/v1/sandboxes/${sb.id}/logs${q}`, { headers: { authorization: `Bearer ${key}` } });

    const all = await get("");
    assert.equal(all.status, 200);
    assert.equal(all.headers.get("content-type"), "text/plain; charset=utf-8");
    assert.equal(all.headers.get("x-content-type-options"), "nosniff");
    assert.equal(await all.text(), "booted\n<script>x</script>\n");
    assert.equal(all.headers.get("x-log-offset"), "0");
    assert.equal(all.headers.get("x-log-next-offset"), "26");
    const start = await get("?source=start");
    assert.equal(await start.text(), "server up\n");
    const tail = await get("?offset=7");
    assert.equal(await tail.text(), "<script>x</script>\n");

    // Follow: new output arrives as it is printed; the stream ends with the sandbox.
    const follow = await get("?follow=true&offset=26");
    const reader = follow.body!.getReader();
    env.node.logText.set(nodeId, { console: "booted\n<script>x</script>\nlater\n", start: "" });
    const { value } = await reader.read();
    assert.equal(new TextDecoder().decode(value), "later\n");
    await t.api.delete(`/v1/sandboxes/${sb.id}`);
    for (;;) if ((await reader.read()).done) break;

    assert.equal((await get("", other.key)).status, 404);
    const bad = await get("?source=disk");
    assert.equal(bad.status, 400);
  });
});
