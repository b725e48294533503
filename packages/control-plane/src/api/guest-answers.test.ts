// The native API's commands and files routes relay a guest agent's answers:
// here a hostile fake agent (Connect JSON over HTTP/1.1 on its own loopback
// address) floods, stalls, lies about sizes and sends garbage. Each attack
// fails its own request with a code (or ends its own stream), memory stays
// bounded (a slow client pauses the agent), connections are closed on both
// sides, and the server keeps answering.
import assert from "node:assert/strict";
import type http from "node:http";
import { after, before, describe, test } from "node:test";
import { endEvent, endOfStream, Flood, frame, startEvent, stdoutEvent } from "../testing/fake-guest.ts";
import { type Harness, listenerHarness } from "../testing/listener-harness.ts";

let h: Harness;
let id: string;
let key: string;
/** What the fake agent does with the next requests (set per test). */
let agent: (req: http.IncomingMessage, res: http.ServerResponse) => void = (_req, res) => res.end();
// Long enough that a loaded machine never hits it by accident; the tests that
// expect it wait this long.
const TIMEOUT_MS = 3000;

const authHeaders = () => ({ authorization: `Bearer ${key}` });

function streamHead(res: http.ServerResponse): void {
  res.writeHead(200, { "content-type": "application/connect+json" });
}

async function runCommand(): Promise<{
  status: number;
  lines: { type: string; [k: string]: unknown }[];
  body: string;
  traceId: string;
}> {
  const r = await h.request(`/v1/sandboxes/${id}/commands`, {
    method: "POST",
    headers: { ...authHeaders(), "content-type": "application/json" },
    body: JSON.stringify({ cmd: "x" }),
  });
  const lines =
    r.status === 200
      ? r.body
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l))
      : [];
  return { status: r.status, lines, body: r.body, traceId: String(r.headers["x-trace-id"] ?? "") };
}

async function healthy(): Promise<void> {
  assert.equal((await h.request("/v1/health")).status, 200);
}

describe("commands and files against a hostile agent", () => {
  before(async () => {
    h = await listenerHarness({ commandStartTimeoutMs: TIMEOUT_MS });
    const port = await h.guest.http((req, res) => {
      req.on("error", () => {});
      res.on("error", () => {});
      agent(req, res);
    });
    h.node.guest = {
      address: h.guest.address,
      envdPort: port,
      options: { unaryTimeoutMs: TIMEOUT_MS, headersTimeoutMs: TIMEOUT_MS },
    };
    const t = await h.tenant();
    key = t.key;
    const c = await h.http.withKey(key).post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    id = c.json.id;
  });
  after(() => h.close());

  test("a well-behaved agent: start, output, end", async () => {
    agent = (_req, res) => {
      streamHead(res);
      res.end(Buffer.concat([startEvent(), stdoutEvent(Buffer.from("hi\n")), endEvent(3), endOfStream()]));
    };
    const r = await runCommand();
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(
      r.lines.map((l) => l.type),
      ["start", "stdout", "end"],
    );
    assert.equal(r.lines[2]!["exitCode"], 3);
    // Its trace: the request's span and the command's phases, each ended.
    const tr = await h.request(`/v1/traces/${r.traceId}`, { headers: authHeaders() });
    assert.equal(tr.status, 200, tr.body);
    const spans = tr.json.spans as {
      name: string;
      parentSpanId: string;
      spanId: string;
      attributes: Record<string, unknown>;
    }[];
    const req = spans.find((x) => x.name === "POST /v1/sandboxes/:id/commands")!;
    assert.ok(req, spans.map((x) => x.name).join(", "));
    assert.deepEqual(
      spans
        .filter((x) => x.parentSpanId === req.spanId && x.attributes["firebreak.phase"])
        .map((x) => x.name),
      ["connect", "start", "run"],
    );
  });

  test("command output flood behind a client that does not read: the agent is paused; the client's close reaches it", async () => {
    let flood: Flood | undefined;
    agent = (_req, res) => {
      streamHead(res);
      res.write(startEvent());
      flood = new Flood(res, stdoutEvent(Buffer.alloc(48 * 1024, 0x63)));
    };
    const { req, res } = await h.open(`/v1/sandboxes/${id}/commands`, {
      method: "POST",
      headers: { ...authHeaders(), "content-type": "application/json" },
      body: JSON.stringify({ cmd: "yes" }),
    });
    assert.equal(res.statusCode, 200);
    res.pause();
    await flood!.stalled();
    assert.ok(
      flood!.written < 64 * 2 ** 20,
      `the agent wrote ${flood!.written} bytes to a client that reads nothing`,
    );
    req.destroy();
    await flood!.closed;
    await healthy();
  });

  test("garbage before start: too many early events, a frame claiming 1 GiB, broken JSON, silence", async () => {
    agent = (_req, res) => {
      streamHead(res);
      for (let i = 0; i < 100; i++) res.write(stdoutEvent(Buffer.from("early")));
      res.end(Buffer.concat([startEvent(), endEvent(), endOfStream()]));
    };
    let r = await runCommand();
    assert.equal(r.status, 502, r.body);
    assert.equal(JSON.parse(r.body).error.code, "GUEST_RESPONSE_INVALID");

    agent = (_req, res) => {
      streamHead(res);
      const head = Buffer.alloc(5);
      head.writeUInt32BE(2 ** 30, 1);
      res.end(Buffer.concat([head, Buffer.alloc(1000)]));
    };
    r = await runCommand();
    assert.equal(r.status, 502, r.body);
    assert.equal(JSON.parse(r.body).error.code, "GUEST_RESPONSE_TOO_LARGE");

    agent = (_req, res) => {
      streamHead(res);
      const body = Buffer.from("{not json");
      const head = Buffer.alloc(5);
      head.writeUInt32BE(body.length, 1);
      res.end(Buffer.concat([head, body]));
    };
    r = await runCommand();
    assert.equal(r.status, 502, r.body);
    assert.equal(JSON.parse(r.body).error.code, "GUEST_RESPONSE_INVALID");

    let closed: Promise<void> | undefined;
    agent = (_req, res) => {
      streamHead(res);
      res.flushHeaders();
      closed = new Promise((done) => res.once("close", () => done()));
    };
    r = await runCommand();
    assert.equal(r.status, 502, r.body);
    assert.match(
      JSON.parse(r.body).error.message,
      new RegExp(`did not start the command within ${TIMEOUT_MS} ms`),
    );
    await closed;
    await healthy();
  });

  test("a malformed event after start ends the stream with an error line, not the server", async () => {
    agent = (_req, res) => {
      streamHead(res);
      res.end(Buffer.concat([startEvent(), frame({ event: { data: { stdout: 123 } } }), endEvent()]));
    };
    const r = await runCommand();
    assert.equal(r.status, 200);
    const last = r.lines.at(-1)!;
    assert.equal(last.type, "end");
    assert.equal(last["exitCode"], -1);
    assert.match(String(last["error"]), /stream failed/);
    await healthy();
  });

  test("file reads: a bad status, an endless error body, no head at all, an endless body behind a slow client", async () => {
    agent = (_req, res) => {
      res.socket!.end("HTTP/1.1 999 X\r\ncontent-length: 0\r\n\r\n");
    };
    let r = await h.request(`/v1/sandboxes/${id}/files?path=a`, { headers: authHeaders() });
    assert.equal(r.status, 502, r.body);

    let flood: Flood | undefined;
    agent = (_req, res) => {
      res.writeHead(404, { "content-type": "text/plain" });
      flood = new Flood(res, Buffer.alloc(64 * 1024, 0x64));
    };
    r = await h.request(`/v1/sandboxes/${id}/files?path=a`, { headers: authHeaders() });
    assert.equal(r.status, 404, r.body);
    assert.equal(r.json.error.code, "NOT_FOUND");
    await flood!.closed; // the rest of the error body was not read: the connection is gone

    agent = () => {}; // accepts, never answers
    r = await h.request(`/v1/sandboxes/${id}/files?path=a`, { headers: authHeaders() });
    assert.equal(r.status, 502, r.body);
    assert.match(r.json.error.message, new RegExp(`no answer within ${TIMEOUT_MS} ms`));

    agent = (_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream" });
      flood = new Flood(res, Buffer.alloc(64 * 1024, 0x65));
    };
    const { req, res } = await h.open(`/v1/sandboxes/${id}/files?path=big`, { headers: authHeaders() });
    assert.equal(res.statusCode, 200);
    res.pause();
    await flood!.stalled();
    assert.ok(
      flood!.written < 64 * 2 ** 20,
      `the agent wrote ${flood!.written} bytes to a client that reads nothing`,
    );
    req.destroy();
    await flood!.closed;
    await healthy();
  });

  test("file writes: an endless reply, a reply that is not JSON, a reply of the wrong shape", async () => {
    const put = () =>
      h.request(`/v1/sandboxes/${id}/files?path=f.txt`, {
        method: "PUT",
        headers: { ...authHeaders(), "content-type": "application/octet-stream" },
        body: "content",
      });
    let flood: Flood | undefined;
    agent = (req, res) => {
      req.resume();
      req.on("end", () => {
        res.writeHead(200, { "content-type": "application/json" });
        res.write("[");
        flood = new Flood(res, Buffer.from(`${JSON.stringify({ path: "x".repeat(1000) })},`));
      });
    };
    let r = await put();
    assert.equal(r.status, 502, r.body);
    assert.equal(r.json.error.code, "GUEST_RESPONSE_TOO_LARGE");
    await flood!.closed;

    agent = (req, res) => {
      req.resume();
      req.on("end", () => res.end("nope"));
    };
    r = await put();
    assert.equal(r.status, 502, r.body);
    assert.equal(r.json.error.code, "GUEST_RESPONSE_INVALID");

    agent = (req, res) => {
      req.resume();
      req.on("end", () => res.end('[{"path": {"toString": 1}}]'));
    };
    r = await put();
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(r.json, { path: "f.txt", bytes: 7 });
    await healthy();
  });

  test("unary calls: no answer times out; a message that does not decode or is oversized is refused", async () => {
    agent = () => {};
    let r = await h.request(`/v1/sandboxes/${id}/files/stat?path=a`, { headers: authHeaders() });
    assert.equal(r.status, 502, r.body);

    agent = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          entry: {
            name: "a",
            path: "/a",
            type: "FILE_TYPE_FILE",
            size: "1",
            mode: 420,
            modifiedTime: "+275760-09-13T00:00:01Z",
          },
        }),
      );
    };
    r = await h.request(`/v1/sandboxes/${id}/files/stat?path=a`, { headers: authHeaders() });
    // The guest's message does not decode: the guest's fault (502), not the caller's (400).
    assert.equal(r.status, 502, r.body);
    assert.equal(r.json.error.code, "GUEST_RESPONSE_INVALID");

    agent = (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      new Flood(res, Buffer.from(" ".repeat(64 * 1024)));
    };
    // The size limit, not the clock, must end this one: a loaded machine may
    // not move 16 MiB within the short timeout of the other cases.
    const guest = h.node.guest!;
    h.node.guest = { ...guest, options: { ...guest.options, unaryTimeoutMs: 300_000 } };
    try {
      r = await h.request(`/v1/sandboxes/${id}/files/stat?path=a`, { headers: authHeaders() });
    } finally {
      h.node.guest = guest;
    }
    assert.equal(r.status, 502, r.body);
    assert.equal(r.json.error.code, "GUEST_RESPONSE_TOO_LARGE");
    await healthy();
  });

  test("a chatty template build behind a slow client: output lines are dropped past 1 MiB, never queued without bound", async () => {
    h.node.buildRunLines = 20_000; // ~20 MB of output lines
    const { res } = await h.open("/v1/templates", {
      method: "POST",
      headers: {
        authorization: `Bearer ${(await h.tenant({}, ["templates"])).key}`,
        "content-type": "application/json",
      },
      // A tenant builds its own template from a spec (names alone build only built-ins).
      body: JSON.stringify({ spec: { name: "chatty" } }),
    });
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    h.node.buildRunLines = 0;
    const lines = Buffer.concat(chunks)
      .toString()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l));
    assert.equal(lines.at(-1).type, "done");
    const run = lines.filter((l) => l.step === "run");
    assert.ok(run.length < 2000, `${run.length} run lines were queued`);
    assert.ok(
      run.some((l) => /output lines dropped/.test(l.detail)),
      "the client is told how many lines were dropped",
    );
  });
});
