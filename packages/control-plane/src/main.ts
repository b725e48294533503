// `node packages/control-plane/src/main.ts [--listen host:port] [--state-dir dir] [--db url-or-file]`:
// runs the control plane until SIGINT/SIGTERM (what `firebreak up` runs).
// Prints `Admin API key ...` on first start, then `listening on <url>` on stdout.
import { parseArgs } from "node:util";
import { startServer } from "./server.ts";

const { values } = parseArgs({
  options: {
    listen: { type: "string", default: process.env["FIREBREAK_LISTEN"] ?? "127.0.0.1:3000" },
    "state-dir": { type: "string" },
    db: { type: "string" },
  },
});
const server = await startServer({
  listen: values.listen!,
  ...(values["state-dir"] ? { stateDir: values["state-dir"] } : {}),
  ...(values.db ? { database: values.db } : {}),
  ...(process.env["FIREBREAK_USAGE_INTERVAL_MS"]
    ? { config: { usageIntervalMs: Number(process.env["FIREBREAK_USAGE_INTERVAL_MS"]) } }
    : {}),
});
process.stdout.write(`listening on ${server.url}\n`);
let stopping = false;
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    server.close().then(
      () => process.exit(0),
      (e) => {
        process.stderr.write(`shutdown failed: ${(e as Error).message}\n`);
        process.exit(1);
      },
    );
  });
}
