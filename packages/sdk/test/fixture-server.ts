// A test fixture: an in-memory HTTP server that speaks the Firebreak REST API
// v1 contract closely enough to exercise the SDK and the CLI without VMs.
// Streams are written in small pieces with pauses, so NDJSON lines (and UTF-8
// characters) arrive split across chunks.
//
// Its "guest" understands a few commands (cmd string or argv joined by spaces):
//   echo TEXT      -> TEXT\n on stdout, exit 0
//   fail N         -> "failing\n" on stderr, exit N
//   utf8           -> "héllo ✓ wörld\n" split inside multi-byte characters
//   cat            -> stdin (from the body, or the stdin endpoint until eof)
//   sleep          -> runs until signalled (exit 137, error "killed")
//   env NAME       -> value of NAME from the sandbox's and the command's envVars
import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";

export const ADMIN_KEY = `fb_${"a".repeat(64)}`;
export const OTHER_TENANT_KEY = `fb_${"b".repeat(64)}`;

interface Key {
  id: string;
  name: string;
  key: string;
  tenantId: string;
  scopes: string[];
  createdAt: string;
  revoked: boolean;
}

interface Proc {
  pid: number;
  cmd: string;
  stdin: string;
  stdinClosed: boolean;
  onStdin: (() => void) | undefined;
  killed: boolean;
  kill: ((signal: string) => void) | undefined;
}

export interface FixtureSandbox {
  id: string;
  tenantId: string;
  template: string;
  state: string;
  vcpus: number;
  memoryMib: number;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  envdAccessToken: string;
  createdAt: string;
  readyAt: string;
  endedAt?: string;
  endReason?: string;
  timeoutAt: string;
  startPath: string;
  timings: { totalMs: number; phases: Record<string, number> };
  parentId?: string;
  rootId: string;
  files: Map<string, Uint8Array>;
  procs: Map<number, Proc>;
  nextPid: number;
}

export interface Fixture {
  url: string;
  sandboxes: Map<string, FixtureSandbox>;
  /** Every request seen: method, path with query, headers. */
  requests: { method: string; url: string; headers: http.IncomingHttpHeaders; body: string }[];
  /** Answer the next request matching `match` with this error (once). */
  failNext(match: RegExp, status: number, code: string, message: string): void;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => new Date().toISOString();

export async function startFixture(): Promise<Fixture> {
  const sandboxes = new Map<string, FixtureSandbox>();
  const keys = new Map<string, Key>([
    [
      ADMIN_KEY,
      {
        id: "key_admin",
        name: "admin",
        key: ADMIN_KEY,
        tenantId: "t_default",
        scopes: ["admin"],
        createdAt: now(),
        revoked: false,
      },
    ],
    [
      OTHER_TENANT_KEY,
      {
        id: "key_other",
        name: "other",
        key: OTHER_TENANT_KEY,
        tenantId: "t_other",
        scopes: ["sandboxes"],
        createdAt: now(),
        revoked: false,
      },
    ],
  ]);
  const requests: Fixture["requests"] = [];
  const failures: { match: RegExp; status: number; code: string; message: string }[] = [];
  let seq = 0;

  const server = http.createServer(async (req, res) => {
    const requestId = `req_${++seq}`;
    res.setHeader("x-request-id", requestId);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    requests.push({
      method: req.method ?? "",
      url: req.url ?? "",
      headers: req.headers,
      body: raw.toString(),
    });
    const fail = (status: number, code: string, message: string) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code, message, requestId } }));
    };
    const json = (status: number, value: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(value));
    };
    try {
      const u = new URL(req.url ?? "/", "http://fixture");
      const f = failures.findIndex((x) => x.match.test(`${req.method} ${u.pathname}`));
      if (f >= 0) {
        const [x] = failures.splice(f, 1);
        return fail(x!.status, x!.code, x!.message);
      }
      if (u.pathname === "/v1/health") return json(200, { ok: true, accelerator: "tcg", node: {} });
      const auth = req.headers.authorization?.replace(/^Bearer /, "") ?? req.headers["x-api-key"];
      const key = typeof auth === "string" ? keys.get(auth) : undefined;
      if (!key || key.revoked) return fail(401, "UNAUTHENTICATED", "missing or invalid API key; pass one");
      let body: Record<string, unknown> = {};
      if ((req.headers["content-type"] ?? "").startsWith("application/json") && raw.length) {
        try {
          body = JSON.parse(raw.toString());
        } catch {
          return fail(400, "VALIDATION_FAILED", "the body is not JSON");
        }
      }
      const parts = u.pathname.split("/").filter(Boolean).map(decodeURIComponent);
      const m = req.method;
      // /v1/sandboxes...
      if (parts[0] === "v1" && parts[1] === "sandboxes") {
        if (parts.length === 2 && m === "POST") {
          const template = (body["template"] as string | undefined) ?? "base";
          if (template !== "base") {
            return fail(404, "TEMPLATE_NOT_FOUND", `no template named ${template}; build it first`);
          }
          for (const k of Object.keys(body)) {
            if (!["template", "vcpus", "memoryMib", "timeoutMs", "envVars", "metadata"].includes(k)) {
              return fail(400, "VALIDATION_FAILED", `unknown field ${k}`);
            }
          }
          const id = `sb${randomBytes(6).toString("hex")}`;
          const token = req.headers["x-firebreak-sandbox-token"];
          const parent = [...sandboxes.values()].find((s) => s.envdAccessToken === token);
          const sb: FixtureSandbox = {
            id,
            tenantId: key.tenantId,
            template,
            state: "running",
            vcpus: (body["vcpus"] as number | undefined) ?? 1,
            memoryMib: (body["memoryMib"] as number | undefined) ?? 256,
            metadata: (body["metadata"] as Record<string, string> | undefined) ?? {},
            envVars: (body["envVars"] as Record<string, string> | undefined) ?? {},
            envdAccessToken: `tok_${id}`,
            createdAt: new Date(Date.now() + seq).toISOString(),
            readyAt: now(),
            timeoutAt: new Date(
              Date.now() + ((body["timeoutMs"] as number | undefined) ?? 300_000),
            ).toISOString(),
            startPath: "snapshot",
            timings: { totalMs: 512, phases: { restore: 400, ready: 112 } },
            ...(parent ? { parentId: parent.id } : {}),
            rootId: parent ? parent.rootId : id,
            files: new Map(),
            procs: new Map(),
            nextPid: 100,
          };
          sandboxes.set(id, sb);
          return json(201, view(sb, true));
        }
        if (parts.length === 2 && m === "GET") {
          const states = u.searchParams.getAll("state");
          const meta = u.searchParams.getAll("metadata").map((x) => x.split(":"));
          const limit = Number(u.searchParams.get("limit") ?? 50);
          const start = Number(u.searchParams.get("cursor") ?? 0);
          const all = [...sandboxes.values()]
            .filter((s) => s.tenantId === key.tenantId)
            .filter((s) => !states.length || states.includes(s.state))
            .filter((s) => meta.every(([k, v]) => s.metadata[k!] === v))
            .sort((a, b) => b.createdAt.localeCompare(a.createdAt));
          const page = all.slice(start, start + limit);
          const next = start + limit < all.length ? String(start + limit) : null;
          return json(200, { sandboxes: page.map((s) => view(s, false)), nextCursor: next });
        }
        const sb = sandboxes.get(parts[2] ?? "");
        if (!sb || sb.tenantId !== key.tenantId || (sb.state === "killed" && m !== "GET")) {
          return fail(404, "NOT_FOUND", `no sandbox ${parts[2]}; list yours with GET /v1/sandboxes`);
        }
        const rest = parts.slice(3).join("/");
        if (rest === "" && m === "GET") return json(200, view(sb, true));
        if (rest === "" && m === "DELETE") {
          sb.state = "killed";
          sb.endedAt = now();
          sb.endReason = "killed by API";
          for (const p of sb.procs.values()) {
            p.killed = true;
            p.kill?.("SIGKILL");
          }
          res.writeHead(204).end();
          return;
        }
        if (rest === "timeout" && m === "POST") {
          sb.timeoutAt = new Date(Date.now() + (body["timeoutMs"] as number)).toISOString();
          res.writeHead(204).end();
          return;
        }
        if ((rest === "pause" || rest === "resume") && m === "POST") {
          const want = rest === "pause" ? "running" : "paused";
          if (sb.state !== want) return fail(409, "CONFLICT", `sandbox ${sb.id} is ${sb.state}, not ${want}`);
          sb.state = rest === "pause" ? "paused" : "running";
          return json(200, view(sb, false));
        }
        if (rest === "fork" && m === "POST") {
          const out: FixtureSandbox[] = [];
          for (let i = 0; i < (body["count"] as number); i++) {
            const id = `sb${randomBytes(6).toString("hex")}`;
            const child = {
              ...sb,
              id,
              envdAccessToken: `tok_${id}`,
              parentId: sb.id,
              files: new Map(sb.files),
              procs: new Map(),
            };
            sandboxes.set(id, child);
            out.push(child);
          }
          return json(201, { sandboxes: out.map((s) => view(s, true)) });
        }
        if (rest === "events" && m === "GET") {
          return json(200, { events: [{ at: sb.createdAt, type: "created", detail: { path: "snapshot" } }] });
        }
        if (rest === "logs" && m === "GET") {
          const q = new URL(req.url ?? "/", "http://x").searchParams;
          const text = q.get("source") === "start" ? "server up\n" : "booted\nagent ready\n";
          res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
          return void res.end(text.slice(Number(q.get("offset") ?? 0)));
        }
        if (rest === "commands" && m === "GET") {
          return json(200, {
            commands: [...sb.procs.values()].map((p) => ({ pid: p.pid, cmd: p.cmd, args: [] })),
          });
        }
        if (rest === "commands" && m === "POST") return runCommand(sb, body, res);
        const sig = /^commands\/(\d+)\/(signal|stdin)$/.exec(rest);
        if (sig && m === "POST") {
          const p = sb.procs.get(Number(sig[1]));
          if (!p) return fail(404, "NOT_FOUND", `no command ${sig[1]} running`);
          if (sig[2] === "signal") {
            p.killed = true;
            p.kill?.(body["signal"] as string);
          } else {
            p.stdin += Buffer.from(body["data"] as string, "base64").toString();
            if (body["eof"]) p.stdinClosed = true;
            p.onStdin?.();
          }
          res.writeHead(204).end();
          return;
        }
        const path = u.searchParams.get("path") ?? "";
        if (rest === "files" && m === "GET") {
          const data = sb.files.get(path);
          if (!data) return fail(404, "NOT_FOUND", `no file ${path}`);
          res.writeHead(200, { "content-type": "application/octet-stream" });
          res.end(data);
          return;
        }
        if (rest === "files" && m === "PUT") {
          sb.files.set(path, new Uint8Array(raw));
          return json(200, { path, bytes: raw.length });
        }
        if (rest === "files" && m === "DELETE") {
          if (!sb.files.delete(path)) return fail(404, "NOT_FOUND", `no file ${path}`);
          res.writeHead(204).end();
          return;
        }
        if (rest === "files/stat" && m === "GET") {
          const data = sb.files.get(path);
          if (!data) return fail(404, "NOT_FOUND", `no file ${path}`);
          return json(200, entry(path, data));
        }
        if (rest === "files/list" && m === "GET") {
          const dir = path.endsWith("/") ? path : `${path}/`;
          return json(200, {
            entries: [...sb.files].filter(([p]) => p.startsWith(dir)).map(([p, d]) => entry(p, d)),
          });
        }
        if (rest === "files/move" && m === "POST") {
          const data = sb.files.get(body["from"] as string);
          if (!data) return fail(404, "NOT_FOUND", `no file ${body["from"]}`);
          sb.files.delete(body["from"] as string);
          sb.files.set(body["to"] as string, data);
          return json(200, entry(body["to"] as string, data));
        }
        if (rest === "files/mkdir" && m === "POST") {
          return json(201, { ...entry(body["path"] as string, new Uint8Array()), type: "dir" });
        }
      }
      if (u.pathname === "/v1/templates" && m === "GET") {
        return json(200, {
          templates: [
            {
              name: "base",
              key: "k".repeat(64),
              builtAt: now(),
              imageBytes: 1 << 30,
              packages: ["python3=3.11.2-1+b1"],
            },
          ],
        });
      }
      if (u.pathname === "/v1/templates" && m === "POST") {
        if (!key.scopes.includes("admin"))
          return fail(403, "FORBIDDEN", "building templates needs the admin scope");
        res.writeHead(200, { "content-type": "application/x-ndjson" });
        const name = (body["name"] as string | undefined) ?? (body["spec"] as { name: string }).name;
        if (name === "broken") {
          await writeSplit(res, { type: "progress", step: "debootstrap", index: 1, total: 2 });
          await writeSplit(res, {
            type: "error",
            error: { code: "TEMPLATE_BUILD_FAILED", message: "step 1 exited 3" },
          });
          res.end();
          return;
        }
        for (let i = 1; i <= 3; i++) {
          await writeSplit(res, { type: "progress", step: `step ${i}`, index: i, total: 3 });
          await writeSplit(res, {
            type: "progress",
            step: `step ${i}`,
            index: i,
            total: 3,
            detail: "working",
          });
        }
        await writeSplit(res, {
          type: "done",
          template: {
            name,
            key: "k".repeat(64),
            builtAt: now(),
            imageBytes: 1 << 30,
            packages: ["python3=3.11.2-1+b1"],
          },
        });
        res.end();
        return;
      }
      if (parts[0] === "v1" && parts[1] === "templates" && parts[2] && m === "DELETE") {
        if (parts[2] !== "base") return fail(404, "TEMPLATE_NOT_FOUND", `no template ${parts[2]}`);
        res.writeHead(204).end();
        return;
      }
      if (u.pathname === "/v1/keys" && m === "POST") {
        const k: Key = {
          id: `key_${randomBytes(4).toString("hex")}`,
          name: body["name"] as string,
          key: `fb_${randomBytes(32).toString("hex")}`,
          tenantId: (body["tenantId"] as string | undefined) ?? key.tenantId,
          scopes: (body["scopes"] as string[] | undefined) ?? ["sandboxes"],
          createdAt: now(),
          revoked: false,
        };
        keys.set(k.key, k);
        const { revoked: _, ...out } = k;
        return json(201, out);
      }
      if (u.pathname === "/v1/keys" && m === "GET") {
        return json(200, {
          keys: [...keys.values()]
            .filter((k) => k.tenantId === key.tenantId && !k.revoked)
            .map(({ key: _, revoked: __, ...k }) => k),
        });
      }
      if (parts[0] === "v1" && parts[1] === "keys" && parts[2] && m === "DELETE") {
        const k = [...keys.values()].find(
          (x) => x.id === parts[2] && x.tenantId === key.tenantId && !x.revoked,
        );
        if (!k) return fail(404, "NOT_FOUND", `no key ${parts[2]}`);
        k.revoked = true;
        res.writeHead(204).end();
        return;
      }
      if (u.pathname === "/v1/usage" && m === "GET") {
        const by = u.searchParams.get("groupBy") ?? "tenant";
        const groups = new Map<string, number>();
        for (const s of sandboxes.values()) {
          if (s.tenantId !== key.tenantId) continue;
          const k =
            by === "template"
              ? s.template
              : by === "root"
                ? s.rootId
                : by.startsWith("metadata.")
                  ? (s.metadata[by.slice(9)] ?? "")
                  : s.tenantId;
          groups.set(k, (groups.get(k) ?? 0) + 1);
        }
        return json(200, {
          groups: [...groups].map(([k, n]) => ({
            key: k,
            sandboxes: n,
            lifetimeSeconds: 10 * n,
            cpuSeconds: 1.5 * n,
            memoryGibSeconds: 2.5 * n,
            peakMemoryMib: 200,
          })),
        });
      }
      if (u.pathname === "/v1/usage/records" && m === "GET") {
        return json(200, { records: [] });
      }
      return fail(404, "NOT_FOUND", `no route ${m} ${u.pathname}`);
    } catch (e) {
      if (!res.headersSent) fail(500, "INTERNAL", "internal error");
      else res.destroy(e as Error);
    }
  });

  async function runCommand(sb: FixtureSandbox, body: Record<string, unknown>, res: http.ServerResponse) {
    const line = typeof body["cmd"] === "string" ? body["cmd"] : (body["argv"] as string[]).join(" ");
    const [prog, ...args] = line.split(" ");
    const pid = sb.nextPid++;
    const p: Proc = {
      pid,
      cmd: line,
      stdin: (body["stdin"] as string | undefined) ?? "",
      stdinClosed: body["stdin"] !== undefined,
      onStdin: undefined,
      killed: false,
      kill: undefined,
    };
    sb.procs.set(pid, p);
    res.writeHead(200, { "content-type": "application/x-ndjson" });
    const out = (type: "stdout" | "stderr", data: Uint8Array | string) =>
      writeSplit(res, { type, data: Buffer.from(data).toString("base64") });
    await writeSplit(res, { type: "start", pid });
    let exitCode = 0;
    let error: string | undefined;
    switch (prog) {
      case "echo":
        await out("stdout", `${args.join(" ")}\n`);
        break;
      case "fail":
        await out("stderr", "failing\n");
        exitCode = Number(args[0]);
        break;
      case "utf8": {
        const b = Buffer.from("héllo ✓ wörld\n");
        await out("stdout", b.subarray(0, 2)); // inside "é"
        await out("stdout", b.subarray(2, 9)); // inside "✓"
        await out("stdout", b.subarray(9));
        break;
      }
      case "env":
        await out("stdout", `${{ ...sb.envVars, ...(body["envVars"] as object) }[args[0] as never] ?? ""}\n`);
        break;
      case "cat":
        while (!p.stdinClosed) await new Promise<void>((r) => (p.onStdin = r));
        await out("stdout", p.stdin);
        break;
      case "sleep":
        await new Promise<void>((r) => {
          p.kill = () => r();
          if (p.killed) r();
        });
        exitCode = 137;
        error = "killed";
        break;
      default:
        await out("stderr", `${prog}: command not found\n`);
        exitCode = 127;
    }
    sb.procs.delete(pid);
    await writeSplit(res, { type: "end", exitCode, ...(error ? { error } : {}) });
    res.end();
  }

  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    sandboxes,
    requests,
    failNext(match, status, code, message) {
      failures.push({ match, status, code, message });
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function view(sb: FixtureSandbox, withToken: boolean) {
  const { files: _f, procs: _p, nextPid: _n, envVars: _e, envdAccessToken, ...rest } = sb;
  return withToken ? { ...rest, envdAccessToken } : rest;
}

function entry(path: string, data: Uint8Array) {
  return {
    name: path.split("/").pop(),
    path,
    type: "file",
    size: data.length,
    mode: 0o644,
    modifiedAt: new Date().toISOString(),
  };
}

/** Writes one NDJSON line in three pieces with pauses, so readers see it split. */
async function writeSplit(res: http.ServerResponse, value: unknown): Promise<void> {
  const line = Buffer.from(`${JSON.stringify(value)}\n`);
  const a = Math.floor(line.length / 3);
  const b = Math.floor((2 * line.length) / 3);
  for (const piece of [line.subarray(0, a), line.subarray(a, b), line.subarray(b)]) {
    if (piece.length) res.write(piece);
    await sleep(2);
  }
}
