// Shared helpers for the control plane's integration tests (real microVMs).
// They reuse the node suite's test state dir (/var/lib/firebreak-test) and its
// leak checks; the base template and its snapshot are built there by
// scripts/test.sh (`firebreak template build base`) before these run.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { paths } from "../../node-agent/src/index.ts";
import {
  config,
  leftovers,
  listDir,
  qemuProcesses,
  STATE_DIR,
  waitFor,
} from "../../node-agent/test/helpers.ts";
import { type RunningServer, startServer } from "../src/index.ts";
import { ApiClient } from "../src/testing/api-client.ts";

export {
  assertNoLeftovers,
  isRoot,
  STATE_DIR,
  skipUnlessRoot,
  sleep,
  waitFor,
} from "../../node-agent/test/helpers.ts";

export const ADMIN_KEY = `fb_${randomBytes(32).toString("hex")}`;
/**
 * This test process's own database: other suites (and other engineers' runs)
 * may run a control plane on the same test state dir at the same time.
 */
export const DB_FILE = path.join(mkdtempSync(path.join(os.tmpdir(), "fb-cp-test-")), "control-plane.db");
const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));

/** The control plane in this process, on a free port, with an admin client. */
export async function server(cfg: Parameters<typeof startServer>[0] = {}): Promise<{
  srv: RunningServer;
  admin: ApiClient;
}> {
  const srv = await startServer({
    listen: "127.0.0.1:0",
    stateDir: STATE_DIR,
    adminKey: ADMIN_KEY,
    dbFile: DB_FILE,
    logLevel: process.env["FIREBREAK_TEST_LOG"] ? "debug" : "warn",
    ...cfg,
  });
  const admin = await new ApiClient(srv.url, fetch, ADMIN_KEY).init();
  const templates = (await admin.get("/v1/templates")).json.templates as { name: string }[];
  if (!templates.some((t) => t.name === "base")) {
    const build = await admin.post("/v1/templates", { name: "base" });
    assert.equal(build.json.at(-1).type, "done", `building base failed: ${build.text}`);
  }
  return { srv, admin };
}

/** A new tenant and a client with a sandboxes key for it. */
export async function tenant(admin: ApiClient, limits: Record<string, number> = {}) {
  const t = await admin.post("/v1/tenants", { name: `t-${randomBytes(4).toString("hex")}`, limits });
  assert.equal(t.status, 201, t.text);
  const k = await admin.post("/v1/keys", { name: "test", tenantId: t.json.id, scopes: ["sandboxes"] });
  assert.equal(k.status, 201, k.text);
  return { tenantId: t.json.id as string, key: k.json.key as string, api: admin.withKey(k.json.key) };
}

/** Decoded stdout/stderr and exit code of an NDJSON command stream. */
export function commandOutput(lines: { type: string; data?: string; exitCode?: number }[]) {
  let stdout = "";
  let stderr = "";
  let exitCode: number | undefined;
  for (const l of lines) {
    if (l.type === "stdout") stdout += Buffer.from(l.data!, "base64").toString();
    if (l.type === "stderr") stderr += Buffer.from(l.data!, "base64").toString();
    if (l.type === "end") exitCode = l.exitCode;
  }
  return { stdout, stderr, exitCode };
}

/** The node's ids of our sandboxes (for leak checks). */
export async function nodeIds(srv: RunningServer, ids: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const id of ids) {
    const n = (await srv.store.getSandbox(id))?.nodeSandboxId;
    if (n) out.push(n);
  }
  return out;
}

/** A control plane in a child process (so it can be SIGKILLed). */
export class ServerProcess {
  child: ChildProcess | undefined;
  url = "";
  output = "";
  /** Extra environment for the child (settings such as FIREBREAK_VCPU_OVERCOMMIT). */
  readonly #env: Record<string, string>;

  constructor(env: Record<string, string> = {}) {
    this.#env = env;
  }

  async start(): Promise<void> {
    const child = spawn(
      process.execPath,
      [MAIN, "--listen", "127.0.0.1:0", "--state-dir", STATE_DIR, "--db", DB_FILE],
      {
        env: {
          ...process.env,
          FIREBREAK_ADMIN_KEY: ADMIN_KEY,
          FIREBREAK_LOG_LEVEL: process.env["FIREBREAK_TEST_LOG"] ? "debug" : "warn",
          FIREBREAK_USAGE_INTERVAL_MS: "500",
          ...this.#env,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    this.child = child;
    child.stdout!.on("data", (b: Buffer) => {
      this.output += b.toString();
    });
    child.stderr!.on("data", (b: Buffer) => {
      this.output += b.toString();
      if (process.env["FIREBREAK_TEST_LOG"]) process.stderr.write(b);
    });
    this.url = await waitFor(
      "the control plane child to listen",
      () => {
        if (child.exitCode !== null) throw new Error(`server exited ${child.exitCode}:\n${this.output}`);
        return /listening on (http:\S+)/.exec(this.output)?.[1];
      },
      60_000,
    );
  }

  kill9(): Promise<void> {
    const child = this.child!;
    return new Promise((r) => {
      if (child.exitCode !== null || child.signalCode !== null) return r();
      child.once("exit", () => r());
      child.kill("SIGKILL");
    });
  }

  stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((r) => {
      child.once("exit", () => r());
      child.kill("SIGTERM");
    });
  }
}

/**
 * fb-* resources on the host without a live owner that belong to the test
 * state dir (or to nobody): QEMU processes, namespaces, cgroups, owner
 * records. Other Firebreak processes' live sandboxes are not counted.
 */
export async function orphans(): Promise<string[]> {
  const records = new Map<string, { ownerPid: number; ownerStartTime?: number; stateDir?: string }>();
  for (const f of await listDir(paths.ownersDir(config))) {
    if (!f.endsWith(".json")) continue;
    const r = JSON.parse(
      await fs.readFile(path.join(paths.ownersDir(config), f), "utf8").catch(() => "null"),
    );
    if (r) records.set(f.slice(0, -5), r);
  }
  const alive = async (id: string) => {
    const r = records.get(id);
    if (!r) return false;
    const stat = await fs.readFile(`/proc/${r.ownerPid}/stat`, "utf8").catch(() => "");
    if (!stat) return false;
    const start = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
    return r.ownerStartTime === undefined || start === r.ownerStartTime;
  };
  const ids = new Set<string>();
  for (const id of (await qemuProcesses()).keys()) ids.add(id);
  for (const ns of await listDir("/run/netns")) if (ns.startsWith("fb-")) ids.add(ns.slice(3));
  for (const [id, r] of records) if (r.stateDir === STATE_DIR) ids.add(id);
  const out: string[] = [];
  for (const id of ids) {
    if (await alive(id)) continue;
    // Another test process's sandbox mid-teardown is not ours: only report
    // what the test state dir owns, or what nobody owns.
    const r = records.get(id);
    if (r && r.stateDir && r.stateDir !== STATE_DIR) continue;
    const found = await leftovers(id);
    // A paused sandbox keeps its directory (and nothing host-global).
    const global = found.filter((f) => !f.startsWith("state dir"));
    if (global.length) out.push(...global);
  }
  return out;
}

export function pausedDirExists(nodeId: string): boolean {
  return existsSync(path.join(paths.sandboxesDir(config), nodeId, "paused.json"));
}
