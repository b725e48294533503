// The code-interpreter service on loopback, with real kernel processes (the
// fake kernel in fake-kernel.ts speaks the Jupyter protocol over ZeroMQ) and
// a stub of the guest agent's /envs: the wire format E2B's SDK reads,
// contexts, state, streaming, env vars, interrupts and crashes.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Contexts } from "../src/contexts.ts";
import { createServer, type ServiceState } from "../src/server.ts";

const FAKE_KERNEL = fileURLToPath(new URL("./fake-kernel.ts", import.meta.url));
const TOKEN = "t0ken";

let tmp: string;
let base: string;
let state: ServiceState;
let server: http.Server;
let agent: http.Server;
const envsRequests: (string | undefined)[] = [];

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "fb-ci-test-"));
  agent = http.createServer((req, res) => {
    envsRequests.push(req.headers["x-access-token"] as string | undefined);
    if (req.url !== "/envs" || req.headers["x-access-token"] !== TOKEN) {
      res.writeHead(401).end();
      return;
    }
    res
      .writeHead(200, { "content-type": "application/json" })
      .end(JSON.stringify({ GLOBAL_VAR: "from-create" }));
  });
  await new Promise<void>((r) => agent.listen(0, "127.0.0.1", r));
  const agentUrl = `http://127.0.0.1:${(agent.address() as AddressInfo).port}`;
  const contexts = new Contexts({
    specs: {
      javascript: {
        argv: [process.execPath, "--disable-warning=ExperimentalWarning", FAKE_KERNEL, "{connection_file}"],
        // Results come after the cell's idle, as Deno's sometimes do.
        env: { FAKE_LATE_RESULTS: "1" },
        interruptMode: "signal",
        lateOutputs: true,
      },
    },
    workdir: tmp,
    baseEnv: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", TMPDIR: tmp },
    globalEnv: async (token) => {
      const res = await fetch(`${agentUrl}/envs`, { headers: token ? { "x-access-token": token } : {} });
      if (!res.ok) throw new Error(`agent answered ${res.status}`);
      return (await res.json()) as Record<string, string>;
    },
    keepaliveMs: 200,
  });
  state = { contexts, ready: false };
  server = createServer(state, () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  assert.equal((await fetch(`${base}/health`)).status, 503, "not healthy before the kernels answer");
  await contexts.preload(["javascript"]);
  state.ready = true;
});

after(async () => {
  await state?.contexts.close();
  server?.closeAllConnections();
  server?.close();
  agent?.closeAllConnections();
  agent?.close();
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

type Event = { type: string } & Record<string, unknown>;

async function execute(body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await fetch(`${base}/execute`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-access-token": TOKEN, ...headers },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const lines = (await res.text()).split("\n").filter(Boolean);
  return lines.map((l) => JSON.parse(l) as Event);
}

const of = (events: Event[], type: string) => events.filter((e) => e.type === type);
const js = { language: "js" };

test("health answers 200 once the preloaded kernels run", async () => {
  const res = await fetch(`${base}/health`);
  assert.equal(res.status, 200);
  assert.equal(await res.text(), "OK");
});

test("execute streams E2B's NDJSON and keeps state between calls", async () => {
  const first = await execute({ code: "x = 41; print('set'); undefined", ...js });
  assert.deepEqual(
    first.map((e) => e.type),
    ["number_of_executions", "stdout", "end_of_execution"],
  );
  assert.equal(first[1]!["text"], "set\n");
  const second = await execute({ code: "x + 1", ...js });
  const result = of(second, "result")[0]!;
  assert.equal(result["text"], "42");
  assert.equal(result["is_main_result"], true);
  assert.equal(second.at(-1)!.type, "end_of_execution");
  assert.ok(
    (of(second, "number_of_executions")[0]!["execution_count"] as number) >
      (of(first, "number_of_executions")[0]!["execution_count"] as number),
  );
});

test("string results lose their quotes, display data is a non-main result with its formats", async () => {
  const events = await execute({
    code: "display({'image/png': 'iVBOR', 'text/plain': '<Figure>', 'application/x-custom': 1}); 'hello'",
    ...js,
  });
  const results = of(events, "result");
  assert.equal(results.length, 2);
  assert.deepEqual(results[0], {
    type: "result",
    png: "iVBOR",
    text: "<Figure>",
    extra: { "application/x-custom": 1 },
    is_main_result: false,
  });
  assert.equal(results[1]!["text"], "hello");
});

test("an exception is one error event with name, value and traceback", async () => {
  const events = await execute({ code: "throw new RangeError('too far')", ...js });
  const errors = of(events, "error");
  assert.equal(errors.length, 1);
  assert.equal(errors[0]!["name"], "RangeError");
  assert.equal(errors[0]!["value"], "too far");
  assert.match(errors[0]!["traceback"] as string, /RangeError: too far/);
  assert.equal(events.at(-1)!.type, "end_of_execution");
});

test("stdout reaches the client while the cell still runs", async () => {
  const flag = path.join(tmp, "go");
  const res = await fetch(`${base}/execute`, {
    method: "POST",
    headers: { "x-access-token": TOKEN },
    body: JSON.stringify({
      code: `print('tick'); (async () => { const ok = await waitForFile(${JSON.stringify(flag)}, 20000); print(ok ? 'saw the file' : 'timed out') })()`,
      ...js,
    }),
  });
  const reader = res.body!.getReader();
  let text = "";
  // The cell only finishes after the file exists, and the file is made only
  // after "tick" arrived: output must stream.
  while (!text.includes("tick")) {
    const r = await reader.read();
    assert.ok(!r.done, "stream ended before tick");
    text += new TextDecoder().decode(r.value);
  }
  assert.ok(!text.includes("end_of_execution"));
  await fs.writeFile(flag, "");
  for (;;) {
    const r = await reader.read();
    if (r.done) break;
    text += new TextDecoder().decode(r.value);
  }
  assert.match(text, /saw the file/);
  assert.match(text, /end_of_execution/);
});

test("the sandbox's env vars are read from the agent with the caller's token; env_vars last one execution", async () => {
  const ctx = (await (
    await fetch(`${base}/contexts`, { method: "POST", body: JSON.stringify(js) })
  ).json()) as { id: string };
  const events = await execute({
    code: "[process.env.GLOBAL_VAR, process.env.ONCE]",
    context_id: ctx.id,
    env_vars: { ONCE: "yes" },
  });
  assert.equal(of(events, "result")[0]!["text"], "[ 'from-create', 'yes' ]");
  assert.ok(envsRequests.includes(TOKEN));
  const later = await execute({ code: "[process.env.GLOBAL_VAR, process.env.ONCE]", context_id: ctx.id });
  assert.equal(of(later, "result")[0]!["text"], "[ 'from-create', undefined ]");
});

test("every kernel is reseeded before its first cell (snapshot clones share generator state)", async () => {
  const events = await execute({ code: "Math.random.toString().includes('getRandomValues')", ...js });
  assert.equal(of(events, "result")[0]!["text"], "true");
});

test("contexts: create with a cwd, list, restart (state lost), remove", async () => {
  const dir = await fs.mkdtemp(path.join(tmp, "cwd-"));
  const created = await fetch(`${base}/contexts`, {
    method: "POST",
    body: JSON.stringify({ language: "typescript", cwd: dir }),
  });
  assert.equal(created.status, 200);
  const ctx = (await created.json()) as { id: string; language: string; cwd: string };
  assert.equal(ctx.language, "typescript");
  assert.equal(ctx.cwd, dir);
  assert.equal(of(await execute({ code: "process.cwd()", context_id: ctx.id }), "result")[0]!["text"], dir);

  const list = (await (await fetch(`${base}/contexts`)).json()) as { id: string; language: string }[];
  assert.ok(list.some((c) => c.id === ctx.id));
  assert.ok(
    list.some((c) => c.language === "javascript"),
    "the default context is listed",
  );

  await execute({ code: "y = 5", context_id: ctx.id });
  assert.equal((await fetch(`${base}/contexts/${ctx.id}/restart`, { method: "POST" })).status, 204);
  const after = await execute({ code: "typeof y", context_id: ctx.id });
  assert.equal(of(after, "result")[0]!["text"], "undefined");

  assert.equal((await fetch(`${base}/contexts/${ctx.id}`, { method: "DELETE" })).status, 204);
  const gone = await fetch(`${base}/execute`, {
    method: "POST",
    body: JSON.stringify({ code: "1", context_id: ctx.id }),
  });
  assert.equal(gone.status, 404);
  assert.match(await gone.text(), /not found/);
});

test("bad requests are refused before any output", async () => {
  const both = await fetch(`${base}/execute`, {
    method: "POST",
    body: JSON.stringify({ code: "1", context_id: "abc", language: "js" }),
  });
  assert.equal(both.status, 400);
  const python = await fetch(`${base}/execute`, { method: "POST", body: JSON.stringify({ code: "1" }) });
  assert.equal(python.status, 400, "python has no kernel in this service");
  assert.match(await python.text(), /not supported/);
  const notJson = await fetch(`${base}/execute`, { method: "POST", body: "{" });
  assert.equal(notJson.status, 400);
  const badCwd = await fetch(`${base}/contexts`, {
    method: "POST",
    body: JSON.stringify({ language: "js", cwd: "/no/such/dir" }),
  });
  assert.equal(badCwd.status, 400);
  const badEnv = await fetch(`${base}/execute`, {
    method: "POST",
    body: JSON.stringify({ code: "1", language: "js", env_vars: { "A=B": "x" } }),
  });
  assert.equal(badEnv.status, 400);
});

test("a client that goes away interrupts its cell; the context stays usable", async () => {
  const ctx = (await (
    await fetch(`${base}/contexts`, { method: "POST", body: JSON.stringify(js) })
  ).json()) as { id: string };
  const abort = new AbortController();
  const res = await fetch(`${base}/execute`, {
    method: "POST",
    body: JSON.stringify({ code: "print('started'); sleep(600000)", context_id: ctx.id }),
    signal: abort.signal,
  });
  const reader = res.body!.getReader();
  let text = "";
  while (!text.includes("started")) text += new TextDecoder().decode((await reader.read()).value);
  abort.abort();
  // Without the interrupt this would wait ten minutes behind the sleep.
  const next = await execute({ code: "'free'", context_id: ctx.id });
  assert.equal(of(next, "result")[0]!["text"], "free");
});

test("a kernel that dies mid-cell ends the cell with an error and restarts with fresh state", async () => {
  const ctx = (await (
    await fetch(`${base}/contexts`, { method: "POST", body: JSON.stringify(js) })
  ).json()) as { id: string };
  await execute({ code: "z = 1", context_id: ctx.id });
  const died = await execute({ code: "process.exit(3)", context_id: ctx.id });
  assert.equal(of(died, "error")[0]!["name"], "ContextRestarting");
  assert.equal(died.at(-1)!.type, "end_of_execution");
  const after = await execute({ code: "typeof z", context_id: ctx.id });
  assert.equal(of(after, "result")[0]!["text"], "'undefined'".slice(1, -1));
});

test("keepalive lines flow while a cell is silent", async () => {
  const events = await execute({ code: "sleep(700)", ...js });
  assert.ok(of(events, "keepalive").length >= 1);
});
