// The ingress proxy against a hostile app in the sandbox (a FakeGuest on its
// own loopback address) and hostile pages in browsers, over the real listener
// in-process: whatever the app answers fails that request only (502 with a
// code), a fast app behind a slow client is paused, connections are closed on
// both sides, and the ingress token and cookie open only their own sandbox,
// from their own origin.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { Flood } from "../testing/fake-guest.ts";
import { DOMAIN, type Harness, listenerHarness } from "../testing/listener-harness.ts";

let h: Harness;
let id: string;
let ingressToken: string;
let envdToken: string;

/** A sandbox port served by `answer` (raw bytes after reading the request head). */
async function rawPort(answer: (sock: net.Socket, head: string) => void): Promise<number> {
  return h.guest.raw(answer);
}

async function healthy(): Promise<void> {
  const r = await h.request("/v1/health");
  assert.equal(r.status, 200, `health after an attack: ${r.body}`);
}

const auth = () => ({ "x-firebreak-ingress-token": ingressToken });

describe("ingress against a hostile app and hostile pages", () => {
  before(async () => {
    h = await listenerHarness();
    h.node.guest = { address: h.guest.address, envdPort: 1 };
    const t = await h.tenant();
    const c = await h.http.withKey(t.key).post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    id = c.json.id;
    ingressToken = c.json.ingressToken;
    envdToken = c.json.envdAccessToken;
    assert.match(ingressToken, /^fbi_[0-9a-f]{64}$/);
    assert.notEqual(ingressToken, envdToken);
  });
  after(() => h.close());

  const bad: [string, string, string][] = [
    ["status 099", "HTTP/1.1 099 Nope\r\ncontent-length: 0\r\n\r\n", "GUEST_RESPONSE_INVALID"],
    ["status 000", "HTTP/1.1 000 Nope\r\ncontent-length: 0\r\n\r\n", "GUEST_RESPONSE_INVALID"],
    ["status 600", "HTTP/1.1 600 Nope\r\ncontent-length: 0\r\n\r\n", "GUEST_RESPONSE_INVALID"],
    ["status 999", "HTTP/1.1 999 Nope\r\ncontent-length: 0\r\n\r\n", "GUEST_RESPONSE_INVALID"],
    ["a 4-digit status", "HTTP/1.1 2000 Nope\r\n\r\n", "GUEST_RESPONSE_INVALID"],
    [
      "101 to a plain request",
      "HTTP/1.1 101 Go\r\nupgrade: x\r\nconnection: upgrade\r\n\r\njunk",
      "GUEST_RESPONSE_INVALID",
    ],
    [
      "a control character in a header",
      "HTTP/1.1 200 OK\r\nx-a: a\u0001b\r\ncontent-length: 0\r\n\r\n",
      "GUEST_RESPONSE_INVALID",
    ],
    [
      "a space in a header name",
      "HTTP/1.1 200 OK\r\nx a: b\r\ncontent-length: 0\r\n\r\n",
      "GUEST_RESPONSE_INVALID",
    ],
    [
      "headers over 16 KiB",
      `HTTP/1.1 200 OK\r\nx-big: ${"a".repeat(20_000)}\r\n\r\n`,
      "GUEST_RESPONSE_INVALID",
    ],
    ["5000 small headers", `HTTP/1.1 200 OK\r\n${"x-a: b\r\n".repeat(5000)}\r\n`, "GUEST_RESPONSE_INVALID"],
    ["not HTTP at all", "\u0000\u0001garbage\r\n\r\n", "GUEST_RESPONSE_INVALID"],
    [
      "two content-lengths",
      "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
      "GUEST_RESPONSE_INVALID",
    ],
    [
      "chunked and content-length",
      "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
      "GUEST_RESPONSE_INVALID",
    ],
  ];

  test("an answer that is not valid HTTP (status outside 200-599, bad or oversized headers) is a 502 for that request only", async () => {
    for (const [what, answer, code] of bad) {
      const port = await rawPort((sock) => sock.end(answer, "latin1"));
      const r = await h.request("/x", { host: `${port}-${id}.${DOMAIN}`, headers: auth() });
      assert.equal(r.status, 502, `${what}: ${r.status} ${r.body}`);
      assert.equal(r.json.error.code, code, `${what}: ${r.body}`);
      assert.ok(r.json.error.requestId, what);
      await healthy();
    }
    // The same through the path-based URL, and a good answer still passes.
    const port = await rawPort((sock) => sock.end("HTTP/1.1 999 X\r\ncontent-length: 0\r\n\r\n"));
    assert.equal((await h.request(`/ingress/${id}/${port}/`, { headers: auth() })).status, 502);
    const ok = await rawPort((sock) => sock.end("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"));
    const good = await h.request("/", { host: `${ok}-${id}.${DOMAIN}`, headers: auth() });
    assert.equal(good.status, 200);
    assert.equal(good.body, "hi");
  });

  test("a guest that closes without answering, or resets, is a 502; nothing listening is AGENT_ERROR", async () => {
    const closes = await rawPort((sock) => sock.end());
    const r1 = await h.request("/", { host: `${closes}-${id}.${DOMAIN}`, headers: auth() });
    assert.equal(r1.status, 502);
    const resets = await rawPort((sock) => sock.resetAndDestroy());
    const r2 = await h.request("/", { host: `${resets}-${id}.${DOMAIN}`, headers: auth() });
    assert.equal(r2.status, 502);
    // A port nobody listens on (a fresh server's port, closed again).
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, h.guest.address, r));
    const free = (srv.address() as net.AddressInfo).port;
    await new Promise((r) => srv.close(r));
    const r3 = await h.request("/", { host: `${free}-${id}.${DOMAIN}`, headers: auth() });
    assert.equal(r3.status, 502);
    assert.equal(r3.json.error.code, "AGENT_ERROR");
    await healthy();
  });

  test("a server that starts listening while a request without a body waits answers it; a request with a body is not held", async () => {
    // A free port: nothing listens there until the server below starts.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, h.guest.address, r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    // With a body, the refusal is answered at once (its bytes may be on their way upstream).
    const posted = await h.request("/", {
      host: `${port}-${id}.${DOMAIN}`,
      headers: auth(),
      method: "POST",
      body: "payload",
    });
    assert.equal(posted.status, 502);
    assert.equal(posted.json.error.code, "AGENT_ERROR");
    // Without one, the request waits (up to the harness's 1 s) for the server, started 300 ms in.
    const srv = net.createServer((sock) => {
      sock.once("data", () => sock.end("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlate!"));
    });
    try {
      const pending = h.request("/", { host: `${port}-${id}.${DOMAIN}`, headers: auth() });
      await new Promise((r) => setTimeout(r, 300));
      await new Promise<void>((r) => srv.listen(port, h.guest.address, r));
      const r = await pending;
      assert.equal(r.status, 200, r.body);
      assert.equal(r.body, "late!");
    } finally {
      await new Promise((r) => srv.close(r));
    }
    await healthy();
  });
  test("a body cut short after a good head ends the client's response with an error, not a hang", async () => {
    const port = await rawPort((sock) =>
      sock.end("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten!!"),
    );
    await assert.rejects(h.request("/", { host: `${port}-${id}.${DOMAIN}`, headers: auth() }));
    await healthy();
  });

  test("an endless body behind a client that does not read: the guest is paused, and the client's close reaches it", async () => {
    let flood: Flood | undefined;
    const port = await rawPort((sock) => {
      sock.write("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n");
      flood = new Flood(sock, Buffer.alloc(64 * 1024, 0x61));
    });
    const { req, res } = await h.open("/", { host: `${port}-${id}.${DOMAIN}`, headers: auth() });
    assert.equal(res.statusCode, 200);
    res.pause();
    await flood!.stalled();
    // Kernel socket buffers on two hops and Node's stream buffers, nothing more.
    assert.ok(
      flood!.written < 64 * 2 ** 20,
      `the guest wrote ${flood!.written} bytes to a client that reads nothing`,
    );
    const before = flood!.written;
    // Reading resumes the flow...
    res.resume();
    assert.ok(await flood!.wroteMoreThan(before), "reading lets the guest write again");
    // ...and the client going away closes the guest's connection.
    req.destroy();
    await flood!.closed;
    await healthy();
  });

  test("a guest that never answers: the client's disconnect closes the upstream connection", async () => {
    let accepted!: () => void;
    const got = new Promise<void>((r) => {
      accepted = r;
    });
    let guestSock: net.Socket | undefined;
    const port = await rawPort((sock) => {
      guestSock = sock;
      accepted();
    });
    const opened = h.open("/", { host: `${port}-${id}.${DOMAIN}`, headers: auth() });
    opened.catch(() => {});
    await got;
    const closed = new Promise((r) => guestSock!.once("close", r));
    // Destroy our side: find the client request through a second open is not possible; close all client sockets.
    h.server.closeAllConnections();
    await closed;
    await healthy();
  });

  test("a WebSocket upgrade answered with junk, a bad status or nothing fails that upgrade only", async () => {
    const upgrade = (port: number, extra: Record<string, string> = {}) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const sock = net.connect(h.port, "127.0.0.1");
        let text = "";
        sock.on("data", (b) => {
          text += b.toString();
        });
        sock.on("close", () => resolve({ status: Number(text.split(" ")[1] ?? 0), text }));
        sock.on("error", reject);
        const headers = {
          host: `${port}-${id}.${DOMAIN}`,
          connection: "Upgrade",
          upgrade: "websocket",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          "sec-websocket-version": "13",
          ...auth(),
          ...extra,
        };
        sock.write(
          `GET /ws HTTP/1.1\r\n${Object.entries(headers)
            .map(([k, v]) => `${k}: ${v}\r\n`)
            .join("")}\r\n`,
        );
        setTimeout(() => sock.end(), 2000);
      });
    for (const answer of [
      "HTTP/1.1 099 X\r\n\r\n",
      "HTTP/1.1 999 X\r\ncontent-length: 0\r\n\r\n",
      `HTTP/1.1 101 Switching\r\nupgrade: websocket\r\nconnection: Upgrade\r\nx-big: ${"b".repeat(20_000)}\r\n\r\n`,
      "garbage\r\n\r\n",
      "",
    ]) {
      const port = await rawPort((sock) => sock.end(answer));
      const r = await upgrade(port);
      assert.equal(r.status, 502, `answer ${JSON.stringify(answer.slice(0, 30))}: ${r.text.slice(0, 300)}`);
      assert.match(r.text, /"code":"(GUEST_RESPONSE_INVALID|AGENT_ERROR)"/);
      await healthy();
    }
    // A refusal with a normal status is relayed (and its token cookie dropped).
    const refuses = await rawPort((sock) =>
      sock.end(
        "HTTP/1.1 403 Forbidden\r\nset-cookie: fb_ingress_token=evil; Domain=firebreak.localhost\r\ncontent-length: 2\r\n\r\nno",
      ),
    );
    const r = await upgrade(refuses);
    assert.equal(r.status, 403);
    assert.doesNotMatch(r.text, /fb_ingress_token/);
  });

  test("the envd access token does not open ingress; the ingress token does, as header, E2B header, ?token= and cookie", async () => {
    let lastHead = "";
    const port = await rawPort((sock, head) => {
      lastHead = head;
      sock.end(
        "HTTP/1.1 200 OK\r\nset-cookie: fb_ingress_token=tossed; Domain=firebreak.localhost; Path=/\r\nset-cookie: theme=dark\r\ncontent-length: 2\r\n\r\nok",
      );
    });
    const host = `${port}-${id}.${DOMAIN}`;
    const envd = await h.request("/", { host, headers: { "x-access-token": envdToken } });
    assert.equal(envd.status, 401);
    assert.match(envd.json.error.message, /envd access token \(X-Access-Token\) does not open ingress/);

    const viaHeader = await h.request("/", { host, headers: auth() });
    assert.equal(viaHeader.status, 200);
    // The app cannot set (or toss) the ingress cookie; its other cookies pass.
    assert.deepEqual(viaHeader.headers["set-cookie"], ["theme=dark"]);
    assert.doesNotMatch(lastHead, /fbi_|x-firebreak-ingress-token/i, "the token is not forwarded");

    const e2b = await h.request("/", { host, headers: { "e2b-traffic-access-token": ingressToken } });
    assert.equal(e2b.status, 200);
    assert.doesNotMatch(lastHead, /fbi_/);

    const viaQuery = await h.request(`/?token=${ingressToken}`, { host });
    assert.equal(viaQuery.status, 200);
    const cookie = viaQuery.headers["set-cookie"]!.find((c) => c.startsWith("fb_ingress_token="))!;
    assert.match(cookie, /^fb_ingress_token=fbi_[0-9a-f]{64}; Path=\/; HttpOnly; SameSite=Lax$/);
    const jar = cookie.split(";")[0]!;

    // Same-origin use of the cookie, and a plain (program) request without Origin.
    const own = await h.request("/a", { host, headers: { cookie: jar, origin: `http://${host}` } });
    assert.equal(own.status, 200);
    assert.doesNotMatch(lastHead, /fbi_/);
    assert.equal((await h.request("/a", { host, headers: { cookie: jar } })).status, 200);
    // A second cookie of that name (tossed by a same-site page) does not lock the owner out.
    const tossed = await h.request("/a", { host, headers: { cookie: `fb_ingress_token=tossed; ${jar}` } });
    assert.equal(tossed.status, 200);
    // Another sandbox's token, or a wrong one, does not open it.
    assert.equal(
      (await h.request("/", { host, headers: { "x-firebreak-ingress-token": `${ingressToken}0` } })).status,
      401,
    );
  });

  test("cookie requests from another origin, same-site subresources and cookie WebSockets without Origin are refused", async () => {
    const port = await rawPort((sock, head) =>
      sock.end(
        head.toLowerCase().includes("upgrade: websocket")
          ? "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n"
          : "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
      ),
    );
    const host = `${port}-${id}.${DOMAIN}`;
    const jar = `fb_ingress_token=${ingressToken}`;
    const other = `http://8000-aaaaaaaaaaaaaaaaaaaa.${DOMAIN}`;
    const cases: [string, Record<string, string>, number][] = [
      ["foreign Origin", { cookie: jar, origin: other }, 403],
      ["Origin null", { cookie: jar, origin: "null" }, 403],
      [
        "same-site fetch",
        { cookie: jar, "sec-fetch-site": "same-site", "sec-fetch-mode": "cors", "sec-fetch-dest": "empty" },
        403,
      ],
      [
        "cross-site script",
        {
          cookie: jar,
          "sec-fetch-site": "cross-site",
          "sec-fetch-mode": "no-cors",
          "sec-fetch-dest": "script",
        },
        403,
      ],
      [
        "same-site iframe",
        {
          cookie: jar,
          "sec-fetch-site": "same-site",
          "sec-fetch-mode": "navigate",
          "sec-fetch-dest": "iframe",
        },
        403,
      ],
      [
        "cross-site link (top-level navigation)",
        {
          cookie: jar,
          "sec-fetch-site": "cross-site",
          "sec-fetch-mode": "navigate",
          "sec-fetch-dest": "document",
        },
        200,
      ],
      ["same-origin fetch", { cookie: jar, origin: `http://${host}`, "sec-fetch-site": "same-origin" }, 200],
      [
        "https origin behind a TLS proxy",
        { cookie: jar, origin: `https://${host.replace(/:\d+$/, "")}` },
        200,
      ],
      ["foreign Origin with the header token", { ...auth(), origin: other }, 200],
    ];
    for (const [what, headers, status] of cases) {
      const r = await h.request("/", { host, headers });
      assert.equal(r.status, status, `${what}: ${r.body}`);
      if (status === 403) assert.equal(r.json.error.code, "FORBIDDEN", what);
    }
    const ws = (headers: Record<string, string>) =>
      new Promise<number>((resolve, reject) => {
        const sock = net.connect(h.port, "127.0.0.1");
        let text = "";
        sock.on("data", (b) => {
          text += b.toString();
          if (text.includes("\r\n\r\n")) sock.destroy();
        });
        sock.on("close", () => resolve(Number(text.split(" ")[1] ?? 0)));
        sock.on("error", reject);
        const all = {
          host,
          connection: "Upgrade",
          upgrade: "websocket",
          "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          "sec-websocket-version": "13",
          ...headers,
        };
        sock.write(
          `GET /ws HTTP/1.1\r\n${Object.entries(all)
            .map(([k, v]) => `${k}: ${v}\r\n`)
            .join("")}\r\n`,
        );
      });
    assert.equal(await ws({ cookie: jar }), 403, "cookie WebSocket without Origin");
    assert.equal(
      await ws({ cookie: jar, origin: other }),
      403,
      "cookie WebSocket from another sandbox's page",
    );
    assert.equal(
      await ws({ cookie: jar, origin: `http://${host}` }),
      101,
      "cookie WebSocket from its own page",
    );
    assert.equal(await ws(auth()), 101, "header token WebSocket (a program)");
    assert.equal(await ws({}), 401);
  });
});
