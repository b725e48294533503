// Test helper, run inside a network namespace with `nsenter --net=<path> node net-probe.ts ...`.
//   server <host> <port> [name]    TCP echo server; replies "<name> from <peer>: <data>"; prints "ready"
//   connect <timeoutMs> <json>     tries each {host, port, localAddress?}; prints one JSON result list
// Results: "connected" (echo received), or the failure ("timeout", "ECONNREFUSED", "EHOSTUNREACH", ...).
import { connect, createServer } from "node:net";

const [mode, a, b, name = "echo"] = process.argv.slice(2);

if (mode === "server") {
  const server = createServer((sock) => {
    sock.on("data", (d) => sock.write(`${name} from ${sock.remoteAddress}: ${d}`));
    sock.on("error", () => {});
  });
  server.listen(Number(b), a, () => process.stdout.write("ready\n"));
} else if (mode === "connect") {
  const timeoutMs = Number(a);
  const targets = JSON.parse(b!) as { host: string; port: number; localAddress?: string }[];
  const results = await Promise.all(targets.map((t) => attempt(t, timeoutMs)));
  process.stdout.write(`${JSON.stringify(results)}\n`);
} else {
  process.stderr.write("usage: net-probe.ts server <host> <port> [name] | connect <timeoutMs> <json>\n");
  process.exit(2);
}

function attempt(
  t: { host: string; port: number; localAddress?: string },
  timeoutMs: number,
): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect({ host: t.host, port: t.port, localAddress: t.localAddress });
    const done = (r: string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done("timeout"), timeoutMs);
    sock.on("connect", () => sock.write("ping"));
    sock.on("data", (d) => done(`connected ${d}`));
    sock.on("error", (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
  });
}
