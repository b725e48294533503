// The resolver's listener and upstream client against hostile bytes, on
// loopback only (no root needed): malformed packets, answers that cannot be
// encoded, TCP framing abuse, floods and limits. Any unhandled rejection or
// uncaught exception while these run fails the test that caused it.
import assert from "node:assert/strict";
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterEach, beforeEach, describe, test } from "node:test";
import * as dnsPacket from "dns-packet";
import { frame } from "./dns-framing.ts";
import {
  type DnsAnswer,
  type DnsLimits,
  type DnsQuery,
  queryUpstream,
  RCODE,
  reply,
  SandboxDnsListener,
} from "./dns-server.ts";

const LO = "127.0.0.1";
/** A decoded reply with the fields dns-packet sets but its types leave out. */
type Reply = Omit<dnsPacket.DecodedPacket, "answers"> & {
  rcode?: string;
  answers?: { type: string; data?: unknown }[];
};
const decode = (b: Buffer) => dnsPacket.decode(b) as Reply;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// A rejection or exception nobody handled is a failure of the test that was running.
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

function query(name: string, type = "A", id = 4242, extra: Partial<dnsPacket.Packet> = {}): Buffer {
  return dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type: type as "A" }],
    ...extra,
  });
}

/** A listener on a free loopback port (UDP and TCP share it). */
async function listen(
  answer: (q: DnsQuery) => Promise<DnsAnswer>,
  limits: Partial<DnsLimits> = {},
): Promise<SandboxDnsListener> {
  for (let i = 0; ; i++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    const l = new SandboxDnsListener(LO, LO, answer, { port, limits });
    try {
      await l.start();
      return l;
    } catch (e) {
      await l.close();
      if (i > 20) throw e;
    }
  }
}

const aRecord = (q: DnsQuery, data = "11.0.0.1"): DnsAnswer =>
  reply(q, RCODE.NOERROR, [{ type: "A", name: q.questions![0]!.name, ttl: 30, class: "IN", data }]);

/** Sends datagrams from one socket; collects every reply for `waitMs`. */
async function udpExchange(port: number, msgs: Buffer[], waitMs = 300): Promise<Reply[]> {
  const sock: UdpSocket = createSocket("udp4");
  const got: Reply[] = [];
  sock.on("message", (m) => got.push(decode(m)));
  await new Promise<void>((r) => sock.bind(0, LO, () => r()));
  for (const m of msgs) sock.send(m, port, LO);
  await sleep(waitMs);
  sock.close();
  return got;
}

/** Opens a TCP connection; `replies` collects decoded framed replies; `closed` resolves on close. */
async function tcpClient(port: number) {
  const sock: Socket = connect({ host: LO, port });
  sock.on("error", () => {});
  await new Promise<void>((r, j) => {
    sock.once("connect", () => r());
    sock.once("error", j);
  });
  const replies: Reply[] = [];
  let buf = Buffer.alloc(0);
  sock.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
      replies.push(decode(buf.subarray(2, 2 + buf.readUInt16BE(0))));
      buf = buf.subarray(2 + buf.readUInt16BE(0));
    }
  });
  const closed = new Promise<void>((r) => sock.once("close", () => r()));
  return { sock, replies, closed };
}

async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe("per-sandbox resolver listener", () => {
  let l: SandboxDnsListener | undefined;
  afterEach(async () => {
    await l?.close();
    l = undefined;
  });

  test("UDP: malformed packets, responses and empty frames are ignored and counted; odd queries get FORMERR/NOTIMP/REFUSED", async () => {
    let asked = 0;
    l = await listen(async (q) => {
      asked++;
      return aRecord(q);
    });
    const twoQuestions = dnsPacket.encode({
      type: "query",
      id: 7,
      questions: [
        { name: "a.test", type: "A" },
        { name: "b.test", type: "A" },
      ],
    });
    const chaos = query("version.bind", "TXT", 8);
    chaos.writeUInt16BE(3, chaos.length - 2); // class CH
    const update = query("a.test", "A", 9);
    update[2] = (update[2]! & 0x87) | (5 << 3); // opcode UPDATE
    const got = await udpExchange(l.port, [
      Buffer.alloc(0),
      Buffer.from("not dns at all, not even close"),
      Buffer.from([0, 1, 0x01, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0x61]), // says 2 questions, has half of one
      dnsPacket.encode(aRecord(dnsPacket.decode(query("x.test")))), // a response, not a query
      twoQuestions,
      chaos,
      update,
      query("fine.test", "A", 10),
    ]);
    const byId = new Map(got.map((p) => [p.id, p]));
    assert.equal(got.length, 4, JSON.stringify(got.map((p) => [p.id, p.rcode])));
    assert.equal(byId.get(7)?.rcode, "FORMERR");
    assert.equal(byId.get(8)?.rcode, "REFUSED");
    assert.equal(byId.get(9)?.rcode, "NOTIMP");
    assert.equal(byId.get(10)?.rcode, "NOERROR");
    assert.deepEqual(
      byId.get(10)?.answers?.map((a) => a.data),
      ["11.0.0.1"],
    );
    assert.equal(asked, 1, "only the well-formed query reached the policy");
    assert.equal(l.stats.malformed, 4);
  });

  test("an answer that cannot be encoded, or a failing answer, is SERVFAIL for that query only", async () => {
    l = await listen(async (q) => {
      const name = q.questions![0]!.name;
      if (name === "throws.test") throw new Error("upstream exploded");
      if (name === "opt.test")
        // dns-packet decodes this from the wire but refuses to encode it (OPT must be owned by the root).
        return reply(q, RCODE.NOERROR, [
          { type: "OPT", name: "opt.test", udpPayloadSize: 4096, options: [] } as unknown as dnsPacket.Answer,
        ]);
      if (name === "ttl.test")
        return reply(q, RCODE.NOERROR, [{ type: "A", name, ttl: -1, class: "IN", data: "11.0.0.1" }]);
      return aRecord(q);
    });
    const got = await udpExchange(l.port, [
      query("opt.test", "TXT", 1),
      query("throws.test", "A", 2),
      query("ttl.test", "A", 3),
      query("fine.test", "A", 4),
    ]);
    const rc = Object.fromEntries(got.map((p) => [p.id, p.rcode]));
    assert.deepEqual(rc, { 1: "SERVFAIL", 2: "SERVFAIL", 3: "SERVFAIL", 4: "NOERROR" });
  });

  test("UDP: a reply over 512 bytes becomes an empty truncated reply (the client retries over TCP)", async () => {
    const many = (q: DnsQuery) =>
      reply(
        q,
        RCODE.NOERROR,
        Array.from({ length: 60 }, (_, i) => ({
          type: "A" as const,
          name: q.questions![0]!.name,
          ttl: 30,
          class: "IN" as const,
          data: `11.0.0.${i + 1}`,
        })),
      );
    l = await listen(async (q) => many(q));
    const [udp] = await udpExchange(l.port, [query("big.test")]);
    assert.ok(udp?.flag_tc, "truncated");
    assert.equal(udp?.answers?.length, 0);
    const c = await tcpClient(l.port);
    c.sock.write(frame(query("big.test", "A", 5)));
    await until(() => c.replies.length === 1, "the TCP answer");
    assert.equal(c.replies[0]!.answers?.length, 60);
    c.sock.destroy();
  });

  test("TCP: a query split into single bytes, and several in one write, are answered", async () => {
    l = await listen(async (q) => aRecord(q));
    const c = await tcpClient(l.port);
    const one = frame(query("slow.test", "A", 1));
    for (const b of one) {
      c.sock.write(Buffer.from([b]));
      await sleep(1);
    }
    c.sock.write(
      Buffer.concat([frame(query("a.test", "A", 2)), frame(Buffer.alloc(0)), frame(query("b.test", "A", 3))]),
    );
    await until(() => c.replies.length === 3, "three answers");
    assert.deepEqual(c.replies.map((r) => r.id).sort(), [1, 2, 3]);
    assert.equal(l.stats.malformed, 1, "the empty frame");
    c.sock.destroy();
  });

  test("TCP: a huge length prefix with a stalled body, and a slow drip, are cut at the connection's lifetime; idle ones at the idle timeout", async () => {
    l = await listen(async (q) => aRecord(q), { tcpMaxLifetimeMs: 400, tcpIdleMs: 250 });
    const stalled = await tcpClient(l.port);
    stalled.sock.write(Buffer.from([0xff, 0xff, 1, 2, 3]));
    const drip = await tcpClient(l.port);
    const timer = setInterval(() => drip.sock.write(Buffer.from([0])), 50);
    try {
      await Promise.all([stalled.closed, drip.closed]);
    } finally {
      clearInterval(timer);
    }
    assert.equal(stalled.replies.length + drip.replies.length, 0);
    await until(() => l!.tcpConnections === 0, "the connections to be forgotten");
  });

  test("TCP: connections over the limit are closed at once; a full connection stops being read until answers go out", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let started = 0;
    l = await listen(
      async (q) => {
        started++;
        await gate;
        return aRecord(q);
      },
      { maxTcpConnections: 2, maxTcpInFlight: 3, maxPending: 100 },
    );
    const a = await tcpClient(l.port);
    const b = await tcpClient(l.port);
    const c = await tcpClient(l.port);
    await c.closed;
    assert.equal(l.stats.tcpRejected, 1);
    a.sock.write(Buffer.concat(Array.from({ length: 10 }, (_, i) => frame(query(`q${i}.test`, "A", i)))));
    await until(() => started === 3, "three queries in flight");
    await sleep(100);
    assert.equal(started, 3, "no more than maxTcpInFlight are taken from one connection");
    release();
    await until(() => a.replies.length === 10, "all ten answers");
    a.sock.destroy();
    b.sock.destroy();
  });

  test("rate limit: beyond the burst, queries are dropped (counted), and other listeners are not affected", async () => {
    l = await listen(async (q) => aRecord(q), { queriesPerSecond: 1, burst: 5 });
    const other = await listen(async (q) => aRecord(q));
    try {
      const flood = Array.from({ length: 50 }, (_, i) => query("flood.test", "A", i));
      const [got, otherGot] = await Promise.all([
        udpExchange(l.port, flood),
        udpExchange(other.port, [query("calm.test", "A", 99)]),
      ]);
      assert.ok(got.length >= 5 && got.length <= 10, `answered ${got.length} of 50`);
      assert.equal(l.stats.limited, 50 - got.length);
      assert.equal(otherGot.length, 1, "another sandbox's listener still answers");
    } finally {
      await other.close();
    }
  });

  test("pending cap: beyond maxPending answers in flight, queries get REFUSED at once", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    l = await listen(
      async (q) => {
        await gate;
        return aRecord(q);
      },
      { maxPending: 4 },
    );
    const sock = createSocket("udp4");
    const got: Reply[] = [];
    sock.on("message", (m) => got.push(decode(m)));
    await new Promise<void>((r) => sock.bind(0, LO, () => r()));
    for (let i = 0; i < 7; i++) sock.send(query("p.test", "A", i), l.port, LO);
    await until(() => got.length === 3, "three refusals");
    assert.ok(got.every((p) => p.rcode === "REFUSED"));
    assert.equal(l.pending, 4);
    release();
    await until(() => got.length === 7, "the four answers");
    assert.equal(got.filter((p) => p.rcode === "NOERROR").length, 4);
    sock.close();
  });

  test("closing while answers are pending: nothing is sent, nothing throws", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    l = await listen(async (q) => {
      await gate;
      return aRecord(q);
    });
    const c = await tcpClient(l.port);
    c.sock.write(frame(query("tcp.test", "A", 1)));
    const sock = createSocket("udp4");
    await new Promise<void>((r) => sock.bind(0, LO, () => r()));
    sock.send(query("udp.test", "A", 2), l.port, LO);
    await until(() => l!.pending === 2, "two pending answers");
    await l.close();
    l = undefined;
    release();
    await sleep(50);
    assert.equal(c.replies.length, 0);
    sock.close();
  });
});

describe("upstream client", () => {
  let servers: (UdpSocket | Server)[] = [];
  afterEach(() => {
    for (const s of servers) s.close();
    servers = [];
  });

  /** A fake upstream on loopback: UDP and TCP on one port, `onUdp` decides what to send. */
  async function upstream(
    onUdp: (q: dnsPacket.DecodedPacket, send: (b: Buffer) => void, raw: Buffer) => void,
    onTcp?: (q: dnsPacket.DecodedPacket, sock: Socket) => void,
  ): Promise<number> {
    for (;;) {
      const port = 20_000 + Math.floor(Math.random() * 40_000);
      const udp = createSocket("udp4");
      try {
        await new Promise<void>((r, j) => {
          udp.once("error", j);
          udp.bind(port, LO, () => r());
        });
      } catch {
        udp.close();
        continue;
      }
      udp.on("message", (m, rinfo) =>
        onUdp(dnsPacket.decode(m), (b) => udp.send(b, rinfo.port, rinfo.address), m),
      );
      servers.push(udp);
      const tcp = createServer((sock) => {
        sock.on("error", () => {});
        sock.once("data", (d: Buffer) => onTcp?.(dnsPacket.decode(d.subarray(2)), sock));
      });
      await new Promise<void>((r) => tcp.listen(port, LO, () => r()));
      servers.push(tcp);
      return port;
    }
  }
  const respond = (q: dnsPacket.DecodedPacket, over: Partial<dnsPacket.Packet> = {}) =>
    dnsPacket.encode({
      type: "response",
      id: q.id ?? 0,
      flags: 0,
      questions: q.questions ?? [],
      answers: [{ type: "A", name: q.questions![0]!.name, ttl: 5, class: "IN", data: "11.0.0.9" }],
      ...over,
    });

  test("only a reply with our id and our question is taken; garbage, other ids and other questions are skipped", async () => {
    const port = await upstream((q, send) => {
      send(Buffer.from("garbage"));
      send(respond(q, { id: ((q.id ?? 0) + 1) & 0xffff }));
      send(respond(q, { questions: [{ name: "other.test", type: "A" }] }));
      send(respond(q));
    });
    const p = (await queryUpstream({ host: LO, port }, { name: "a.test", type: "A", class: "IN" })) as Reply;
    assert.deepEqual(
      p.answers?.map((a) => a.data),
      ["11.0.0.9"],
    );
  });

  test("silence times out; a truncated answer is asked again over TCP; a TCP connection closed early rejects", async () => {
    const silent = await upstream(() => {});
    await assert.rejects(
      queryUpstream({ host: LO, port: silent }, { name: "a.test", type: "A", class: "IN" }, 200),
      /did not answer/,
    );
    const tc = await upstream(
      (q, send) => send(respond(q, { flags: dnsPacket.TRUNCATED_RESPONSE, answers: [] })),
      (q, sock) => sock.end(frame(respond(q))),
    );
    const viaTcp = (await queryUpstream(
      { host: LO, port: tc },
      { name: "a.test", type: "A", class: "IN" },
    )) as Reply;
    assert.deepEqual(
      viaTcp.answers?.map((a) => a.data),
      ["11.0.0.9"],
    );
    const rude = await upstream(
      (q, send) => send(respond(q, { flags: dnsPacket.TRUNCATED_RESPONSE, answers: [] })),
      (_q, sock) => sock.destroy(),
    );
    await assert.rejects(
      queryUpstream({ host: LO, port: rude }, { name: "a.test", type: "A", class: "IN" }, 500),
      /closed|did not answer/,
    );
  });
});
