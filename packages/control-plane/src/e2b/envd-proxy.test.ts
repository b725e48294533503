// The envd proxy against a hostile guest agent (a FakeGuest), over the real
// listener in-process: bad answers fail that request only with E2B's error
// shape, and a fast agent behind a slow client is paused.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Flood } from "../testing/fake-guest.ts";
import { type Harness, listenerHarness } from "../testing/listener-harness.ts";

let h: Harness;
let id: string;
let token: string;

describe("envd proxy against a hostile agent", () => {
  before(async () => {
    h = await listenerHarness();
    const t = await h.tenant();
    const c = await h.http.withKey(t.key).post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    id = c.json.id;
    token = c.json.envdAccessToken;
  });
  after(() => h.close());

  /** The node reaches this sandbox's agent at a port answered by `answer`. */
  async function agentAnswers(answer: Parameters<Harness["guest"]["raw"]>[0]) {
    const port = await h.guest.raw(answer);
    h.node.guest = { address: h.guest.address, envdPort: port };
    // The agent is always port 49983 to the client; the (fake) node maps it to the guest.
    return { "e2b-sandbox-id": id, "e2b-sandbox-port": "49983", "x-access-token": token };
  }

  test("bad statuses, bad headers, garbage and silence are 502 {code, message}; the server keeps serving", async () => {
    for (const answer of [
      "HTTP/1.1 099 X\r\ncontent-length: 0\r\n\r\n",
      "HTTP/1.1 999 X\r\ncontent-length: 0\r\n\r\n",
      "HTTP/1.1 101 X\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
      `HTTP/1.1 200 OK\r\nx-big: ${"a".repeat(20_000)}\r\n\r\n`,
      "HTTP/1.1 200 OK\r\nx-a: \u0000\r\n\r\n",
      "\u0016\u0003\u0001 not http\r\n\r\n",
      "",
    ]) {
      const headers = await agentAnswers((sock) => sock.end(answer, "latin1"));
      const r = await h.request("/process.Process/List", {
        method: "POST",
        headers: { ...headers, "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(r.status, 502, `${JSON.stringify(answer.slice(0, 30))}: ${r.body}`);
      assert.equal(r.json.code, 502);
      assert.match(r.json.message, new RegExp(`the agent of sandbox ${id}`));
      assert.equal((await h.request("/v1/health")).status, 200);
    }
  });

  test("a file download flood behind a client that does not read is paused; closing the client closes the agent's socket", async () => {
    let flood: Flood | undefined;
    const headers = await agentAnswers((sock) => {
      sock.write("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n");
      flood = new Flood(sock, Buffer.alloc(64 * 1024, 0x62));
    });
    const { req, res } = await h.open("/files?path=/big", { headers });
    assert.equal(res.statusCode, 200);
    res.pause();
    await flood!.stalled();
    assert.ok(
      flood!.written < 64 * 2 ** 20,
      `the agent wrote ${flood!.written} bytes to a client that reads nothing`,
    );
    req.destroy();
    await flood!.closed;
    assert.equal((await h.request("/v1/health")).status, 200);
  });
});
