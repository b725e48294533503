// A small fleet on one machine for the multi-node tests and the placement
// benchmark: a private PostgreSQL, control-plane replicas (`firebreak up
// --no-local-node`) sharing it, and node daemons (`firebreak node --join`),
// each in its own network namespace with its own state dir and sandbox
// address range, reached by the replicas over TLS-PSK.
//
// Node state dirs are seeded with hard links of the suite's test state dir
// (kernel, initramfs, accelerator probe, the jailer; and for the nodes asked
// to, the base template's image and snapshot), so no node downloads or
// debootstraps anything; a node left without the template gets it the way a
// real fleet does: copied from another node by the control plane.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { run } from "../../node-agent/src/host/exec.ts";
import { STATE_DIR, waitFor } from "../../node-agent/test/helpers.ts";
import { ApiClient } from "../src/testing/api-client.ts";
import { startPostgres, type TestPostgres } from "../src/testing/postgres.ts";
import { ADMIN_KEY } from "./helpers.ts";

const CLI = fileURLToPath(new URL("../../cli/src/main.ts", import.meta.url));
const tag = String(process.pid % 10_000);

export interface FleetNode {
  id: string;
  ns: string;
  hostAddress: string;
  address: string;
  stateDir: string;
  proc: ChildProcess | undefined;
  /** Its namespace, veth and seeded state dir. */
  prepare(): Promise<void>;
  /** Starts (or restarts) the daemon; `join` with a token the first time. */
  start(join?: { url: string; token: string }): Promise<void>;
  /** SIGKILL: no cleanup at all. */
  kill(): Promise<void>;
  stop(): Promise<void>;
}

export interface Replica {
  url: string;
  proc: ChildProcess;
  api: ApiClient;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export interface Fleet {
  pg: TestPostgres;
  database: string;
  replicas: Replica[];
  nodes: FleetNode[];
  close(): Promise<void>;
}

function lines(proc: ChildProcess, onLine: (l: string) => void): void {
  if (proc.stdout) createInterface({ input: proc.stdout }).on("line", onLine);
  if (proc.stderr)
    createInterface({ input: proc.stderr }).on("line", (l) => {
      if (process.env["FIREBREAK_TEST_LOG"]) process.stderr.write(`[${proc.pid}] ${l}\n`);
    });
}

async function exited(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  await new Promise<void>((r) => proc.once("exit", () => r()));
}

/** Hard-links `rel` from the suite's state dir into `dest` (same file system). */
async function linkFrom(dest: string, rel: string): Promise<void> {
  const src = path.join(STATE_DIR, rel);
  if (!existsSync(src)) return;
  await fs.mkdir(path.dirname(path.join(dest, rel)), { recursive: true });
  await run("cp", ["-al", src, path.join(dest, rel)]);
}

async function seed(stateDir: string, withTemplate: boolean): Promise<void> {
  await fs.rm(stateDir, { recursive: true, force: true });
  await fs.mkdir(stateDir, { recursive: true, mode: 0o755 });
  for (const rel of ["kernel", "initramfs", "accel.json", "cache/host"]) await linkFrom(stateDir, rel);
  if (!withTemplate) return;
  const tagFile = JSON.parse(await fs.readFile(path.join(STATE_DIR, "templates", "base.json"), "utf8")) as {
    key: string;
  };
  await linkFrom(stateDir, path.join("images", tagFile.key));
  await linkFrom(stateDir, path.join("templates", "base.json"));
  for (const s of await fs.readdir(path.join(STATE_DIR, "snapshots")).catch(() => [] as string[])) {
    if (s.startsWith(".")) continue;
    const m = await fs
      .readFile(path.join(STATE_DIR, "snapshots", s, "manifest.json"), "utf8")
      .catch(() => "");
    if (m.includes(tagFile.key)) await linkFrom(stateDir, path.join("snapshots", s));
  }
}

function fleetNode(k: number, withTemplate: boolean): FleetNode {
  const ns = `fbmn${tag}n${k}`;
  const veth = `mnh${tag}${k}`.slice(0, 15);
  const hostAddress = `10.219.${k}.1`;
  const nodeAddress = `10.219.${k}.2`;
  const stateDir = `${STATE_DIR}-mn${k}`;
  const node: FleetNode = {
    id: `mn${tag}-${k}`,
    ns,
    hostAddress,
    address: `https://${nodeAddress}:7070`,
    stateDir,
    proc: undefined,
    async prepare() {
      if (!existsSync(`/run/netns/${ns}`)) {
        await seed(stateDir, withTemplate);
        await run("ip", ["netns", "add", ns]);
        await run("ip", ["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns]);
        await run("ip", ["addr", "add", `${hostAddress}/24`, "dev", veth]);
        await run("ip", ["link", "set", veth, "up"]);
        const inNs = (args: string[]) => run("ip", ["-n", ns, ...args]);
        await inNs(["link", "set", "lo", "up"]);
        await inNs(["addr", "add", `${nodeAddress}/24`, "dev", "eth0"]);
        await inNs(["link", "set", "eth0", "up"]);
        await inNs(["route", "add", "default", "via", hostAddress]);
      }
    },
    async start(join) {
      // nsenter, not `ip netns exec`: that also remounts /sys for the
      // namespace, which hides the cgroup v1 hierarchies under
      // /sys/fs/cgroup (the node then spins on mkdir of its cgroup forever).
      const args = [
        `--net=/run/netns/${ns}`,
        process.execPath,
        CLI,
        "node",
        "--listen",
        `${nodeAddress}:7070`,
        "--state-dir",
        stateDir,
        "--node-id",
        node.id,
        ...(join ? ["--join", join.url, "--token", join.token] : []),
      ];
      const proc = spawn("nsenter", args, {
        env: {
          ...process.env,
          FIREBREAK_STATE_DIR: stateDir,
          // Each node its own sandbox address range.
          FIREBREAK_HOST_POOL: `10.${230 + k}.0.0/16`,
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      node.proc = proc;
      const ready = new Promise<void>((resolve, reject) => {
        lines(proc, (l) => {
          if (join ? l.startsWith("joined ") : l.includes(" listening on ")) resolve();
        });
        proc.once("exit", (code) =>
          reject(new Error(`node ${node.id} exited (${code}) before it was ready`)),
        );
      });
      await ready;
    },
    async kill() {
      node.proc?.kill("SIGKILL");
      if (node.proc) await exited(node.proc);
    },
    async stop() {
      if (node.proc && node.proc.exitCode === null && node.proc.signalCode === null) {
        node.proc.kill("SIGTERM");
        await exited(node.proc);
      }
    },
  };
  return node;
}

async function startReplica(database: string, cpDir: string, env: Record<string, string>): Promise<Replica> {
  const proc = spawn(
    process.execPath,
    [CLI, "up", "--no-local-node", "--database", database, "--listen", "10.219.1.1:0", "--state-dir", cpDir],
    {
      env: { ...process.env, FIREBREAK_ADMIN_KEY: ADMIN_KEY, FIREBREAK_WARM_POOL: "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    lines(proc, (l) => {
      const m = /listening on (http:\/\/\S+)/.exec(l);
      if (m) resolve(m[1]!);
    });
    proc.once("exit", (code) => reject(new Error(`replica exited (${code}) before it listened`)));
  });
  const api = await new ApiClient(url, fetch, ADMIN_KEY).init();
  return {
    url,
    proc,
    api,
    async kill(signal = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill(signal);
        await exited(proc);
      }
    },
  };
}

/**
 * Starts the fleet. `seeded`: how many nodes start with the base template
 * (the others receive it from the control plane).
 */
/**
 * Removes what a fleet of a test process that is gone left behind (it was
 * killed before its close): node daemons still running in its namespaces
 * (orphans: their parent is gone), the namespaces, their host veths. Their
 * addresses (10.219.k.1) would otherwise shadow this fleet's, and its nodes
 * could not reach the replicas. A namespace whose daemons still have their
 * parent belongs to a live fleet and is left alone.
 */
async function sweepDeadFleets(): Promise<void> {
  const list = await run("ip", ["netns", "list"], { allowFailure: true });
  for (const line of list.stdout.split("\n")) {
    const ns = /^(fbmn\d+n\d+)\b/.exec(line)?.[1];
    if (!ns) continue;
    const pids = (await run("ip", ["netns", "pids", ns], { allowFailure: true })).stdout
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
    const owned = await Promise.all(pids.map(async (pid) => (await parentOf(pid)) > 1));
    if (owned.includes(true)) continue; // a live fleet's
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await run("ip", ["netns", "del", ns], { allowFailure: true });
  }
}

/** The parent pid of a process (0 when it is gone). */
async function parentOf(pid: number): Promise<number> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return 0;
  }
}

export async function startFleet(opts: {
  nodes: number;
  replicas: number;
  seeded: number;
  env?: Record<string, string>;
  /** More environment per replica (by index), e.g. FIREBREAK_PLACEMENT=random for one of them. */
  replicaEnv?: Record<string, string>[];
}): Promise<Fleet> {
  await sweepDeadFleets();
  const pg = await startPostgres();
  const database = await pg.createDatabase();
  const cpDir = await fs.mkdtemp(`${STATE_DIR}-mncp-`);
  const nodes = Array.from({ length: opts.nodes }, (_, i) => fleetNode(i + 1, i < opts.seeded));
  const replicas: Replica[] = [];
  const fleet: Fleet = {
    pg,
    database,
    replicas,
    nodes,
    async close() {
      await Promise.all(replicas.map((r) => r.kill()));
      await Promise.all(nodes.map((n) => n.stop()));
      for (const n of nodes) {
        await run("ip", ["netns", "del", n.ns], { allowFailure: true });
        await run("ip", ["link", "del", `mnh${tag}${nodes.indexOf(n) + 1}`.slice(0, 15)], {
          allowFailure: true,
        });
        await fs.rm(n.stateDir, { recursive: true, force: true });
      }
      await fs.rm(cpDir, { recursive: true, force: true });
      await pg.stop();
    },
  };
  try {
    const env = {
      FIREBREAK_NODE_LEASE_MS: "6000",
      FIREBREAK_LEASE_TTL_MS: "3000",
      FIREBREAK_LOG_LEVEL: process.env["FIREBREAK_TEST_LOG"] ? "debug" : "warn",
      ...opts.env,
    };
    // The first node's veth carries the replicas' listening address.
    for (const n of nodes) await n.prepare();
    for (let i = 0; i < opts.replicas; i++)
      replicas.push(await startReplica(database, cpDir, { ...env, ...opts.replicaEnv?.[i] }));
    for (const n of nodes) {
      const t = await replicas[0]!.api.post("/v1/nodes/join-tokens", {});
      assert.equal(t.status, 201, t.text);
      await n.start({ url: replicas[0]!.url, token: t.json.token });
    }
    await waitFor(
      "every node to report to the control plane",
      async () => {
        const list = (await replicas[0]!.api.get("/v1/nodes")).json.nodes as {
          state: string;
          vcpus?: number;
        }[];
        return list.length === nodes.length && list.every((n) => n.state === "active" && n.vcpus);
      },
      60_000,
    );
    return fleet;
  } catch (e) {
    await fleet.close();
    throw e;
  }
}
