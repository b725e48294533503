// Test helper, run inside a stand-in guest namespace (nsenter): resolves names
// through a DNS server and tries TCP connections, in one process.
// Argument: JSON { dns?: {server, names: [name]}, connect?: [{host, port}], http?: [{url, headers?}], timeoutMs }
// Prints JSON { dns: {name: addresses[] | error code}, connect: [result], http: [status+body | error] }.
import { Resolver } from "node:dns/promises";
import { request } from "node:http";
import { connect } from "node:net";

interface Spec {
  dns?: { server: string; names: string[] };
  connect?: { host: string; port: number }[];
  http?: { url: string; headers?: Record<string, string> }[];
  /** Reads everything a server sends; reports bytes and milliseconds. */
  download?: { host: string; port: number }[];
  timeoutMs?: number;
}
const spec = JSON.parse(process.argv[2]!) as Spec;
const timeoutMs = spec.timeoutMs ?? 1_000;
const out: {
  dns: Record<string, string[] | string>;
  connect: string[];
  http: string[];
  download: { bytes: number; ms: number; error?: string }[];
} = { dns: {}, connect: [], http: [], download: [] };

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
process.stdout.write(`${JSON.stringify(out)}\n`);
