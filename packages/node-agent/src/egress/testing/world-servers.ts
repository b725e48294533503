// Test helper, run inside the fake-world namespace (nsenter): every fake host
// of the egress tests in one process. Argument: JSON
//   { echo: [{host, port, name}], dns?: {host, port, zone: {name: {a: [addr], ttl}}},
//     http?: [{host, port, name}] }
// echo: TCP, replies "<name> from <peer>: <data>". dns: UDP+TCP, answers from
// the zone, NXDOMAIN otherwise, counts queries. http: answers every request
// with JSON {name, method, url, headers}. source: sends N bytes per client. Prints "ready" once all listen.
import { createSocket } from "node:dgram";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import * as dnsPacket from "dns-packet";

interface Spec {
  echo: { host: string; port: number; name: string }[];
  dns?: { host: string; port: number; zone: Record<string, { a: string[]; ttl: number }> };
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
      res.writeHead(200, { "content-type": "application/json" });
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
  const answer = (msg: Buffer): Buffer => {
    const q = dnsPacket.decode(msg);
    const question = q.questions![0]!;
    const entry = zone[question.name.toLowerCase()];
    const answers: dnsPacket.Answer[] =
      entry && question.type === "A"
        ? entry.a.map((a) => ({ type: "A", name: question.name, ttl: entry.ttl, class: "IN", data: a }))
        : [];
    process.stdout.write(`query ${question.type} ${question.name}\n`);
    return dnsPacket.encode({
      type: "response",
      id: q.id ?? 0,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | (entry ? 0 : 3),
      questions: q.questions ?? [],
      answers,
    });
  };
  const udp = createSocket("udp4");
  udp.on("message", (msg, rinfo) => udp.send(answer(msg), rinfo.port, rinfo.address));
  waits.push(new Promise((r) => udp.bind(port, host, () => r())));
  const tcp = createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const out = answer(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + buf.readUInt16BE(0));
        const head = Buffer.alloc(2);
        head.writeUInt16BE(out.length);
        sock.write(Buffer.concat([head, out]));
      }
    });
    sock.on("error", () => {});
  });
  waits.push(new Promise((r) => tcp.listen(port, host, r)));
}

await Promise.all(waits);
process.stdout.write("ready\n");
