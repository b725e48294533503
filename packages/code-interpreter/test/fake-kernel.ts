// A small but real Jupyter kernel for the service's tests: it speaks the
// messaging protocol over ZeroMQ (ROUTER shell and control, PUB iopub) and
// evaluates cells as JavaScript in one persistent vm context, so state,
// streams, errors, results, interrupts and crashes behave as in a real
// kernel. Globals for cells: print(...), display(mimeBundle), sleep(ms),
// waitForFile(path, ms), Deno.env (over process.env), crypto, process.
// With FAKE_LATE_RESULTS=1 it publishes a cell's execute_result only after
// the cell's idle, when the next shell request arrives, as Deno 2.9 does now
// and then: the service must wait for its barrier.
// Like ipykernel, an error in a cell sent with stop_on_error aborts the
// execute requests that arrive soon after it (ipykernel aborts those already
// on its queue, and under load the next one often is): they get busy, an
// "aborted" reply and idle, with no output.
//
//   node fake-kernel.ts <connection_file>
import { createHmac, randomUUID } from "node:crypto";
import fs from "node:fs";
import util from "node:util";
import vm from "node:vm";
import { Publisher, Router } from "zeromq";

const conn = JSON.parse(fs.readFileSync(process.argv[2]!, "utf8"));
const key = Buffer.from(conn.key as string);
const session = randomUUID();
const url = (port: number) => `tcp://127.0.0.1:${port}`;

const shell = new Router();
const control = new Router();
const iopub = new Publisher();
await shell.bind(url(conn.shell_port));
await control.bind(url(conn.control_port));
await iopub.bind(url(conn.iopub_port));

type Msg = {
  header: Record<string, unknown>;
  parent_header: unknown;
  metadata: unknown;
  content: Record<string, unknown>;
};

function frames(msgType: string, content: unknown, parent: Record<string, unknown>): Buffer[] {
  const parts = [
    {
      msg_id: randomUUID(),
      session,
      username: "kernel",
      date: new Date().toISOString(),
      msg_type: msgType,
      version: "5.3",
    },
    parent,
    {},
    content,
  ].map((p) => Buffer.from(JSON.stringify(p)));
  const h = createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return [Buffer.from("<IDS|MSG>"), Buffer.from(h.digest("hex")), ...parts];
}

function parse(raw: Buffer[]): { ids: Buffer[]; msg: Msg } {
  const at = raw.findIndex((f) => f.toString() === "<IDS|MSG>");
  const [header, parent_header, metadata, content] = raw
    .slice(at + 2, at + 6)
    .map((b) => JSON.parse(b.toString()));
  return { ids: raw.slice(0, at), msg: { header, parent_header, metadata, content } };
}

const publish = (type: string, content: unknown, parent: Record<string, unknown>) =>
  iopub.send(frames(type, content, parent));

const LATE = process.env["FAKE_LATE_RESULTS"] === "1";
/** Results held back until the next shell request (FAKE_LATE_RESULTS). */
let held: Buffer[][] = [];
async function flushHeld(): Promise<void> {
  const out = held;
  held = [];
  for (const f of out) await iopub.send(f);
}

let count = 0;
/** Execute requests arriving before this time are aborted (stop_on_error after an error). */
let abortUntil = 0;
const ABORT_WINDOW_MS = 500;
let interrupt: ((e: Error) => void) | undefined;
process.on("SIGINT", () => {
  const e = new Error("interrupted");
  e.name = "KeyboardInterrupt";
  interrupt?.(e);
});

let parentNow: Record<string, unknown> = {};
const context = vm.createContext({
  print: (...a: unknown[]) => void publish("stream", { name: "stdout", text: `${a.join(" ")}\n` }, parentNow),
  printErr: (...a: unknown[]) =>
    void publish("stream", { name: "stderr", text: `${a.join(" ")}\n` }, parentNow),
  display: (data: Record<string, unknown>) => void publish("display_data", { data, metadata: {} }, parentNow),
  sleep: (ms: number) => new Promise((r) => setTimeout(r, ms)),
  waitForFile: async (path: string, ms: number) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (fs.existsSync(path)) return true;
      await new Promise((r) => setTimeout(r, 20));
    }
    return false;
  },
  Deno: {
    env: {
      get: (k: string) => process.env[k],
      set: (k: string, v: string) => {
        process.env[k] = v;
      },
      delete: (k: string) => {
        delete process.env[k];
      },
    },
  },
  crypto: globalThis.crypto,
  process,
  Math,
});

async function execute(ids: Buffer[], msg: Msg): Promise<void> {
  const parent = msg.header;
  parentNow = parent;
  const silent = msg.content["silent"] === true;
  await publish("status", { execution_state: "busy" }, parent);
  if (!silent) {
    count++;
    await publish("execute_input", { code: msg.content["code"], execution_count: count }, parent);
  }
  let reply: Record<string, unknown> = { status: "ok", execution_count: count };
  try {
    const value = await new Promise((resolve, reject) => {
      interrupt = reject;
      Promise.resolve(vm.runInContext(String(msg.content["code"]), context)).then(resolve, reject);
    });
    if (!silent && value !== undefined) {
      const result = { execution_count: count, data: { "text/plain": util.inspect(value) }, metadata: {} };
      if (LATE) held.push(frames("execute_result", result, parent));
      else await publish("execute_result", result, parent);
    }
  } catch (e) {
    const err = e as Error;
    const content = { ename: err.name, evalue: err.message, traceback: (err.stack ?? "").split("\n") };
    await publish("error", content, parent);
    reply = { status: "error", execution_count: count, ...content };
    if (!silent && msg.content["stop_on_error"] !== false) abortUntil = Date.now() + ABORT_WINDOW_MS;
  } finally {
    interrupt = undefined;
  }
  await shell.send([...ids, ...frames("execute_reply", reply, parent)]);
  await publish("status", { execution_state: "idle" }, parent);
}

void (async () => {
  for await (const raw of control) {
    const { ids, msg } = parse(raw as Buffer[]);
    if (msg.header["msg_type"] === "shutdown_request") {
      await control.send([...ids, ...frames("shutdown_reply", { restart: false }, msg.header)]);
      process.exit(0);
    }
    if (msg.header["msg_type"] === "interrupt_request") {
      interrupt?.(Object.assign(new Error("interrupted"), { name: "KeyboardInterrupt" }));
      await control.send([...ids, ...frames("interrupt_reply", {}, msg.header)]);
    }
  }
})();

// Requests are handled one at a time, in order, like a real kernel's shell.
for await (const raw of shell) {
  const { ids, msg } = parse(raw as Buffer[]);
  const type = msg.header["msg_type"];
  await flushHeld();
  if (type === "kernel_info_request") {
    await publish("status", { execution_state: "busy" }, msg.header);
    await shell.send([
      ...ids,
      ...frames(
        "kernel_info_reply",
        { status: "ok", protocol_version: "5.3", implementation: "fake" },
        msg.header,
      ),
    ]);
    await publish("status", { execution_state: "idle" }, msg.header);
  } else if (type === "execute_request" && Date.now() < abortUntil) {
    await publish("status", { execution_state: "busy" }, msg.header);
    await shell.send([...ids, ...frames("execute_reply", { status: "aborted" }, msg.header)]);
    await publish("status", { execution_state: "idle" }, msg.header);
  } else if (type === "execute_request") {
    await execute(ids, msg);
  }
}
