// The credential-injecting proxy against a hostile guest, on loopback only
// (no root needed). The "service" records every request it gets; the guest is
// a raw TCP client, so requests can be as malformed as an attacker likes.
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";
import { InjectProxy } from "./inject-proxy.ts";

const LO = "127.0.0.1";
const SECRET = "Bearer s3cret-injected";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const escaped: unknown[] = [];
const onEscape = (e: unknown) => escaped.push(e);
beforeEach(() => {
  escaped.length = 0;
  process.on("unhandledRejection", onEscape);
  process.on("uncaughtException", onEscape);
});
afterEach(() => {
  process.off("unhandledRejection", onEscape);
  process.off("uncaughtException", onEscape);
  assert.deepEqual(escaped, [], "an unhandled rejection or uncaught exception escaped");
});

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  raw: string[];
  body: string;
}

/** Sends raw bytes to the proxy; resolves with everything it answered once it closes (or after `waitMs`). */
function raw(port: number, text: string | Buffer, waitMs = 1_500): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect({ host: LO, port });
    let out = "";
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(out);
    }, waitMs);
    sock.on("data", (d) => {
      out += d;
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      clearTimeout(timer);
      resolve(out);
    });
    sock.write(text);
  });
}
const status = (res: string) => Number(/^HTTP\/1\.[01] (\d{3})/.exec(res)?.[1] ?? 0);

describe("credential-injecting proxy", () => {
  let service: Server;
  let servicePort: number;
  const seen: Seen[] = [];
  let proxy: InjectProxy;

  before(async () => {
    service = createServer((req, res) => {
      let body = "";
      req.on("data", (d) => {
        body += d;
      });
      req.on("end", () => {
        seen.push({ method: req.method!, url: req.url!, headers: req.headers, raw: req.rawHeaders, body });
        if (req.url === "/redirect") {
          res.writeHead(302, { location: "http://10.0.0.1/elsewhere" });
          return void res.end();
        }
        res.writeHead(200, {
          "content-type": "text/plain",
          "x-echo-auth": String(req.headers.authorization ?? ""),
          "x-fine": "yes",
          connection: "keep-alive, x-hop",
          "x-hop": "hop",
        });
        res.end(`ok ${req.method} ${req.url}`);
      });
    });
    await new Promise<void>((r) => service.listen(0, LO, () => r()));
    servicePort = (service.address() as AddressInfo).port;
  });
  after(() => service.close());

  beforeEach(async () => {
    seen.length = 0;
    proxy = new InjectProxy(
      LO,
      LO,
      {
        name: "api.internal",
        address: LO,
        port: servicePort,
        protocol: "http",
        inject: { header: "Authorization", value: SECRET },
      },
      { limits: { maxConnections: 3, headersTimeoutMs: 300, maxHeaderBytes: 4_096 } },
    );
    await proxy.start();
  });
  afterEach(() => proxy.close());

  test("forwards to the service with its Host and the credential; hop-by-hop headers go neither way", async () => {
    const res = await raw(
      proxy.port,
      "GET /v1/items?q=1 HTTP/1.1\r\nHost: evil.example\r\nX-Keep: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n" +
        "Proxy-Authorization: Basic eA==\r\nConnection: close, X-Drop\r\nX-Drop: me\r\nUpgrade: h2c\r\n\r\n",
    );
    assert.equal(status(res), 200, res);
    assert.equal(seen.length, 1);
    const h = seen[0]!.headers;
    assert.equal(seen[0]!.url, "/v1/items?q=1");
    assert.equal(h.host, `api.internal:${servicePort}`, "the service's Host, not the guest's");
    assert.equal(h.authorization, SECRET);
    assert.equal(h["x-keep"], "1");
    for (const hop of ["keep-alive", "te", "proxy-authorization", "x-drop", "upgrade"])
      assert.equal(h[hop], undefined, `${hop} was forwarded`);
    assert.match(res, /x-fine: yes/i);
    assert.doesNotMatch(res, /x-hop/i, "a header the service's Connection named is not passed back");
  });

  test("never echoes the credential: a response header carrying it is dropped", async () => {
    const res = await raw(proxy.port, "GET /reflect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.equal(status(res), 200, res);
    assert.equal(seen[0]!.headers.authorization, SECRET);
    assert.ok(!res.includes("s3cret"), res);
    assert.doesNotMatch(res, /x-echo-auth/i);
  });

  test("TRACE, TRACK and CONNECT are refused and never reach the service", async () => {
    for (const line of [
      "TRACE / HTTP/1.1",
      "TRACK / HTTP/1.1",
      "CONNECT api.internal:443 HTTP/1.1",
      "trace / HTTP/1.1",
    ]) {
      const res = await raw(
        proxy.port,
        `${line}\r\nHost: x\r\nAuthorization: mine\r\nConnection: close\r\n\r\n`,
      );
      assert.ok([400, 405].includes(status(res)), `${line}: ${res}`);
      assert.ok(!res.includes("s3cret") && !res.includes("mine"), res);
    }
    assert.equal(seen.length, 0, JSON.stringify(seen.map((s) => s.method)));
  });

  test("the guest's own copies of the injected header are replaced, whatever their case, number or folding", async () => {
    const attempts = [
      "Authorization: guest-1\r\n",
      "authorization: guest-1\r\nAUTHORIZATION: guest-2\r\n",
      "X-Other: a\r\n Authorization: guest-folded\r\n",
      "Authorization : guest-space\r\n",
      "Connection: Authorization\r\nAuthorization: guest-hop\r\n",
    ];
    for (const extra of attempts) {
      seen.length = 0;
      const res = await raw(proxy.port, `GET /h HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n`);
      if (status(res) !== 200) {
        // Refused by the parser (obs-fold, a space before the colon): nothing reached the service.
        assert.equal(status(res), 400, `${JSON.stringify(extra)}: ${res}`);
        assert.equal(seen.length, 0);
        continue;
      }
      assert.equal(seen.length, 1, JSON.stringify(extra));
      const auth = seen[0]!.raw.filter(
        (_, i, a) => i % 2 === 1 && a[i - 1]!.toLowerCase() === "authorization",
      );
      assert.deepEqual(auth, [SECRET], `${JSON.stringify(extra)}: ${JSON.stringify(seen[0]!.raw)}`);
      assert.ok(!JSON.stringify(seen[0]!.raw).includes("guest-"), JSON.stringify(seen[0]!.raw));
    }
  });

  test("absolute-form targets are rewritten to the service (path kept); other forms are refused", async () => {
    let res = await raw(
      proxy.port,
      "GET http://169.254.169.254/latest/meta-data?x=1 HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    );
    assert.equal(status(res), 200, res);
    assert.equal(seen[0]!.url, "/latest/meta-data?x=1");
    assert.equal(seen[0]!.headers.host, `api.internal:${servicePort}`);
    res = await raw(proxy.port, "GET ftp://x/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.ok([400].includes(status(res)), res);
    res = await raw(proxy.port, "GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.equal(status(res), 400, res);
    assert.equal(seen.length, 1);
  });

  test("redirects are passed to the guest, never followed", async () => {
    const res = await raw(proxy.port, "GET /redirect HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.equal(status(res), 302, res);
    assert.match(res, /location: http:\/\/10\.0\.0\.1\/elsewhere/i);
    assert.deepEqual(
      seen.map((s) => s.url),
      ["/redirect"],
    );
  });

  test("bodies: chunked and sized bodies reach the service intact; a smuggling attempt (both framings) is refused", async () => {
    let res = await raw(
      proxy.port,
      "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert.equal(status(res), 200, res);
    res = await raw(
      proxy.port,
      "POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert.equal(status(res), 200, res);
    assert.deepEqual(
      seen.map((s) => [s.url, s.body]),
      [
        ["/c", "hello world"],
        ["/l", "abc"],
      ],
    );
    seen.length = 0;
    res = await raw(
      proxy.port,
      "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert.equal(status(res), 400, res);
    assert.ok(!seen.some((s) => s.url === "/smuggled"), JSON.stringify(seen.map((s) => s.url)));
  });

  test("limits: oversized headers get 431, slow headers 408, connections over the sandbox's budget are closed", async () => {
    let res = await raw(proxy.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(8_000)}\r\n\r\n`);
    assert.equal(status(res), 431, res);
    res = await raw(proxy.port, "GET / HTTP/1.1\r\nHost: x\r\n", 3_000);
    assert.equal(status(res), 408, res);
    const held = await Promise.all(
      Array.from(
        { length: 3 },
        () =>
          new Promise<ReturnType<typeof connect>>((r) => {
            const s = connect({ host: LO, port: proxy.port }, () => r(s));
            s.on("error", () => {});
          }),
      ),
    );
    await sleep(50);
    const fourth = await raw(proxy.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 1_000);
    assert.equal(fourth, "", "the fourth connection was closed without an answer");
    assert.equal(proxy.rejected, 1);
    for (const s of held) s.destroy();
    await sleep(50);
    const again = await raw(proxy.port, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert.equal(status(again), 200, "room again once they closed");
    assert.equal(seen.length, 1);
  });

  test("an Upgrade (WebSocket) is not passed", async () => {
    const res = await raw(
      proxy.port,
      "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert.notEqual(status(res), 101, res);
    assert.ok(!seen.some((s) => s.headers.upgrade), "no upgrade reached the service");
  });
});
