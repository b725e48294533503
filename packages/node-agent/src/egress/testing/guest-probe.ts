// Test helper, run inside a stand-in guest namespace (nsenter): resolves names
// through a DNS server and tries TCP connections, in one process.
// Argument: JSON { dns?: {server, names: [name]}, connect?: [{host, port}], http?: [{url, headers?}],
//   dnsRaw?: {server, queries: [{name, type, tcp?}]}, dnsFlood?: {server, name, count}, timeoutMs }
// Prints JSON { dns: {name: addresses[] | error code}, connect: [result], http: [status+body | error],
//   dnsRaw: [{rcode, tc, answers} | "timeout"], dnsFlood: {sent, answered} }.
import { createSocket } from "node:dgram";
import { Resolver } from "node:dns/promises";
import { request } from "node:http";
import { connect } from "node:net";
import * as dnsPacket from "dns-packet";

interface Spec {
  dns?: { server: string; names: string[] };
  connect?: { host: string; port: number }[];
  http?: { url: string; headers?: Record<string, string> }[];
  /** Reads everything a server sends; reports bytes and milliseconds. */
  download?: { host: string; port: number }[];
  /** Raw DNS queries of any type, over UDP or TCP; each result says what came back. */
  dnsRaw?: { server: string; queries: { name: string; type: string; tcp?: boolean }[] };
  /** `count` UDP queries sent as fast as possible from one socket; counts the answers. */
  dnsFlood?: { server: string; name: string; count: number };
  timeoutMs?: number;
}
type RawResult =
  | { rcode: string; tc: boolean; answers: { type: string; name: string; data: unknown }[] }
  | string;
const spec = JSON.parse(process.argv[2]!) as Spec;
const timeoutMs = spec.timeoutMs ?? 1_000;
const out: {
  dns: Record<string, string[] | string>;
  connect: string[];
  http: string[];
  download: { bytes: number; ms: number; error?: string }[];
  dnsRaw: RawResult[];
  dnsFlood?: { sent: number; answered: number };
} = { dns: {}, connect: [], http: [], download: [], dnsRaw: [] };

if (spec.dns) {
  const r = new Resolver({ timeout: timeoutMs, tries: 1 });
  r.setServers([spec.dns.server]);
  await Promise.all(
    spec.dns.names.map(async (n) => {
      try {
        out.dns[n] = await r.resolve4(n);
      } catch (e) {
        out.dns[n] = (e as NodeJS.ErrnoException).code ?? String(e);
      }
    }),
  );
}

out.connect = await Promise.all(
  (spec.connect ?? []).map(
    (t) =>
      new Promise<string>((resolve) => {
        const sock = connect({ host: t.host, port: t.port });
        const done = (r: string) => {
          clearTimeout(timer);
          sock.destroy();
          resolve(r);
        };
        const timer = setTimeout(() => done("timeout"), timeoutMs);
        sock.on("connect", () => sock.write("ping"));
        sock.on("data", (d) => done(`connected ${d}`));
        sock.on("error", (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
      }),
  ),
);

out.http = await Promise.all(
  (spec.http ?? []).map(
    (h) =>
      new Promise<string>((resolve) => {
        const req = request(h.url, { headers: h.headers ?? {}, timeout: timeoutMs }, (res) => {
          let body = "";
          res.on("data", (d) => {
            body += d;
          });
          res.on("end", () => resolve(`${res.statusCode} ${body}`));
        });
        req.on("timeout", () => req.destroy(new Error("timeout")));
        req.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
        req.end();
      }),
  ),
);
for (const d of spec.download ?? []) {
  out.download.push(
    await new Promise((resolve) => {
      const t0 = performance.now();
      let bytes = 0;
      const sock = connect({ host: d.host, port: d.port });
      sock.on("data", (b: Buffer) => {
        bytes += b.length;
      });
      sock.on("end", () => resolve({ bytes, ms: performance.now() - t0 }));
      sock.on("error", (e: NodeJS.ErrnoException) =>
        resolve({ bytes, ms: performance.now() - t0, error: e.code ?? e.message }),
      );
    }),
  );
}
function summarize(buf: Buffer): RawResult {
  try {
    const p = dnsPacket.decode(buf) as dnsPacket.DecodedPacket & { rcode?: string };
    return {
      rcode: p.rcode ?? "?",
      tc: Boolean(p.flag_tc),
      answers: (p.answers ?? []).map((a) => {
        const d = (a as { data?: unknown }).data;
        return {
          type: a.type,
          name: a.name,
          data: Array.isArray(d) ? d.map((x) => String(x)) : Buffer.isBuffer(d) ? d.toString() : d,
        };
      }),
    };
  } catch (e) {
    return `undecodable: ${(e as Error).message}`;
  }
}

for (const [i, q] of (spec.dnsRaw?.queries ?? []).entries()) {
  const msg = dnsPacket.encode({
    type: "query",
    id: 1000 + i,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name: q.name, type: q.type as "A" }],
  });
  const server = spec.dnsRaw!.server;
  out.dnsRaw.push(
    await new Promise<RawResult>((resolve) => {
      if (q.tcp) {
        const sock = connect({ host: server, port: 53 });
        let buf = Buffer.alloc(0);
        const timer = setTimeout(() => {
          sock.destroy();
          resolve("timeout");
        }, timeoutMs);
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
            resolve(summarize(buf.subarray(2, 2 + buf.readUInt16BE(0))));
          }
        });
        sock.on("error", (e: NodeJS.ErrnoException) => {
          clearTimeout(timer);
          resolve(e.code ?? e.message);
        });
      } else {
        const sock = createSocket("udp4");
        const timer = setTimeout(() => {
          sock.close();
          resolve("timeout");
        }, timeoutMs);
        sock.on("message", (b) => {
          clearTimeout(timer);
          sock.close();
          resolve(summarize(b));
        });
        sock.send(msg, 53, server);
      }
    }),
  );
}

if (spec.dnsFlood) {
  const { server, name, count } = spec.dnsFlood;
  const sock = createSocket("udp4");
  let answered = 0;
  sock.on("message", () => {
    answered++;
  });
  await new Promise<void>((r) => sock.bind(0, () => r()));
  for (let i = 0; i < count; i++) {
    sock.send(
      dnsPacket.encode({ type: "query", id: i & 0xffff, questions: [{ name, type: "A" }] }),
      53,
      server,
    );
    if (i % 100 === 99) await new Promise((r) => setImmediate(r));
  }
  await new Promise((r) => setTimeout(r, timeoutMs));
  sock.close();
  out.dnsFlood = { sent: count, answered };
}

process.stdout.write(`${JSON.stringify(out)}\n`);
