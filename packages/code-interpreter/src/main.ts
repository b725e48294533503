// The code-interpreter service inside a sandbox:
//
//   node server.mjs [--port 49999] [--host 0.0.0.0] [--kernels kernels.json]
//                   [--workdir DIR] [--preload python,javascript] [--agent http://127.0.0.1:49983]
//
// It starts the kernels of the preloaded languages, then answers /health with
// 200: a template's `ready` check waits for that, so the kernels are running
// when the snapshot is taken and a first runCode does not wait for a boot.
import fs from "node:fs/promises";
import os from "node:os";
import { parseArgs } from "node:util";
import { Contexts, type KernelSpecs } from "./contexts.ts";
import { createServer, type ServiceState } from "./server.ts";

const log = (line: string) => process.stderr.write(`code-interpreter: ${line}\n`);

const { values } = parseArgs({
  options: {
    port: { type: "string", default: "49999" },
    host: { type: "string", default: "0.0.0.0" },
    kernels: { type: "string", default: "/opt/firebreak/code-interpreter/kernels.json" },
    workdir: { type: "string", default: os.homedir() },
    preload: { type: "string", default: "python,javascript" },
    agent: { type: "string", default: "http://127.0.0.1:49983" },
  },
});

const specs = JSON.parse(await fs.readFile(values.kernels!, "utf8")) as KernelSpecs;
const baseEnv: Record<string, string> = {};
for (const [k, v] of Object.entries(process.env)) if (v !== undefined) baseEnv[k] = v;

const contexts = new Contexts({
  specs,
  workdir: values.workdir!,
  baseEnv,
  // The sandbox's env vars (given at create, after this process started): the
  // guest agent's /envs, with the token the caller's request carried.
  globalEnv: async (token) => {
    const res = await fetch(`${values.agent}/envs`, {
      headers: token ? { "x-access-token": token } : {},
      signal: AbortSignal.timeout(5000),
    });
    if (!res.ok) throw new Error(`agent /envs answered ${res.status}`);
    const body = (await res.json()) as unknown;
    const out: Record<string, string> = {};
    if (body && typeof body === "object" && !Array.isArray(body)) {
      for (const [k, v] of Object.entries(body)) if (typeof v === "string") out[k] = v;
    }
    return out;
  },
});

const state: ServiceState = { contexts, ready: false };
const server = createServer(state, log);
server.listen(Number(values.port), values.host, () => {
  const a = server.address();
  log(`listening on ${typeof a === "object" && a ? `${a.address}:${a.port}` : a}`);
});

const t0 = performance.now();
const preload = values.preload!.split(",").filter(Boolean);
contexts.preload(preload).then(
  () => {
    state.ready = true;
    log(`kernels ready (${preload.join(", ")}) in ${Math.round(performance.now() - t0)} ms`);
  },
  (e: Error) => {
    state.failed = e.message;
    log(`kernels failed to start: ${e.message}`);
  },
);

for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.once(sig, () => {
    server.close();
    void contexts.close().finally(() => process.exit(0));
  });
}
