/**
 * Test harness: runs the guest agent as a plain Linux process on loopback, with a
 * unix-socket control channel, a private passwd/group file (so "user" is uid 65534
 * with a home under the temp dir) and a fake `date` that records its arguments.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { GuestToHostMessage, HostToGuestMessage } from "@firebreak/protocol";
import { Filesystem, Process } from "@firebreak/protocol";

const MAIN = new URL("../src/main.ts", import.meta.url).pathname;
export const USER_UID = 65534;

export type Agent = {
  /** Spawn to "listening" line, in ms. */
  startupMs: number;
  /** The agent's process id. */
  pid: number;
  baseUrl: string;
  dir: string;
  home: string;
  dateLog: string;
  token: string;
  control: ControlPeer;
  /** Connect clients; `user` sets the Authorization header, `token` overrides X-Access-Token. */
  process(opts?: { user?: string; token?: string | null; binary?: boolean }): Client<typeof Process>;
  filesystem(opts?: { user?: string; token?: string | null }): Client<typeof Filesystem>;
  /** Sends init over the control channel; resolves with the reply. */
  init(overrides?: Partial<Extract<HostToGuestMessage, { type: "init" }>>): Promise<GuestToHostMessage>;
  stop(): Promise<void>;
};

/** Host side of the control channel: a unix socket server the agent connects to. */
export class ControlPeer {
  readonly server: Server;
  #socket: Socket | undefined;
  #buffer = "";
  #received: GuestToHostMessage[] = [];
  #waiters: Array<{ match: (m: GuestToHostMessage) => boolean; resolve: (m: GuestToHostMessage) => void }> =
    [];

  constructor(server: Server) {
    this.server = server;
    server.on("connection", (s) => {
      this.#socket = s;
      s.on("data", (chunk) => this.#onData(chunk));
      s.on("error", () => {});
    });
  }

  #onData(chunk: Buffer): void {
    this.#buffer += chunk.toString("utf8");
    for (let nl = this.#buffer.indexOf("\n"); nl !== -1; nl = this.#buffer.indexOf("\n")) {
      const msg = JSON.parse(this.#buffer.slice(0, nl)) as GuestToHostMessage;
      this.#buffer = this.#buffer.slice(nl + 1);
      const i = this.#waiters.findIndex((w) => w.match(msg));
      if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve(msg);
      else this.#received.push(msg);
    }
  }

  /** Resolves with the first (already received or future) message matching. */
  waitFor(match: (m: GuestToHostMessage) => boolean, timeoutMs = 10_000): Promise<GuestToHostMessage> {
    const i = this.#received.findIndex(match);
    if (i >= 0) return Promise.resolve(this.#received.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("control message timeout")), timeoutMs);
      this.#waiters.push({
        match,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
      });
    });
  }

  sendRaw(line: string): void {
    if (!this.#socket) throw new Error("agent not connected to the control socket");
    this.#socket.write(line);
  }

  async request(msg: HostToGuestMessage): Promise<GuestToHostMessage> {
    const reply = this.waitFor((m) => "id" in m && m.id === msg.id);
    this.sendRaw(JSON.stringify(msg) + "\n");
    return reply;
  }

  close(): void {
    this.#socket?.destroy();
    this.server.close();
  }
}

let nextId = 1;

export async function startAgent(
  opts: { env?: Record<string, string>; entry?: string; noControl?: boolean } = {},
): Promise<Agent> {
  const dir = await mkdtemp(join(tmpdir(), "fb-agent-test-"));
  await chmod(dir, 0o755);
  const home = join(dir, "home", "user");
  await mkdir(home, { recursive: true });
  await chmod(join(dir, "home"), 0o755);
  await chown(home, USER_UID, USER_UID);
  await writeFile(
    join(dir, "passwd"),
    `root:x:0:0:root:/root:/bin/bash\nuser:x:${USER_UID}:${USER_UID}:user:${home}:/bin/bash\n`,
  );
  await writeFile(join(dir, "group"), `root:x:0:\nusergroup:x:${USER_UID}:\n`);
  const dateLog = join(dir, "date.log");
  const fakeDate = join(dir, "fake-date.sh");
  await writeFile(fakeDate, `#!/bin/sh\necho "$@" >> '${dateLog}'\n`, { mode: 0o755 });

  const sock = join(dir, "control.sock");
  const server = createServer();
  const control = new ControlPeer(server);
  await new Promise<void>((resolve) => server.listen(sock, resolve));

  const spawnedAt = performance.now();
  const child: ChildProcess = spawn(
    process.execPath,
    [
      opts.entry ?? MAIN,
      "--port",
      "0",
      "--host",
      "127.0.0.1",
      ...(opts.noControl ? [] : ["--control-socket", sock]),
    ],
    {
      env: {
        ...process.env,
        FIREBREAK_AGENT_PASSWD: join(dir, "passwd"),
        FIREBREAK_AGENT_GROUP: join(dir, "group"),
        FIREBREAK_AGENT_DATE_BIN: fakeDate,
        ...opts.env,
      },
      stdio: ["ignore", "pipe", "inherit"],
      cwd: dir,
    },
  );
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (c: Buffer) => {
      out += c.toString();
      const m = /listening on [^:]+:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`agent exited early with ${code}`)));
  });
  const startupMs = performance.now() - spawnedAt;
  const baseUrl = `http://127.0.0.1:${port}`;
  const token = randomBytes(16).toString("hex");

  const headers =
    (o: { user?: string; token?: string | null; timeoutMs?: number }): Interceptor =>
    (next) =>
    (req) => {
      if (o.token !== null) req.header.set("X-Access-Token", o.token ?? token);
      if (o.user) req.header.set("Authorization", `Basic ${Buffer.from(`${o.user}:`).toString("base64")}`);
      return next(req);
    };
  const transport = (o: { user?: string; token?: string | null; binary?: boolean }) =>
    createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      useBinaryFormat: o.binary,
      interceptors: [headers(o)],
    });

  const agent: Agent = {
    startupMs,
    pid: child.pid!,
    baseUrl,
    dir,
    home,
    dateLog,
    token,
    control,
    process: (o = {}) => createClient(Process, transport(o)),
    filesystem: (o = {}) => createClient(Filesystem, transport(o)),
    init: (overrides = {}) =>
      control.request({
        type: "init",
        id: nextId++,
        sandboxId: "sbx-test",
        accessToken: token,
        envVars: { FB_SANDBOX_VAR: "from-init" },
        defaultUser: "user",
        defaultWorkdir: "",
        wallClockMs: Date.now(),
        entropy: randomBytes(64).toString("base64"),
        ...overrides,
      }),
    async stop() {
      control.close();
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 3000);
        await exited;
        clearTimeout(t);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  if (!opts.noControl) await control.waitFor((m) => m.type === "ready");
  return agent;
}

export function newId(): number {
  return nextId++;
}

/** Pids of the agent's file workers (its children running the worker entry). */
export async function fileWorkerPids(agent: Agent): Promise<number[]> {
  const { readdir, readFile } = await import("node:fs/promises");
  const pids: number[] = [];
  for (const name of await readdir("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const [stat, cmdline] = await Promise.all([
      readFile(`/proc/${name}/stat`, "utf8").catch(() => ""),
      readFile(`/proc/${name}/cmdline`, "utf8").catch(() => ""),
    ]);
    // Field 4 of /proc/<pid>/stat (after the parenthesised command) is the parent pid.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    if (ppid === agent.pid && /(worker-main\.ts|fs-worker\.mjs)/.test(cmdline)) pids.push(Number(name));
  }
  return pids;
}
