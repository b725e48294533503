// Test helper, run inside the fake-world namespace (nsenter): every fake host
// of the egress tests in one process. Argument: JSON
//   { echo: [{host, port, name}], dns?: {host, port, zone: DnsZone},
//     http?: [{host, port, name}] }
// echo: TCP, replies "<name> from <peer>: <data>". dns: UDP+TCP, answers from
// the zone (A records, CNAMEs, TXT, and hostile behaviours: see DnsBehaviour),
// NXDOMAIN otherwise; prints "query <type> <name>" per query. http: answers
// every request with JSON {name, method, url, headers} and prints
// "http <name> <method> <url> <headers json>"; /redirect answers 302 to the
// forbidden service, /reflect also reflects Authorization in a response
// header. source: sends N bytes per client. Prints "ready" once all listen.
import { randomBytes } from "node:crypto";
import { createSocket } from "node:dgram";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import * as dnsPacket from "dns-packet";

/**
 * Hostile upstream behaviours, for the resolver's tests:
 * - "garbage": bytes that are not DNS (with the query's id);
 * - "opt-in-answer": a valid answer plus an OPT record in the answer section
 *   (decodes, but dns-packet cannot encode it again);
 * - "short-a": an A record whose data is 3 bytes long;
 * - "wrong-id": a valid answer with another id (must be ignored);
 * - "silent": no answer at all;
 * - "truncated": UDP says truncated (TC); the TCP answer is the full one;
 * - "bad-tcp": UDP says truncated; over TCP the connection is closed at once;
 * - "unrelated": the answer also carries A records for other names;
 * - "flood": 200 packets with random ids before the real answer.
 */
export type DnsBehaviour =
  | "garbage"
  | "opt-in-answer"
  | "short-a"
  | "wrong-id"
  | "silent"
  | "truncated"
  | "bad-tcp"
  | "unrelated"
  | "flood";

export interface DnsZoneEntry {
  a?: string[];
  /** A CNAME to another name of the zone (its records are added to the answer, as a resolver does). */
  cname?: string;
  txt?: string[];
  ttl: number;
  behaviour?: DnsBehaviour;
}
export type DnsZone = Record<string, DnsZoneEntry>;

interface Spec {
  echo: { host: string; port: number; name: string }[];
  dns?: { host: string; port: number; zone: DnsZone };
  http?: { host: string; port: number; name: string }[];
  /** Sends `bytes` bytes to every client, then closes (throughput tests). */
  source?: { host: string; port: number; bytes: number }[];
}
const spec = JSON.parse(process.argv[2]!) as Spec;
const waits: Promise<void>[] = [];

for (const e of spec.echo) {
  const s = createServer((sock) => {
    sock.on("data", (d) => sock.write(`${e.name} from ${sock.remoteAddress}: ${d}`));
    sock.on("error", () => {});
  });
  waits.push(new Promise((r) => s.listen(e.port, e.host, r)));
}

for (const h of spec.http ?? []) {
  const s = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      process.stdout.write(`http ${h.name} ${req.method} ${req.url} ${JSON.stringify(req.headers)}\n`);
      if (req.url === "/redirect") {
        res.writeHead(302, { location: `http://${h.host}:${h.port}/redirected` });
        return void res.end();
      }
      const extra: Record<string, string> =
        req.url === "/reflect" ? { "x-echo-authorization": req.headers.authorization ?? "" } : {};
      res.writeHead(200, { "content-type": "application/json", ...extra });
      res.end(
        JSON.stringify({
          name: h.name,
          method: req.method,
          url: req.url,
          headers: req.headers,
          bodyBytes: body.length,
        }),
      );
    });
  });
  waits.push(new Promise((r) => s.listen(h.port, h.host, r)));
}

for (const src of spec.source ?? []) {
  const chunk = Buffer.alloc(64 * 1024, 120);
  const s = createServer((sock) => {
    let left = src.bytes;
    sock.on("error", () => {});
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!sock.write(chunk.subarray(0, n))) return void sock.once("drain", pump);
      }
      sock.end();
    };
    pump();
  });
  waits.push(new Promise((r) => s.listen(src.port, src.host, r)));
}

if (spec.dns) {
  const { zone, host, port } = spec.dns;
  /** The records for a name, following CNAMEs inside the zone (at most 8). */
  const records = (name: string, type: string): dnsPacket.Answer[] => {
    const out: dnsPacket.Answer[] = [];
    let cur = name;
    for (let i = 0; i < 8; i++) {
      const e = zone[cur.toLowerCase()];
      if (!e) break;
      if (e.cname) {
        out.push({ type: "CNAME", name: cur, ttl: e.ttl, class: "IN", data: e.cname });
        cur = e.cname;
        continue;
      }
      if (type === "A")
        for (const a of e.a ?? []) out.push({ type: "A", name: cur, ttl: e.ttl, class: "IN", data: a });
      if (type === "TXT")
        for (const t of e.txt ?? []) out.push({ type: "TXT", name: cur, ttl: e.ttl, class: "IN", data: t });
      break;
    }
    return out;
  };
  const response = (q: dnsPacket.DecodedPacket, answers: dnsPacket.Answer[], flags = 0, id = q.id ?? 0) =>
    dnsPacket.encode({
      type: "response",
      id,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | flags,
      questions: q.questions ?? [],
      answers,
    });
  /** Replies to send for one query (UDP or TCP). */
  const answer = (msg: Buffer, tcp: boolean): Buffer[] => {
    const q = dnsPacket.decode(msg);
    const question = q.questions![0]!;
    const name = question.name.toLowerCase();
    const entry = zone[name];
    process.stdout.write(`query ${question.type} ${question.name}${tcp ? " tcp" : ""}\n`);
    if (!entry) return [response(q, [], 3)];
    const answers = records(name, question.type);
    const good = response(q, answers);
    switch (entry.behaviour) {
      case "garbage":
        return [Buffer.concat([msg.subarray(0, 2), Buffer.from([0x81, 0x80, 0, 1, 0, 9]), randomBytes(24)])];
      case "opt-in-answer": {
        // The answer as it is, then one more record: OPT (type 41) owned by the question's name.
        const extra = Buffer.from([0xc0, 0x0c, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        const out = Buffer.concat([good, extra]);
        out.writeUInt16BE(answers.length + 1, 6);
        return [out];
      }
      case "short-a": {
        const out = response(q, [
          { type: "A", name: question.name, ttl: entry.ttl, class: "IN", data: "1.2.3.4" },
        ]);
        // Cut the last byte of the address and say so in the record's length.
        const cut = out.subarray(0, out.length - 1);
        cut.writeUInt16BE(3, cut.length - 5);
        return [cut];
      }
      case "wrong-id":
        return [response(q, answers, 0, ((q.id ?? 0) + 1) & 0xffff)];
      case "silent":
        return [];
      case "truncated":
        return tcp ? [good] : [response(q, [], dnsPacket.TRUNCATED_RESPONSE)];
      case "bad-tcp":
        return tcp ? [] : [response(q, [], dnsPacket.TRUNCATED_RESPONSE)];
      case "unrelated":
        return [
          response(q, [
            ...answers,
            { type: "A", name: "elsewhere.test", ttl: entry.ttl, class: "IN", data: "11.1.1.1" },
            { type: "A", name: "elsewhere.test", ttl: entry.ttl, class: "IN", data: "10.0.0.1" },
          ]),
        ];
      case "flood":
        return [
          ...Array.from({ length: 200 }, () => response(q, answers, 0, Math.floor(Math.random() * 65_536))),
          good,
        ];
      default:
        return [good];
    }
  };
  const udp = createSocket("udp4");
  udp.on("message", (msg, rinfo) => {
    try {
      for (const out of answer(msg, false)) udp.send(out, rinfo.port, rinfo.address);
    } catch (e) {
      process.stdout.write(`dns error ${(e as Error).message}\n`);
    }
  });
  waits.push(new Promise((r) => udp.bind(port, host, () => r())));
  const tcp = createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + buf.readUInt16BE(0));
        let outs: Buffer[];
        try {
          outs = answer(msg, true);
        } catch (e) {
          process.stdout.write(`dns error ${(e as Error).message}\n`);
          outs = [];
        }
        if (!outs.length) return void sock.destroy();
        for (const out of outs) {
          const head = Buffer.alloc(2);
          head.writeUInt16BE(out.length);
          sock.write(Buffer.concat([head, out]));
        }
      }
    });
    sock.on("error", () => {});
  });
  waits.push(new Promise((r) => tcp.listen(port, host, r)));
}

await Promise.all(waits);
process.stdout.write("ready\n");
