// Test support: a stand-in sandbox for job tests over the fake node. Each
// sandbox gets a real guest-agent-shaped server on loopback (Connect JSON:
// process.Process Start/SendSignal, filesystem.Filesystem MakeDir/Stat/ListDir;
// REST /files GET and POST) whose commands run as host processes in a
// temporary home of their own. Killing the sandbox kills its processes, as a
// VM's end would. JobsFakeNode is a FakeNode whose sandboxes are these.
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Filesystem, filesystemPb, Process } from "@firebreak/protocol";
import type { NodeCreateRequest, NodeSandboxInfo, UsageSample } from "../../node/node-client.ts";
import { FakeNode } from "../../testing/fake-node.ts";

type Event =
  | { case: "start"; value: { pid: number } }
  | { case: "data"; value: { output: { case: "stdout" | "stderr"; value: Uint8Array } } }
  | { case: "end"; value: { exitCode: number; exited: boolean; status: string } };

/** Kills a command and everything it started (its process group). */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    child.kill("SIGKILL"); // the group is gone already
  }
}

export class ProcessGuest {
  readonly home: string;
  readonly server: http.Server;
  port = 0;
  readonly #children = new Set<ChildProcess>();
  /** Commands started (argv), in order. */
  readonly started: string[][] = [];

  constructor() {
    this.home = fs.mkdtempSync(path.join(os.tmpdir(), "fb-job-guest-"));
    const resolve = (p: string) => (p.startsWith("/") ? p : path.join(this.home, p));
    const entry = (abs: string) => {
      const st = fs.lstatSync(abs);
      return {
        name: path.basename(abs),
        path: abs,
        type: st.isDirectory()
          ? filesystemPb.FileType.DIRECTORY
          : st.isSymbolicLink()
            ? filesystemPb.FileType.SYMLINK
            : filesystemPb.FileType.FILE,
        size: BigInt(st.size),
        mode: st.mode & 0o7777,
      };
    };
    const notFound = (p: string) => new ConnectError(`no such file or directory: ${p}`, Code.NotFound);
    const rpc = connectNodeAdapter({
      connect: true,
      grpc: false,
      grpcWeb: false,
      routes: (router) => {
        router.service(Process, {
          start: (req, ctx) => this.#start(req.process!, ctx.signal, resolve),
          sendSignal: async (req) => {
            for (const c of this.#children) if (c.pid === req.process?.selector.value) killGroup(c);
            return {};
          },
        });
        router.service(Filesystem, {
          makeDir: async (req) => {
            const abs = resolve(req.path);
            fs.mkdirSync(abs, { recursive: true });
            return { entry: entry(abs) };
          },
          stat: async (req) => {
            const abs = resolve(req.path);
            if (!fs.existsSync(abs)) throw notFound(abs);
            return { entry: entry(abs) };
          },
          listDir: async (req) => {
            const abs = resolve(req.path);
            if (!fs.existsSync(abs)) throw notFound(abs);
            const out: ReturnType<typeof entry>[] = [];
            const walk = (dir: string, depth: number) => {
              for (const name of fs.readdirSync(dir).sort()) {
                const p = path.join(dir, name);
                out.push(entry(p));
                if (depth > 1 && fs.statSync(p).isDirectory()) walk(p, depth - 1);
              }
            };
            walk(abs, req.depth || 1);
            return { entries: out };
          },
        });
      },
    });
    this.server = http.createServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://guest");
      if (url.pathname !== "/files") return rpc(req, res);
      const abs = resolve(url.searchParams.get("path") ?? "");
      if (req.method === "GET") {
        if (!fs.existsSync(abs) || !fs.statSync(abs).isFile()) {
          res.writeHead(404, { "content-type": "application/json" }).end('{"message":"not found"}');
          return;
        }
        res.writeHead(200, { "content-type": "application/octet-stream" });
        fs.createReadStream(abs).pipe(res);
        return;
      }
      fs.mkdirSync(path.dirname(abs), { recursive: true });
      const out = fs.createWriteStream(abs);
      req.pipe(out);
      out.on("finish", () => {
        res
          .writeHead(200, { "content-type": "application/json" })
          .end(JSON.stringify([{ path: abs, name: path.basename(abs), type: "file" }]));
      });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", () => r()));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async *#start(
    cfg: { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string | undefined },
    signal: AbortSignal,
    resolve: (p: string) => string,
  ): AsyncGenerator<{ event: { event: Event } }> {
    const cwd = resolve(cfg.cwd ?? "");
    if (!fs.existsSync(cwd)) throw new ConnectError(`cwd '${cwd}' does not exist`, Code.InvalidArgument);
    this.started.push([cfg.cmd, ...cfg.args]);
    const child = spawn(cfg.cmd, cfg.args, {
      cwd,
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: this.home, ...cfg.envs },
      stdio: ["ignore", "pipe", "pipe"],
      // A process group of its own: a kill ends the command's children too, as a VM's end would.
      detached: true,
    });
    this.#children.add(child);
    const queue: Event[] = [];
    let wake: (() => void) | undefined;
    const push = (e: Event) => {
      queue.push(e);
      wake?.();
    };
    child.stdout!.on("data", (b: Buffer) =>
      push({ case: "data", value: { output: { case: "stdout", value: b } } }),
    );
    child.stderr!.on("data", (b: Buffer) =>
      push({ case: "data", value: { output: { case: "stderr", value: b } } }),
    );
    const closed = new Promise<void>((r) => child.once("close", () => r()));
    child.once("close", (code, sig) => {
      this.#children.delete(child);
      push({
        case: "end",
        value:
          code !== null
            ? { exitCode: code, exited: true, status: `exit status ${code}` }
            : {
                exitCode: -1,
                exited: false,
                status: `signal: ${sig === "SIGKILL" ? "killed" : "terminated"}`,
              },
      });
    });
    const onAbort = () => killGroup(child);
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      yield { event: { event: { case: "start", value: { pid: child.pid ?? 0 } } } };
      for (;;) {
        while (queue.length) {
          const e = queue.shift()!;
          yield { event: { event: e } };
          if (e.case === "end") return;
        }
        await new Promise<void>((r) => {
          wake = r;
        });
        wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      if (child.exitCode === null && child.signalCode === null) killGroup(child);
      await closed;
    }
  }

  /** The sandbox ends: its processes are killed, its files removed. */
  async stop(): Promise<void> {
    for (const c of this.#children) killGroup(c);
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
    fs.rmSync(this.home, { recursive: true, force: true });
  }
}

/** A FakeNode whose every sandbox is a ProcessGuest. */
export class JobsFakeNode extends FakeNode {
  readonly processGuests = new Map<string, ProcessGuest>();
  /** Sandboxes ever created. */
  created = 0;

  override async create(
    req: NodeCreateRequest | { template: string; envVars?: Record<string, string> },
  ): Promise<NodeSandboxInfo> {
    const info = await super.create(req);
    const g = new ProcessGuest();
    await g.listen();
    this.processGuests.set(info.id, g);
    this.guests.set(info.id, { address: "127.0.0.1", envdPort: g.port });
    this.created++;
    return info;
  }

  override async kill(id: string): Promise<UsageSample | undefined> {
    const s = await super.kill(id);
    const g = this.processGuests.get(id);
    this.processGuests.delete(id);
    this.guests.delete(id);
    await g?.stop();
    return s;
  }

  /** Sandboxes alive on this node now. */
  get live(): number {
    return this.processGuests.size;
  }

  override async close(): Promise<void> {
    for (const id of [...this.processGuests.keys()]) await this.kill(id);
    await super.close();
  }
}
