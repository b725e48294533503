// The hostile-guest suite (issue 8, class 1), with real microVMs through the
// server `firebreak up` runs, in-process. A guest process running as root
// takes over its sandbox: it stops the guest agent (SIGSTOP), steals the
// agent's listening socket (49983) and its control-channel port with
// pidfd_open + pidfd_getfd, writes junk to the control channel (not JSON,
// non-objects, a throwing `toString`, a 1 MiB line, a flood of `ready`), and
// serves garbage on the agent's port and on an app port reached through
// ingress: bad status codes, oversized and malformed headers, endless bodies,
// garbage Connect frames, a socket that never reads. After each attack
// `GET /v1/health` answers and a second sandbox still runs a command; a slow
// client never lets the guest make the host buffer without bound; at the end
// nothing leaked (VM resources, host file descriptors).
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import type { RunningServer } from "../src/index.ts";
import type { ApiClient } from "../src/testing/api-client.ts";
import { Flood } from "../src/testing/fake-guest.ts";
import {
  assertNoLeftovers,
  commandOutput,
  nodeIds,
  server,
  skipUnlessRoot,
  tenant,
  waitFor,
} from "./helpers.ts";

const DOMAIN = "firebreak.localhost";
const APP_PORT = 8000;

// Runs as root in the attacking guest. Everything after the takeover is
// served from the stolen sockets; the agent itself stays stopped.
const HIJACK_PY = String.raw`
import base64, ctypes, json, os, re, signal, socket, struct, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)
SYS_pidfd_open, SYS_pidfd_getfd = 434, 438

def steal(pid, fd):
    pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    new = libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
    if new < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    return new

def listening_inodes(port):
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[1].endswith(":%04X" % port) and f[3] == "0A":
                out.add(f[9])
    return out

def find_fd(pred):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                if pred(os.readlink("/proc/%s/fd/%s" % (pid, fd))):
                    return int(pid), int(fd)
        except OSError:
            pass
    return None, None

def takeover():
    inodes = listening_inodes(49983)
    agent, listen_fd = find_fd(lambda l: any(l == "socket:[%s]" % i for i in inodes))
    if agent is None:
        raise RuntimeError("no process listens on 49983: %r" % (inodes,))
    _, ctl_fd = find_fd(lambda l: l.startswith("/dev/vport"))
    if ctl_fd is None:
        raise RuntimeError("no control port open")
    os.kill(agent, signal.SIGSTOP)
    try:
        stolen = socket.socket(fileno=steal(agent, listen_fd))
        # The agent (Node) made the socket non-blocking; accept() here blocks.
        stolen.setblocking(True)
        ctl = steal(agent, ctl_fd)
    except Exception:
        os.kill(agent, signal.SIGCONT)
        raise
    # Junk on the control channel, read by the host's node process.
    for junk in [b"not json\n", b"null\n", b"42\n", b'"s"\n', b"[1,2]\n",
                 b'{"type":"error","id":1,"message":{"toString":1}}\n',
                 b'{"type":"ack","id":{"toString":1}}\n', b'{"type":"ready","uptimeMs":"soon"}\n',
                 b'{"type":{"toString":1}}\n', b"x" * (1 << 20) + b"\n"]:
        os.write(ctl, junk)
    for _ in range(5000):
        os.write(ctl, b'{"type":"ready","agentVersion":"evil","uptimeMs":1}\n')
    return stolen

sent = {}
STREAM = b"HTTP/1.1 200 OK\r\ncontent-type: application/connect+json\r\nconnection: close\r\n\r\n"
RAW = {
    "status099": b"HTTP/1.1 099 X\r\ncontent-length: 0\r\n\r\n",
    "status999": b"HTTP/1.1 999 X\r\ncontent-length: 0\r\n\r\n",
    "bigheaders": b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n",
    "badheader": b"HTTP/1.1 200 OK\r\nx-a: \x01\r\ncontent-length: 0\r\n\r\n",
    "garbage": b"\x16\x03\x01 not http at all\r\n\r\n",
    "upgrade": b"HTTP/1.1 101 Go\r\nupgrade: x\r\nconnection: upgrade\r\n\r\njunk",
}

def frame(obj, flags=0):
    b = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(b)) + b

def read_request(c):
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        d = c.recv(4096)
        if not d:
            break
        data += d
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin1"), rest

def mode_of(c, head, rest):
    line = head.split("\r\n")[0]
    m = re.search(r"[?&]path=([A-Za-z0-9_-]+)", line)
    if m:
        return m.group(1)
    if "/process.Process/Start" in line:
        body = rest
        while b"mode:" not in body and len(body) < 65536:
            d = c.recv(4096)
            if not d:
                break
            body += d
        m = re.search(rb"mode:([a-z0-9]+)", body)
        return m.group(1).decode() if m else "status099"
    m = re.match(r"\S+ /([A-Za-z0-9_-]+)", line)
    return m.group(1) if m else "status099"

def endless(c, key, chunk):
    sent[key] = 0
    while True:
        c.sendall(chunk)
        sent[key] += len(chunk)

def serve(c):
    try:
        head, rest = read_request(c)
        mode = mode_of(c, head, rest)
        if mode in RAW:
            c.sendall(RAW[mode])
        elif mode.startswith("sent-"):
            body = str(sent.get(mode[5:], -1)).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        elif mode == "endless":
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n")
            endless(c, "endless", b"e" * 65536)
        elif mode == "flood":
            c.sendall(STREAM + frame({"event": {"start": {"pid": 1}}}))
            endless(c, "flood", frame({"event": {"data": {"stdout": base64.b64encode(b"f" * 49152).decode()}}}))
        elif mode == "bigframe":
            c.sendall(STREAM + struct.pack(">BI", 0, 1 << 30) + b"x" * 1000)
        elif mode == "badframe":
            c.sendall(STREAM + struct.pack(">BI", 0, 9) + b"{not json")
        elif mode == "early":
            c.sendall(STREAM + frame({"event": {"data": {"stdout": "ZWFybHk="}}}) * 100 + frame({"event": {"start": {"pid": 1}}}))
        elif mode == "noread":
            time.sleep(3600)
        elif mode == "close":
            pass
        else:
            c.sendall(RAW["status099"])
    except OSError:
        pass
    finally:
        c.close()

def accept_loop(ls):
    while True:
        try:
            c, _ = ls.accept()
        except OSError:
            time.sleep(0.05)
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()

app = socket.socket()
app.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    stolen = takeover()
except Exception:
    import traceback
    failure = ("FAILED " + traceback.format_exc()).encode()
    RAW["sent-probe"] = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(failure), failure)
    stolen = None
# The app port opens only now: the test waits for it (it never touches the
# agent before the takeover, so no kept-alive connection reaches the stopped agent).
app.bind(("0.0.0.0", int(sys.argv[1])))
app.listen(64)
if stolen is not None:
    threading.Thread(target=accept_loop, args=(stolen,), daemon=True).start()
accept_loop(app)
`;

interface Reply {
  status: number;
  body: string;
  // biome-ignore lint/suspicious/noExplicitAny: parsed test JSON
  json: any;
}

describe("hostile guests cannot stop the control plane", { skip: skipUnlessRoot }, () => {
  let srv: RunningServer;
  let admin: ApiClient;
  let api: ApiClient;
  let key: string;
  const ours: string[] = [];
  let evil: { id: string; ingressToken: string; envdToken: string };
  let bystander: string;
  let fdsBefore = 0;

  const base = () => new URL(srv.url);

  function open(
    path: string,
    opts: { host?: string; headers?: Record<string, string>; method?: string; body?: string } = {},
  ): Promise<{ req: http.ClientRequest; res: http.IncomingMessage }> {
    return new Promise((resolve, reject) => {
      const req = http.request({
        host: base().hostname,
        port: base().port,
        path,
        method: opts.method ?? "GET",
        headers: { ...(opts.host ? { host: opts.host } : {}), ...opts.headers },
        agent: false,
      });
      req.on("response", (res) => resolve({ req, res }));
      req.on("error", reject);
      // A hang is a failure with a name, not a test that never ends.
      req.setTimeout(180_000, () => req.destroy(new Error(`no answer to ${path} within 180 s`)));
      if (opts.body !== undefined) req.end(opts.body);
      else if (opts.method !== "PUT") req.end();
    });
  }

  async function request(path: string, opts: Parameters<typeof open>[1] = {}): Promise<Reply> {
    if (process.env["FIREBREAK_TEST_LOG"]) process.stderr.write(`test: ${opts.method ?? "GET"} ${path}\n`);
    const { res } = await open(path, opts);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString();
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      // not JSON
    }
    return { status: res.statusCode!, body, json };
  }

  const auth = () => ({ authorization: `Bearer ${key}` });
  const file = (mode: string) => request(`/v1/sandboxes/${evil.id}/files?path=${mode}`, { headers: auth() });
  const run = (cmd: string, id = evil.id) =>
    request(`/v1/sandboxes/${id}/commands`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: JSON.stringify({ cmd }),
    });
  /** Bytes the hijacker has sent on its endless stream `key`. */
  const sentBytes = async (k: string) => Number((await file(`sent-${k}`)).body);

  /** After every attack: the server answers, another sandbox runs a command. */
  async function stillServing(): Promise<void> {
    const h = await request("/v1/health");
    assert.equal(h.status, 200, `health: ${h.body}`);
    const r = await api.post(`/v1/sandboxes/${bystander}/commands`, { cmd: "echo still here" });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(commandOutput(r.json), { stdout: "still here\n", stderr: "", exitCode: 0 });
  }

  /** Waits until the guest's endless stream `k` stops growing; returns its bytes. */
  async function stalledAt(k: string): Promise<number> {
    let last = -2;
    const { bytes } = await waitFor(
      `the guest's ${k} stream to stall`,
      async () => {
        const now = await sentBytes(k);
        const stalled = now >= 0 && now === last;
        last = now;
        if (!stalled) await new Promise((r) => setTimeout(r, 1000));
        return stalled ? { bytes: now } : undefined;
      },
      60_000,
    );
    return bytes;
  }

  before(async () => {
    ({ srv, admin } = await server());
    const t = await tenant(admin);
    api = t.api;
    key = t.key;
    const a = await api.post("/v1/sandboxes", { timeoutMs: 900_000 });
    assert.equal(a.status, 201, a.text);
    evil = { id: a.json.id, ingressToken: a.json.ingressToken, envdToken: a.json.envdAccessToken };
    ours.push(evil.id);
    const b = await api.post("/v1/sandboxes", { timeoutMs: 900_000 });
    assert.equal(b.status, 201, b.text);
    bystander = b.json.id;
    ours.push(bystander);
    await stillServing();
    fdsBefore = fs.readdirSync("/proc/self/fd").length;

    // The takeover: the script is written with a shell here-document (the
    // files API would leave a kept-alive connection to the agent we stop).
    const launched = await api.post(`/v1/sandboxes/${evil.id}/commands`, {
      cmd: `cat > /tmp/hijack.py <<'EOF'\n${HIJACK_PY}\nEOF\nexec python3 /tmp/hijack.py ${APP_PORT} >/tmp/hijack.log 2>&1`,
      user: "root",
      background: true,
    });
    assert.equal(launched.status, 201, launched.text);
    // The app port opens once the takeover is done (or failed: then it says why).
    const probe = await waitFor(
      "the guest to take over its agent's port",
      async () => {
        const r = await request("/sent-probe", {
          host: `${APP_PORT}-${evil.id}.${DOMAIN}`,
          headers: { "x-firebreak-ingress-token": evil.ingressToken },
        });
        return r.status === 200 ? r.body : undefined;
      },
      120_000,
    );
    assert.equal(probe, "-1", `the takeover failed inside the guest: ${probe}`);
  });

  after(async () => {
    if (!srv) return;
    for (const id of ours) await api?.delete(`/v1/sandboxes/${id}`).catch(() => {});
    const ids = await nodeIds(srv, ours);
    await srv.close();
    await assertNoLeftovers(ids);
  });

  test("junk on the control channel is ignored (the node keeps running the guest's neighbours)", async () => {
    // The junk was written during the takeover; the node parsed all of it.
    await stillServing();
  });

  test("the agent's port answers with bad statuses, oversized and malformed headers, garbage: 502 for that request only", async () => {
    for (const mode of ["status099", "status999", "bigheaders", "badheader", "garbage", "upgrade", "close"]) {
      const r = await file(mode);
      assert.equal(r.status, 502, `${mode}: ${r.body}`);
      assert.match(r.json.error.code, /^(AGENT_ERROR|GUEST_RESPONSE_INVALID)$/, mode);
      // Through the E2B envd proxy too.
      const e2b = await request(`/files?path=${mode}`, {
        headers: { "e2b-sandbox-id": evil.id, "x-access-token": evil.envdToken },
      });
      assert.equal(e2b.status, 502, `envd proxy ${mode}: ${e2b.body}`);
      assert.equal(e2b.json.code, 502);
    }
    await stillServing();
  });

  test("garbage Connect frames: a 1 GiB frame, broken JSON, output before start", async () => {
    const expect: Record<string, string> = {
      bigframe: "GUEST_RESPONSE_TOO_LARGE",
      badframe: "GUEST_RESPONSE_INVALID",
      early: "GUEST_RESPONSE_INVALID",
    };
    for (const [mode, code] of Object.entries(expect)) {
      const r = await run(`mode:${mode}`);
      assert.equal(r.status, 502, `${mode}: ${r.body}`);
      assert.equal(r.json.error.code, code, `${mode}: ${r.body}`);
    }
    await stillServing();
  });

  test("endless file and command streams behind clients that do not read: the guest is paused, not buffered", async (t) => {
    const download = await open(`/v1/sandboxes/${evil.id}/files?path=endless`, { headers: auth() });
    assert.equal(download.res.statusCode, 200);
    download.res.pause();
    const command = await open(`/v1/sandboxes/${evil.id}/commands`, {
      method: "POST",
      headers: { ...auth(), "content-type": "application/json" },
      body: JSON.stringify({ cmd: "mode:flood" }),
    });
    assert.equal(command.res.statusCode, 200);
    command.res.pause();
    const fileBytes = await stalledAt("endless");
    const floodBytes = await stalledAt("flood");
    assert.ok(
      fileBytes < 64 * 2 ** 20,
      `the guest sent ${fileBytes} file bytes to a client that reads nothing`,
    );
    assert.ok(
      floodBytes < 64 * 2 ** 20,
      `the guest sent ${floodBytes} output bytes to a client that reads nothing`,
    );
    t.diagnostic(`stalled after ${fileBytes} file bytes and ${floodBytes} command output bytes`);
    await stillServing();
    download.req.destroy();
    command.req.destroy();
  });

  test("a guest that never reads an upload: the client is paused, not buffered", async (t) => {
    const { req } = await new Promise<{ req: http.ClientRequest }>((resolve) => {
      const r = http.request({
        host: base().hostname,
        port: base().port,
        path: `/v1/sandboxes/${evil.id}/files?path=noread`,
        method: "PUT",
        headers: { ...auth(), "content-type": "application/octet-stream" },
        agent: false,
      });
      r.on("error", () => {});
      resolve({ req: r });
    });
    const flood = new Flood(req, Buffer.alloc(64 * 1024, 0x75));
    await flood.stalled(2000, 60_000);
    assert.ok(
      flood.written < 64 * 2 ** 20,
      `the host took ${flood.written} upload bytes the guest never read`,
    );
    t.diagnostic(`the upload stalled after ${flood.written} bytes`);
    await stillServing();
    req.destroy();
  });

  test("ingress: an app with bad statuses, bad headers, garbage, and a junk WebSocket handshake", async (t) => {
    const host = `${APP_PORT}-${evil.id}.${DOMAIN}`;
    const headers = { "x-firebreak-ingress-token": evil.ingressToken };
    for (const mode of ["status099", "status999", "bigheaders", "badheader", "garbage", "upgrade", "close"]) {
      const r = await request(`/${mode}`, { host, headers });
      assert.equal(r.status, 502, `${mode}: ${r.body}`);
      assert.match(r.json.error.code, /^(AGENT_ERROR|GUEST_RESPONSE_INVALID)$/, mode);
    }
    const ws = await new Promise<string>((resolve, reject) => {
      const sock = net.connect(Number(base().port), base().hostname);
      let text = "";
      sock.on("data", (b) => {
        text += b.toString();
      });
      sock.on("close", () => resolve(text));
      sock.on("error", reject);
      sock.write(
        `GET /garbage HTTP/1.1\r\nhost: ${host}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nx-firebreak-ingress-token: ${evil.ingressToken}\r\n\r\n`,
      );
    });
    assert.match(ws, /^HTTP\/1\.1 502 /);
    // An endless body behind a client that does not read.
    const { req, res } = await open("/endless", { host, headers });
    assert.equal(res.statusCode, 200);
    res.pause();
    const bytes = await stalledAt("endless");
    assert.ok(bytes < 64 * 2 ** 20, `the app sent ${bytes} bytes to a client that reads nothing`);
    t.diagnostic(`the ingress stream stalled after ${bytes} bytes`);
    req.destroy();
    await stillServing();
  });

  test("after the attacks: killing the attacker leaves nothing, host descriptors are back", async (t) => {
    assert.equal((await api.delete(`/v1/sandboxes/${evil.id}`)).status, 204);
    await stillServing();
    const fds = await waitFor(
      "host descriptors to settle",
      () => {
        const n = fs.readdirSync("/proc/self/fd").length;
        return n <= fdsBefore + 8 ? n : undefined;
      },
      30_000,
    ).catch(() => fs.readdirSync("/proc/self/fd").length);
    assert.ok(fds <= fdsBefore + 8, `host descriptors: ${fdsBefore} before the attacks, ${fds} after`);
    t.diagnostic(`host descriptors: ${fdsBefore} before the attacks, ${fds} after`);
  });
});
