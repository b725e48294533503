// Shared helpers for the integration suite that boots real microVMs.
//
// Tests never touch a user's state: unless FIREBREAK_STATE_DIR already names a
// directory other than the default, they use /var/lib/firebreak-test (set here,
// before any config is loaded, and passed to every CLI run). The base template
// is built there once (scripts/test.sh builds it first; buildTemplate is a fast
// cache hit afterwards).
//
// Leak checks are scoped: a sandbox counts as ours when this process created it
// or when its host-wide owner record names the test state dir. Other Firebreak
// processes on the host (other state dirs) are never asserted on or touched.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { buildAgentBundle } from "@firebreak/guest-agent";
import { run } from "../src/host/exec.ts";
import {
  type BuiltTemplate,
  buildTemplate,
  loadConfig,
  type NodeConfig,
  NodeRuntime,
  paths,
  readTemplateSpec,
  resolveSpecFile,
  type Sandbox,
} from "../src/index.ts";
import type { CreateOptions } from "../src/sandbox/node-runtime.ts";

export const DEFAULT_TEST_STATE_DIR = "/var/lib/firebreak-test";
const fromEnv = process.env["FIREBREAK_STATE_DIR"];
export const STATE_DIR =
  fromEnv && path.resolve(fromEnv) !== "/var/lib/firebreak" ? path.resolve(fromEnv) : DEFAULT_TEST_STATE_DIR;
process.env["FIREBREAK_STATE_DIR"] = STATE_DIR;

export const config: NodeConfig = loadConfig();
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const CLI = path.join(REPO_ROOT, "bin", "firebreak");
export const isRoot = process.getuid?.() === 0;
/** For describe(..., { skip }) when not root. */
export const skipUnlessRoot = isRoot ? false : "needs root (boots microVMs, creates namespaces and cgroups)";

/** Sandbox ids created by this process (for scoped leak checks). */
export const createdIds = new Set<string>();

let runtimePromise: Promise<NodeRuntime> | undefined;
/** This process's node runtime (opened once; opening reconciles dead owners' leftovers). */
export function runtime(): Promise<NodeRuntime> {
  runtimePromise ??= NodeRuntime.open(config, {
    log: (l) => {
      if (process.env["FIREBREAK_TEST_LOG"]) process.stderr.write(`firebreak: ${l}\n`);
    },
  });
  return runtimePromise;
}

/** The guest agent bundle and Node binary shipped into images. */
export async function agentInputs(): Promise<{ bundleDir: string; nodeBinary: string }> {
  const bundleDir = path.join(paths.cacheDir(config), "agent");
  await buildAgentBundle(bundleDir);
  return { bundleDir, nodeBinary: process.execPath };
}

const templates = new Map<string, Promise<BuiltTemplate>>();
/**
 * Builds (or, normally, finds in the cache) a template from a spec file or a
 * built-in name, once per process.
 */
export function template(nameOrSpec = "base"): Promise<BuiltTemplate> {
  let p = templates.get(nameOrSpec);
  if (!p) {
    p = (async () => {
      const { spec, dir } = await readTemplateSpec(await resolveSpecFile(nameOrSpec));
      return buildTemplate(config, spec, dir, { runtime, agent: await agentInputs() });
    })();
    templates.set(nameOrSpec, p);
    p.catch(() => templates.delete(nameOrSpec));
  }
  return p;
}

/** Creates a sandbox from `base` (unless another template is given) and records its id. */
export async function newSandbox(opts: Partial<CreateOptions> = {}): Promise<Sandbox> {
  const rt = await runtime();
  const sb = await rt.create({ ...opts, template: opts.template ?? (await template("base")) });
  createdIds.add(sb.id);
  return sb;
}

/** Kills a sandbox of this process's runtime (no-op when it is already gone). */
export async function killSandbox(sb: Sandbox | undefined): Promise<void> {
  if (sb) await (await runtime()).kill(sb.id, "test finished");
}

/** A sandbox for one test, killed when the test ends (pass or fail). */
export async function createSandbox(t: TestContext, opts: Partial<CreateOptions> = {}): Promise<Sandbox> {
  const sb = await newSandbox(opts);
  t.after(() => killSandbox(sb));
  return sb;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs argv in the sandbox and collects its output. */
export async function exec(
  sb: Sandbox,
  argv: string[],
  opts: Parameters<Sandbox["exec"]>[1] = {},
): Promise<ExecResult> {
  let stdout = "";
  let stderr = "";
  const { exitCode } = await sb.exec(argv, {
    ...opts,
    onStdout: (b) => {
      stdout += Buffer.from(b).toString();
      opts.onStdout?.(b);
    },
    onStderr: (b) => {
      stderr += Buffer.from(b).toString();
      opts.onStderr?.(b);
    },
  });
  return { exitCode, stdout, stderr };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T> | T,
  timeoutMs = 15_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

/** QEMU processes named fb-<id>: id -> pid. */
export async function qemuProcesses(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const e of await fs.readdir("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const cmdline = await fs.readFile(`/proc/${e}/cmdline`, "utf8").catch(() => "");
    if (!cmdline.startsWith("qemu-system")) continue;
    const stat = await fs.readFile(`/proc/${e}/stat`, "utf8").catch(() => "");
    if (/\) Z /.test(stat)) continue; // a zombie holds no resources
    const m = /\0-name\0fb-([a-z0-9]{1,20}),/.exec(cmdline);
    if (m?.[1]) out.set(m[1], Number(e));
  }
  return out;
}

/** Everything of sandbox `id` still present on the host, as readable strings. */
export async function leftovers(id: string): Promise<string[]> {
  const found: string[] = [];
  const qemu = (await qemuProcesses()).get(id);
  if (qemu) found.push(`qemu process ${qemu} (fb-${id})`);
  if (existsSync(`/run/netns/fb-${id}`)) found.push(`network namespace fb-${id}`);
  for (const link of await fs.readdir("/sys/class/net").catch(() => [] as string[])) {
    if (!link.startsWith("fbh-")) continue;
    const alias = (await fs.readFile(`/sys/class/net/${link}/ifalias`, "utf8").catch(() => "")).trim();
    if (alias === `fb-${id}`) found.push(`veth ${link} (alias fb-${id})`);
  }
  for (const ctrl of await fs.readdir("/sys/fs/cgroup").catch(() => [] as string[])) {
    const dir = path.join("/sys/fs/cgroup", ctrl, "firebreak", `fb-${id}`);
    if (existsSync(dir)) found.push(`cgroup ${dir}`);
  }
  const sandboxDir = path.join(paths.sandboxesDir(config), id);
  if (existsSync(sandboxDir)) found.push(`state dir ${sandboxDir}`);
  const owner = path.join(paths.ownersDir(config), `${id}.json`);
  if (existsSync(owner)) found.push(`owner record ${owner}`);
  for (const slot of await fs.readdir(paths.slotsDir(config)).catch(() => [] as string[])) {
    const who = (
      await fs.readFile(path.join(paths.slotsDir(config), slot, "owner"), "utf8").catch(() => "")
    ).trim();
    if (who === id) found.push(`slot claim ${path.join(paths.slotsDir(config), slot)}`);
  }
  return found;
}

/** Fails with the full list when anything of these sandboxes remains. */
export async function assertNoLeftovers(ids: Iterable<string>): Promise<void> {
  const all: string[] = [];
  for (const id of ids) all.push(...(await leftovers(id)));
  assert.deepEqual(all, [], `leftovers of finished sandboxes:\n${all.join("\n")}`);
}

export interface OwnerRecord {
  id: string;
  ownerPid: number;
  ownerStartTime?: number;
  stateDir?: string;
}

/** Host-wide owner records (runDir/owners): id -> record. */
export async function ownerRecords(): Promise<Map<string, OwnerRecord>> {
  const out = new Map<string, OwnerRecord>();
  for (const f of await fs.readdir(paths.ownersDir(config)).catch(() => [] as string[])) {
    if (!f.endsWith(".json")) continue;
    const raw = await fs.readFile(path.join(paths.ownersDir(config), f), "utf8").catch(() => "");
    try {
      out.set(f.slice(0, -5), JSON.parse(raw) as OwnerRecord);
    } catch {
      // being written
    }
  }
  return out;
}

/** Whether a process is alive (and, when given, started at `startTime`: no pid reuse). */
export async function processAlive(pid: number, startTime?: number): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  if (!stat || /\) Z /.test(stat)) return false;
  return (
    startTime === undefined || Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]) === startTime
  );
}

/**
 * Another live process owns this sandbox (someone else using the test state
 * dir at the same time, e.g. a developer's probe): not ours to judge.
 */
async function ownedByAnotherLiveProcess(rec: OwnerRecord | undefined): Promise<boolean> {
  return (
    rec !== undefined &&
    rec.ownerPid !== process.pid &&
    (await processAlive(rec.ownerPid, rec.ownerStartTime))
  );
}

/**
 * Host-wide check: nothing attributable to this process or to a dead owner in
 * the test state dir remains (owner records naming it, sandbox directories in
 * it, build staging dirs), no firewall table is in the root namespace, and
 * nothing of the given ids remains. Sandboxes of other live processes that
 * use the test state dir concurrently are skipped.
 */
export async function assertNoLeaks(ids: Iterable<string> = createdIds): Promise<void> {
  const problems: string[] = [];
  const records = await ownerRecords();
  const ours = new Set(ids);
  for (const [id, rec] of records) {
    if (rec.stateDir === STATE_DIR && !(await ownedByAnotherLiveProcess(rec))) ours.add(id);
  }
  for (const id of await fs.readdir(paths.sandboxesDir(config)).catch(() => [] as string[])) {
    // Created after the records were read: its own state.json names the owner.
    const rec =
      records.get(id) ??
      (JSON.parse(
        await fs
          .readFile(path.join(paths.sandboxesDir(config), id, "state.json"), "utf8")
          .catch(() => "null"),
      ) as OwnerRecord | null) ??
      undefined;
    if (!(await ownedByAnotherLiveProcess(rec))) ours.add(id);
  }
  for (const id of ours) problems.push(...(await leftovers(id)));
  const tables = await run("nft", ["list", "tables"], { allowFailure: true });
  if (/\bfirebreak\b/.test(tables.stdout))
    problems.push(`nftables table in the root namespace: ${tables.stdout}`);
  for (const e of await fs.readdir(paths.imagesDir(config)).catch(() => [] as string[])) {
    const m = /^\.build-(\d+)-/.exec(e);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || !(await processAlive(pid)))
      problems.push(`build staging dir ${path.join(paths.imagesDir(config), e)}`);
  }
  assert.deepEqual(problems, [], `leaks:\n${problems.join("\n")}`);
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs ./bin/firebreak with the test state dir; `prefix` wraps it (e.g. setpriv). */
export function runCli(
  args: string[],
  opts: { env?: Record<string, string>; input?: string | Buffer; prefix?: string[]; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const argv = [...(opts.prefix ?? []), CLI, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: REPO_ROOT,
      env: { ...process.env, FIREBREAK_STATE_DIR: STATE_DIR, ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString();
    });
    child.stderr.on("data", (b: Buffer) => {
      stderr += b.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 300_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
  });
}

/** Names of entries in a directory (empty when it does not exist). */
export async function listDir(dir: string): Promise<string[]> {
  return (await fs.readdir(dir).catch(() => [] as string[])).sort();
}
