// The platform resolver's sockets and its upstream client. One listener pair
// (UDP and TCP, port 53) per sandbox, bound on the host end of its veth; the
// namespace DNATs every guest DNS packet there. The policy decision is the
// caller's `answer` function (egress-manager.ts).
import { createSocket, type Socket } from "node:dgram";
import { createServer, type Server } from "node:net";
import * as dnsPacket from "dns-packet";

export type DnsQuery = dnsPacket.DecodedPacket;
export type DnsAnswer = dnsPacket.Packet;

export const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;
const MAX_TCP_MESSAGE = 65_535;

export interface Upstream {
  host: string;
  port: number;
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
 * Listens for one sandbox: UDP and TCP on `bindAddress:port`. Packets from any
 * source other than `peerAddress` are ignored (SECURITY: the listener serves
 * one sandbox; the namespace SNATs the guest to `peerAddress`).
 */
export class SandboxDnsListener {
  #udp: Socket | undefined;
  #tcp: Server | undefined;
  queries = 0;

  readonly bindAddress: string;
  readonly peerAddress: string;
  readonly answer: (q: DnsQuery) => Promise<DnsAnswer>;
  readonly port: number;

  constructor(
    bindAddress: string,
    peerAddress: string,
    answer: (q: DnsQuery) => Promise<DnsAnswer>,
    port = 53,
  ) {
    this.bindAddress = bindAddress;
    this.peerAddress = peerAddress;
    this.answer = answer;
    this.port = port;
  }

  async start(): Promise<void> {
    const udp = createSocket({ type: "udp4" });
    this.#udp = udp;
    udp.on("message", (msg, rinfo) => {
      if (rinfo.address !== this.peerAddress) return;
      void this.#handle(msg).then((out) => {
        if (!out) return;
        // Classic DNS over UDP: a reply over 512 bytes is truncated; the client retries over TCP.
        const buf = out.length > 512 ? truncate(msg) : out;
        if (buf) udp.send(buf, rinfo.port, rinfo.address);
      });
    });
    await new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind({ address: this.bindAddress, port: this.port, exclusive: true }, () => {
        udp.off("error", reject);
        udp.on("error", () => {});
        resolve();
      });
    });
    const tcp = createServer((sock) => {
      if (sock.remoteAddress !== this.peerAddress) {
        sock.destroy();
        return;
      }
      sock.setTimeout(10_000, () => sock.destroy());
      let buf = Buffer.alloc(0);
      sock.on("data", (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length > MAX_TCP_MESSAGE + 2) return sock.destroy();
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const len = buf.readUInt16BE(0);
          const msg = buf.subarray(2, 2 + len);
          buf = buf.subarray(2 + len);
          void this.#handle(msg).then((out) => {
            if (!out || sock.destroyed) return;
            const head = Buffer.alloc(2);
            head.writeUInt16BE(out.length);
            sock.write(Buffer.concat([head, out]));
          });
        }
      });
      sock.on("error", () => {});
    });
    this.#tcp = tcp;
    await new Promise<void>((resolve, reject) => {
      tcp.once("error", reject);
      tcp.listen({ host: this.bindAddress, port: this.port, exclusive: true }, () => {
        tcp.off("error", reject);
        resolve();
      });
    });
  }

  async #handle(msg: Buffer): Promise<Buffer | undefined> {
    let q: DnsQuery;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    if (q.type !== "query") return undefined;
    this.queries++;
    let out: DnsAnswer;
    try {
      out = (q.questions?.length ?? 0) === 1 ? await this.answer(q) : reply(q, RCODE.REFUSED);
    } catch {
      out = reply(q, RCODE.SERVFAIL);
    }
    return dnsPacket.encode(out);
  }

  async close(): Promise<void> {
    const udp = this.#udp;
    const tcp = this.#tcp;
    this.#udp = undefined;
    this.#tcp = undefined;
    if (udp) await new Promise<void>((r) => udp.close(() => r()));
    if (tcp) await new Promise<void>((r) => tcp.close(() => r()));
  }
}

function truncate(query: Buffer): Buffer | undefined {
  try {
    const q = dnsPacket.decode(query);
    return dnsPacket.encode({
      ...reply(q, RCODE.NOERROR),
      flags: (reply(q, 0).flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE,
    });
  } catch {
    return undefined;
  }
}

/** Asks the upstream resolver one question over UDP (TCP when the answer is truncated). */
export async function queryUpstream(
  upstream: Upstream,
  question: dnsPacket.Question,
  timeoutMs = 2_000,
): Promise<dnsPacket.DecodedPacket> {
  const id = Math.floor(Math.random() * 65_536);
  const msg = dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [question],
  });
  const res = await new Promise<dnsPacket.DecodedPacket>((resolve, reject) => {
    const sock = createSocket("udp4");
    const timer = setTimeout(() => {
      sock.close();
      reject(
        new Error(`upstream resolver ${upstream.host}:${upstream.port} did not answer in ${timeoutMs} ms`),
      );
    }, timeoutMs);
    sock.on("message", (buf) => {
      let p: dnsPacket.DecodedPacket;
      try {
        p = dnsPacket.decode(buf);
      } catch {
        return;
      }
      if (p.id !== id) return;
      clearTimeout(timer);
      sock.close();
      resolve(p);
    });
    sock.on("error", (e) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.send(msg, upstream.port, upstream.host);
  });
  if (!res.flag_tc) return res;
  return queryUpstreamTcp(upstream, msg, id, timeoutMs);
}

async function queryUpstreamTcp(
  upstream: Upstream,
  msg: Buffer,
  id: number,
  timeoutMs: number,
): Promise<dnsPacket.DecodedPacket> {
  const { connect } = await import("node:net");
  return new Promise((resolve, reject) => {
    const sock = connect({ host: upstream.host, port: upstream.port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`upstream resolver ${upstream.host}:${upstream.port} (TCP) did not answer`));
    }, timeoutMs);
    let buf = Buffer.alloc(0);
    sock.on("connect", () => {
      const head = Buffer.alloc(2);
      head.writeUInt16BE(msg.length);
      sock.write(Buffer.concat([head, msg]));
    });
    sock.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        clearTimeout(timer);
        sock.destroy();
        try {
          const p = dnsPacket.decode(buf.subarray(2, 2 + buf.readUInt16BE(0)));
          if (p.id !== id) throw new Error("upstream answered another query");
          resolve(p);
        } catch (e) {
          reject(e);
        }
      }
    });
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
