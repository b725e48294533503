// The platform resolver's sockets and its upstream client. One listener pair
// (UDP and TCP, port 53) per sandbox, bound on the host end of its veth; the
// namespace DNATs every guest DNS packet there. The policy decision is the
// caller's `answer` function (egress-manager.ts).
//
// SECURITY: every byte parsed here comes from a guest or from the upstream
// resolver. A bad packet, a query that cannot be answered, an answer that
// cannot be encoded, a flood or a stalled connection fails only that query or
// connection: nothing here throws into the event loop, and every resource a
// guest can make the node hold (pending answers, TCP connections, buffered
// bytes) is bounded per sandbox.
import { randomInt } from "node:crypto";
import { createSocket, type Socket } from "node:dgram";
import { connect, createServer, type Server, type Socket as TcpSocket } from "node:net";
import * as dnsPacket from "dns-packet";
import { DnsFrameReader, frame, MAX_DNS_MESSAGE_BYTES } from "./dns-framing.ts";
import { TokenBucket } from "./token-bucket.ts";

export type DnsQuery = dnsPacket.DecodedPacket;
export type DnsAnswer = dnsPacket.Packet;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** Classic DNS over UDP: a reply over 512 bytes is truncated; the client retries over TCP. */
const MAX_UDP_REPLY_BYTES = 512;

export interface Upstream {
  host: string;
  port: number;
}

/** Per-sandbox bounds of the resolver. */
export interface DnsLimits {
  /** Sustained queries per second (token bucket); beyond it queries are dropped unanswered. @default 100 */
  queriesPerSecond: number;
  /** Bucket size: queries a guest may send at once. @default 200 */
  burst: number;
  /** Queries being answered at once (upstream round trips); beyond it: REFUSED. @default 32 */
  maxPending: number;
  /** Open TCP connections; more are closed at once. @default 4 */
  maxTcpConnections: number;
  /** Queries in flight on one TCP connection; beyond it the node stops reading from it. @default 8 */
  maxTcpInFlight: number;
  /** A TCP connection with no traffic for this long is closed. @default 10000 */
  tcpIdleMs: number;
  /** A TCP connection is closed this long after it opened, busy or not. @default 30000 */
  tcpMaxLifetimeMs: number;
}

export const DEFAULT_DNS_LIMITS: Readonly<DnsLimits> = Object.freeze({
  queriesPerSecond: 100,
  burst: 200,
  maxPending: 32,
  maxTcpConnections: 4,
  maxTcpInFlight: 8,
  tcpIdleMs: 10_000,
  tcpMaxLifetimeMs: 30_000,
});

/** What the listener saw; the manager reports these as the sandbox's DNS counters. */
export interface DnsListenerStats {
  /** Queries taken (within the rate). */
  queries: number;
  /** Packets that were not a DNS query (undecodable, a response, an empty frame). */
  malformed: number;
  /** Queries dropped by the rate limit, or refused because too many were pending. */
  limited: number;
  /** TCP connections closed because the sandbox had too many open. */
  tcpRejected: number;
}

/** A response to `q` with the given rcode and answers. */
export function reply(q: DnsQuery, rcode: number, answers: dnsPacket.Answer[] = []): DnsAnswer {
  return {
    type: "response",
    id: q.id ?? 0,
    flags: ((q.flags ?? 0) & dnsPacket.RECURSION_DESIRED) | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: q.questions ?? [],
    answers,
  };
}

/**
 * Encodes `out` for a transport that carries at most `maxBytes`: too large
 * becomes an empty truncated reply (TC), and an answer that cannot be encoded
 * becomes SERVFAIL. Undefined only if not even that can be encoded.
 */
export function encodeReply(q: DnsQuery, out: DnsAnswer, maxBytes: number): Buffer | undefined {
  let buf: Buffer | undefined;
  try {
    buf = dnsPacket.encode(out);
  } catch {
    buf = undefined;
  }
  try {
    if (!buf) return dnsPacket.encode(reply(q, RCODE.SERVFAIL));
    if (buf.length <= maxBytes) return buf;
    const tc = reply(q, RCODE.NOERROR);
    tc.flags = (tc.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE;
    const small = dnsPacket.encode(tc);
    return small.length <= maxBytes ? small : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Listens for one sandbox: UDP and TCP on `bindAddress:port`. Packets from any
 * source other than `peerAddress` are ignored (SECURITY: the listener serves
 * one sandbox; the namespace SNATs the guest to `peerAddress`).
 */
export class SandboxDnsListener {
  #udp: Socket | undefined;
  #tcp: Server | undefined;
  #closed = false;
  readonly #tcpSockets = new Set<TcpSocket>();
  readonly #bucket: TokenBucket;
  #pending = 0;
  readonly stats: DnsListenerStats = { queries: 0, malformed: 0, limited: 0, tcpRejected: 0 };

  readonly bindAddress: string;
  readonly peerAddress: string;
  readonly answer: (q: DnsQuery) => Promise<DnsAnswer>;
  readonly port: number;
  readonly limits: DnsLimits;
  readonly #log: (line: string) => void;

  constructor(
    bindAddress: string,
    peerAddress: string,
    answer: (q: DnsQuery) => Promise<DnsAnswer>,
    opts: { port?: number; limits?: Partial<DnsLimits>; log?: (line: string) => void } = {},
  ) {
    this.bindAddress = bindAddress;
    this.peerAddress = peerAddress;
    this.answer = answer;
    this.port = opts.port ?? 53;
    this.limits = { ...DEFAULT_DNS_LIMITS, ...opts.limits };
    this.#bucket = new TokenBucket(this.limits.queriesPerSecond, this.limits.burst);
    this.#log = opts.log ?? (() => {});
  }

  /** Queries being answered right now. */
  get pending(): number {
    return this.#pending;
  }

  get tcpConnections(): number {
    return this.#tcpSockets.size;
  }

  async start(): Promise<void> {
    const udp = createSocket({ type: "udp4" });
    this.#udp = udp;
    udp.on("message", (msg, rinfo) => {
      if (rinfo.address !== this.peerAddress) return;
      this.#handle(msg, MAX_UDP_REPLY_BYTES).then(
        (out) => {
          if (!out || this.#closed) return;
          udp.send(out, rinfo.port, rinfo.address, () => {});
        },
        (e) => this.#log(`dns ${this.peerAddress}: udp query failed: ${(e as Error).message}`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind({ address: this.bindAddress, port: this.port, exclusive: true }, () => {
        udp.off("error", reject);
        udp.on("error", () => {});
        resolve();
      });
    });
    const tcp = createServer((sock) => this.#serveTcp(sock));
    tcp.on("error", () => {});
    this.#tcp = tcp;
    await new Promise<void>((resolve, reject) => {
      tcp.once("error", reject);
      tcp.listen({ host: this.bindAddress, port: this.port, exclusive: true }, () => {
        tcp.off("error", reject);
        resolve();
      });
    });
  }

  #serveTcp(sock: TcpSocket): void {
    sock.on("error", () => {});
    if (sock.remoteAddress !== this.peerAddress || this.#closed) {
      sock.destroy();
      return;
    }
    // SECURITY: a guest holds at most maxTcpConnections sockets, each for a
    // bounded time, with a bounded number of queries in flight and bounded
    // buffers (slow readers and slowloris writers are cut).
    if (this.#tcpSockets.size >= this.limits.maxTcpConnections) {
      this.stats.tcpRejected++;
      sock.destroy();
      return;
    }
    this.#tcpSockets.add(sock);
    const lifetime = setTimeout(() => sock.destroy(), this.limits.tcpMaxLifetimeMs);
    sock.once("close", () => {
      clearTimeout(lifetime);
      this.#tcpSockets.delete(sock);
    });
    sock.setTimeout(this.limits.tcpIdleMs, () => sock.destroy());
    const reader = new DnsFrameReader();
    let inFlight = 0;
    const pump = () => {
      while (inFlight < this.limits.maxTcpInFlight && !sock.destroyed) {
        const msg = reader.next();
        if (!msg) break;
        inFlight++;
        this.#handle(msg, MAX_DNS_MESSAGE_BYTES).then(
          (out) => {
            inFlight--;
            if (sock.destroyed) return;
            if (out) {
              // A guest that does not read its answers is cut (the replies would pile up here).
              if (sock.writableLength > 4 * (MAX_DNS_MESSAGE_BYTES + 2)) return void sock.destroy();
              sock.write(frame(out));
            }
            pump();
          },
          (e) => {
            inFlight--;
            this.#log(`dns ${this.peerAddress}: tcp query failed: ${(e as Error).message}`);
            sock.destroy();
          },
        );
      }
      if (inFlight >= this.limits.maxTcpInFlight) sock.pause();
      else if (sock.isPaused()) sock.resume();
    };
    sock.on("data", (d: Buffer) => {
      reader.push(d);
      // One partial message plus one read's worth of what follows it.
      if (reader.bufferedBytes > 2 * (MAX_DNS_MESSAGE_BYTES + 2) + 65_536) return void sock.destroy();
      pump();
    });
  }

  /** One query, start to end. Resolves to the encoded reply, or undefined for no reply. Never rejects. */
  async #handle(msg: Buffer, maxBytes: number): Promise<Buffer | undefined> {
    if (this.#closed) return undefined;
    // SECURITY: the rate is checked before anything is parsed.
    if (!this.#bucket.take()) {
      this.stats.limited++;
      return undefined;
    }
    let q: DnsQuery;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      this.stats.malformed++;
      return undefined;
    }
    if (q.type !== "query") {
      this.stats.malformed++;
      return undefined;
    }
    this.stats.queries++;
    if ((q as { opcode?: string }).opcode !== "QUERY")
      return encodeReply(q, reply(q, RCODE.NOTIMP), maxBytes);
    if ((q.questions?.length ?? 0) !== 1) return encodeReply(q, reply(q, RCODE.FORMERR), maxBytes);
    if (q.questions![0]!.class !== "IN") return encodeReply(q, reply(q, RCODE.REFUSED), maxBytes);
    if (this.#pending >= this.limits.maxPending) {
      this.stats.limited++;
      return encodeReply(q, reply(q, RCODE.REFUSED), maxBytes);
    }
    this.#pending++;
    let out: DnsAnswer;
    try {
      out = await this.answer(q);
    } catch (e) {
      this.#log(`dns ${this.peerAddress}: ${(e as Error).message}`);
      out = reply(q, RCODE.SERVFAIL);
    } finally {
      this.#pending--;
    }
    return encodeReply(q, out, maxBytes);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const udp = this.#udp;
    const tcp = this.#tcp;
    this.#udp = undefined;
    this.#tcp = undefined;
    for (const s of this.#tcpSockets) s.destroy();
    if (udp) await new Promise<void>((r) => udp.close(() => r()));
    if (tcp) await new Promise<void>((r) => tcp.close(() => r()));
  }
}

/** Resolver round trips are bounded: at most this long, and answers at most this large. */
const UPSTREAM_TIMEOUT_MS = 2_000;

/**
 * Asks the upstream resolver one question over UDP (TCP when the answer is
 * truncated). Only a reply from the upstream's address and port, with our
 * random id and our question, is taken. Rejects on timeout or a bad answer.
 */
export async function queryUpstream(
  upstream: Upstream,
  question: dnsPacket.Question,
  timeoutMs = UPSTREAM_TIMEOUT_MS,
): Promise<dnsPacket.DecodedPacket> {
  const id = randomInt(65_536);
  const msg = dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [question],
  });
  const matches = (p: dnsPacket.DecodedPacket) =>
    p.type === "response" &&
    p.id === id &&
    p.questions?.length === 1 &&
    p.questions[0]!.type === question.type &&
    p.questions[0]!.name.toLowerCase() === question.name.toLowerCase();
  const res = await new Promise<dnsPacket.DecodedPacket>((resolve, reject) => {
    const sock = createSocket("udp4");
    let done = false;
    const finish = (err: Error | undefined, p?: dnsPacket.DecodedPacket) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.close();
      if (err) reject(err);
      else resolve(p!);
    };
    const timer = setTimeout(
      () =>
        finish(
          new Error(`upstream resolver ${upstream.host}:${upstream.port} did not answer in ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    sock.on("message", (buf, rinfo) => {
      if (rinfo.address !== upstream.host || rinfo.port !== upstream.port) return;
      let p: dnsPacket.DecodedPacket;
      try {
        p = dnsPacket.decode(buf);
      } catch {
        return; // not a DNS message: keep waiting for the real answer
      }
      if (matches(p)) finish(undefined, p);
    });
    sock.on("error", (e) => finish(e));
    sock.send(msg, upstream.port, upstream.host);
  });
  if (!res.flag_tc) return res;
  const tcp = await queryUpstreamTcp(upstream, msg, timeoutMs);
  if (!matches(tcp)) throw new Error("the upstream resolver answered another question over TCP");
  return tcp;
}

async function queryUpstreamTcp(
  upstream: Upstream,
  msg: Buffer,
  timeoutMs: number,
): Promise<dnsPacket.DecodedPacket> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: upstream.host, port: upstream.port });
    const reader = new DnsFrameReader();
    let done = false;
    const finish = (err: Error | undefined, p?: dnsPacket.DecodedPacket) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(p!);
    };
    const timer = setTimeout(
      () => finish(new Error(`upstream resolver ${upstream.host}:${upstream.port} (TCP) did not answer`)),
      timeoutMs,
    );
    sock.on("connect", () => sock.write(frame(msg)));
    sock.on("data", (d: Buffer) => {
      reader.push(d);
      const m = reader.next();
      if (!m) return;
      try {
        finish(undefined, dnsPacket.decode(m));
      } catch (e) {
        finish(e as Error);
      }
    });
    sock.on("error", (e) => finish(e));
    sock.on("close", () => finish(new Error("the upstream resolver closed the TCP connection")));
  });
}
