// Ingress end to end with a real microVM: an HTTP server (with a chunked
// streaming route) and a WebSocket echo server run inside the sandbox (Python,
// standard library only) and are reached through the control plane at
// `<port>-<id>.firebreak.localhost` (Host header) and `/ingress/<id>/<port>/`:
// with the sandbox's ingress token (header, ?token= then cookie), refused
// without it and with the envd token, served without it once the port is public; 404 for the agent's port and for
// unknown or ended sandboxes, 502 when nothing listens.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import { assertNoLeftovers, nodeIds, server, skipUnlessRoot, tenant, waitFor } from "./helpers.ts";

const SERVER_PY = String.raw`
import base64, hashlib, json, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = ("chunk %d\n" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.5)
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({
            "path": self.path,
            "host": self.headers.get("Host"),
            "token": self.headers.get("X-Firebreak-Ingress-Token"),
            "envdToken": self.headers.get("X-Access-Token"),
            "cookie": self.headers.get("Cookie"),
            "prefix": self.headers.get("X-Forwarded-Prefix"),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def websocket(self):
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        r = self.rfile
        while True:
            h = r.read(2)
            if len(h) < 2:
                break
            op, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", r.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", r.read(8))[0]
            mask = r.read(4) if h[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if op == 8:
                self.wfile.write(b"\x88\x00")
                break
            if op in (1, 2):
                reply = ("echo: " + data.decode()).encode() if op == 1 else data
                n = len(reply)
                size = bytes([n]) if n < 126 else (b"\x7e" + struct.pack(">H", n) if n < 65536 else b"\x7f" + struct.pack(">Q", n))
                self.wfile.write(bytes([0x80 | op]) + size + reply)
                self.wfile.flush()
        self.close_connection = True

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
`;

const DOMAIN = "firebreak.localhost";

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  // biome-ignore lint/suspicious/noExplicitAny: parsed test JSON
  json: any;
  /** ms after the request of each body chunk. */
  chunkTimes: number[];
}

/** A raw HTTP request to the control plane (fetch cannot set Host). */
function request(
  base: string,
  path: string,
  opts: { host?: string; headers?: Record<string, string>; method?: string; body?: Buffer } = {},
): Promise<Reply> {
  const u = new URL(base);
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: u.hostname,
        port: u.port,
        path,
        method: opts.method ?? "GET",
        headers: { ...(opts.host ? { host: opts.host } : {}), ...opts.headers },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        const chunkTimes: number[] = [];
        res.on("data", (c: Buffer) => {
          chunks.push(c);
          chunkTimes.push(performance.now() - t0);
        });
        res.on("end", () => {
          const body = Buffer.concat(chunks).toString();
          let json: unknown;
          if (String(res.headers["content-type"]).startsWith("application/json")) json = JSON.parse(body);
          resolve({ status: res.statusCode!, headers: res.headers, body, json, chunkTimes });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** Opens a WebSocket, sends one text message, returns the echo (or the refusal status). */
function wsEcho(url: string, headers: Record<string, string>, msg: string): Promise<string | number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on("unexpected-response", (_req, res) => {
      resolve(res.statusCode!);
      res.resume();
      ws.terminate();
    });
    ws.on("open", () => ws.send(msg));
    ws.on("message", (data) => {
      resolve(String(data));
      ws.close();
    });
    ws.on("error", reject);
  });
}

describe("ingress with a real microVM", { skip: skipUnlessRoot }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  let api: ApiClient;
  let other: ApiClient;
  const ours: string[] = [];
  let id: string;
  let token: string;
  let envdToken: string;
  let host: string;

  before(async () => {
    ({ srv, admin } = await server());
    api = (await tenant(admin)).api;
    other = (await tenant(admin)).api;
    const c = await api.post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    id = c.json.id;
    token = c.json.ingressToken;
    envdToken = c.json.envdAccessToken;
    ours.push(id);
    host = `8000-${id}.${DOMAIN}`;
    const put = await api.put(`/v1/sandboxes/${id}/files?path=server.py`, {
      body: SERVER_PY,
      headers: { "content-type": "application/octet-stream" },
    });
    assert.equal(put.status, 200, put.text);
    const bg = await api.post(`/v1/sandboxes/${id}/commands`, {
      cmd: "python3 server.py 8000 >/tmp/server.log 2>&1",
      background: true,
    });
    assert.equal(bg.status, 201, bg.text);
    await waitFor(
      "the sandbox's HTTP server through ingress",
      async () =>
        (await request(srv.url, "/", { host, headers: { "x-firebreak-ingress-token": token } })).status ===
        200,
      20_000,
    );
  });
  after(async () => {
    const ids = await nodeIds(srv, ours);
    await srv.close();
    await assertNoLeftovers(ids);
  });

  test("Host-based: with the token the request reaches the sandbox (token not forwarded); 401 without", async () => {
    const ok = await request(srv.url, "/hello?a=1", {
      host,
      headers: { "x-firebreak-ingress-token": token },
    });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.json.path, "/hello?a=1");
    assert.equal(ok.json.host, host);
    assert.equal(ok.json.token, null);

    const none = await request(srv.url, "/hello", { host });
    assert.equal(none.status, 401);
    assert.equal(none.json.error.code, "UNAUTHENTICATED");
    assert.ok(none.json.error.requestId);
    const wrong = await request(srv.url, "/hello", {
      host,
      headers: { "x-firebreak-ingress-token": `${token}x` },
    });
    assert.equal(wrong.status, 401);
    // The envd token (root exec in the guest) does not open ingress.
    const envd = await request(srv.url, "/hello", { host, headers: { "x-access-token": envdToken } });
    assert.equal(envd.status, 401);
    assert.equal(ok.json.envdToken, null);

    // A request body streams to the sandbox and back.
    const bytes = Buffer.alloc(3 * 1024 * 1024, 7);
    const echo = await request(srv.url, "/upload", {
      host,
      method: "POST",
      body: bytes,
      headers: { "x-firebreak-ingress-token": token, "content-type": "application/octet-stream" },
    });
    assert.equal(echo.status, 200);
    assert.equal(echo.body.length, bytes.length);
  });

  test("path-based: prefix removed; ?token= sets a cookie that later requests use (and is not forwarded)", async () => {
    const base = `/ingress/${id}/8000`;
    const redirect = await request(srv.url, base);
    assert.equal(redirect.status, 308);
    assert.equal(redirect.headers.location, `${base}/`);

    assert.equal((await request(srv.url, `${base}/x`)).status, 401);
    const viaHeader = await request(srv.url, `${base}/x?q=1`, {
      headers: { "x-firebreak-ingress-token": token },
    });
    assert.equal(viaHeader.status, 200);
    assert.equal(viaHeader.json.path, "/x?q=1");
    assert.equal(viaHeader.json.prefix, base);

    const viaQuery = await request(srv.url, `${base}/page?token=${encodeURIComponent(token)}&q=2`);
    assert.equal(viaQuery.status, 200);
    assert.equal(viaQuery.json.path, "/page?q=2");
    const setCookie = viaQuery.headers["set-cookie"]?.[0] ?? "";
    assert.match(setCookie, new RegExp(`^fb_ingress_token=[^;]+; Path=${base}; HttpOnly; SameSite=Lax$`));
    const cookie = `${setCookie.split(";")[0]}; theme=dark`;
    const viaCookie = await request(srv.url, `${base}/asset.js`, { headers: { cookie } });
    assert.equal(viaCookie.status, 200);
    assert.equal(viaCookie.json.cookie, "theme=dark");
  });

  test("a chunked response arrives in pieces, as the sandbox sends them", async () => {
    for (const [path, h] of [
      ["/stream", host],
      [`/ingress/${id}/8000/stream`, undefined],
    ] as const) {
      const r = await request(srv.url, path, {
        ...(h ? { host: h } : {}),
        headers: { "x-firebreak-ingress-token": token },
      });
      assert.equal(r.status, 200);
      assert.equal(r.body, "chunk 0\nchunk 1\nchunk 2\n");
      assert.ok(r.chunkTimes.length >= 3, `chunks: ${r.chunkTimes.length}`);
      // The sandbox sleeps 0.5 s between chunks: the first must not wait for the last.
      assert.ok(r.chunkTimes.at(-1)! - r.chunkTimes[0]! > 700, `chunk times ${r.chunkTimes.join(", ")}`);
    }
  });

  test("WebSocket echo through Host-based and path-based URLs; 401 without the token", async () => {
    const u = new URL(srv.url);
    const wsBase = `ws://${u.host}`;
    assert.equal(
      await wsEcho(`${wsBase}/ws`, { host, "x-firebreak-ingress-token": token }, "hi via host"),
      "echo: hi via host",
    );
    assert.equal(
      await wsEcho(`${wsBase}/ingress/${id}/8000/ws?token=${encodeURIComponent(token)}`, {}, "hi via path"),
      "echo: hi via path",
    );
    assert.equal(await wsEcho(`${wsBase}/ws`, { host }, "no token"), 401);
    assert.equal(await wsEcho(`${wsBase}/ingress/${id}/8000/ws`, {}, "no token"), 401);

    // Many messages, both directions, on one connection.
    const ws = new WebSocket(`${wsBase}/ws`, { headers: { host, "x-firebreak-ingress-token": token } });
    await new Promise((r, j) => {
      ws.once("open", r);
      ws.once("error", j);
    });
    const got: string[] = [];
    const done = new Promise<void>((r) =>
      ws.on("message", (d) => {
        got.push(String(d));
        if (got.length === 50) r();
      }),
    );
    for (let i = 0; i < 50; i++) ws.send(`m${i}`);
    await done;
    assert.deepEqual(
      got,
      Array.from({ length: 50 }, (_, i) => `echo: m${i}`),
    );
    ws.close();
  });

  test("a public port needs no token; made private again it does; only the owner may change it", async () => {
    assert.equal((await request(srv.url, "/", { host })).status, 401);
    const pub = await api.post(`/v1/sandboxes/${id}/ports/8000`, { public: true });
    assert.equal(pub.status, 200, pub.text);
    assert.equal(pub.json.host, host);
    assert.equal(pub.json.path, `/ingress/${id}/8000/`);
    assert.deepEqual(
      (await api.get(`/v1/sandboxes/${id}/ports`)).json.ports.map((p: { port: number }) => p.port),
      [8000],
    );
    assert.equal((await request(srv.url, "/", { host })).status, 200);
    assert.equal((await request(srv.url, `/ingress/${id}/8000/`)).status, 200);
    assert.equal(await wsEcho(`ws://${new URL(srv.url).host}/ws`, { host }, "public"), "echo: public");
    // Other ports stay private.
    assert.equal((await request(srv.url, "/", { host: `8001-${id}.${DOMAIN}` })).status, 401);

    assert.equal((await other.post(`/v1/sandboxes/${id}/ports/8000`, { public: false })).status, 404);
    assert.equal((await api.post(`/v1/sandboxes/${id}/ports/49983`, { public: true })).status, 400);
    assert.equal((await api.post(`/v1/sandboxes/${id}/ports/8000`, { public: false })).status, 200);
    assert.equal((await request(srv.url, "/", { host })).status, 401);
    assert.deepEqual((await api.get(`/v1/sandboxes/${id}/ports`)).json.ports, []);
  });

  test("the agent's port is not served; 502 when nothing listens; 404 for unknown and ended sandboxes", async () => {
    const auth = { "x-firebreak-ingress-token": token };
    // (With the envd headers, 49983-<id>.<domain> is the envd proxy's, as for an E2B SDK.)
    const agent = await request(srv.url, "/health", { host: `49983-${id}.${DOMAIN}` });
    assert.equal(agent.status, 404);
    assert.equal(agent.json.error.code, "NOT_FOUND");
    assert.equal((await request(srv.url, `/ingress/${id}/49983/health`, { headers: auth })).status, 404);

    const closed = await request(srv.url, "/", { host: `8009-${id}.${DOMAIN}`, headers: auth });
    assert.equal(closed.status, 502, closed.body);
    assert.equal(closed.json.error.code, "AGENT_ERROR");

    const unknown = await request(srv.url, "/", {
      host: `8000-aaaaaaaaaaaaaaaaaaaa.${DOMAIN}`,
      headers: auth,
    });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.json.error.code, "NOT_FOUND");

    // The API itself is untouched on the control plane's own host.
    assert.equal((await request(srv.url, "/v1/health")).status, 200);

    const c = await api.post("/v1/sandboxes", {});
    assert.equal(c.status, 201, c.text);
    ours.push(c.json.id);
    assert.equal((await api.delete(`/v1/sandboxes/${c.json.id}`)).status, 204);
    const ended = await request(srv.url, "/", {
      host: `8000-${c.json.id}.${DOMAIN}`,
      headers: { "x-firebreak-ingress-token": c.json.ingressToken },
    });
    assert.equal(ended.status, 404);
    assert.equal(
      await wsEcho(`ws://${new URL(srv.url).host}/ws`, { host: `8000-${c.json.id}.${DOMAIN}` }, "x"),
      404,
    );
  });
});
