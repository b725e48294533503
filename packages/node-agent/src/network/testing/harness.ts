// Helpers for the root-only network tests. Every namespace, link and process
// made here is registered for cleanup by the caller (t.after).
// Traffic only ever goes to loopback or to namespaces the tests created.
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig, paths } from "../../config.ts";
import { run, start } from "../../host/exec.ts";
import { processStartTime } from "../../sandbox/reconciler.ts";

export const PROBE = fileURLToPath(new URL("./net-probe.ts", import.meta.url));
export const isRoot = process.getuid?.() === 0;

/** Short lowercase alnum suffix, unique per run. */
export function uniq(): string {
  return randomBytes(4).toString("hex").slice(0, 6);
}

/** A slot in the top quarter of the default pool, unlikely to meet a real sandbox. */
export function randomSlot(): number {
  return 24_576 + Math.floor(Math.random() * 8_000);
}

export async function addNetns(name: string): Promise<string> {
  await run("ip", ["netns", "add", name]);
  return `/run/netns/${name}`;
}

export async function delNetns(name: string): Promise<void> {
  await run("ip", ["netns", "del", name], { allowFailure: true });
}

export function netnsPath(name: string): string {
  return `/run/netns/${name}`;
}

/** Starts the echo server inside a namespace; resolves once it listens. */
export async function startEchoServer(
  netns: string,
  host: string,
  port: number,
  name: string,
): Promise<ChildProcess> {
  const child = start(
    "nsenter",
    [`--net=${netnsPath(netns)}`, process.execPath, PROBE, "server", host, String(port), name],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  await new Promise<void>((resolve, reject) => {
    let err = "";
    const timer = setTimeout(() => reject(new Error(`echo server ${name} did not start: ${err}`)), 10_000);
    child.stderr?.on("data", (d: Buffer) => {
      err += d;
    });
    child.stdout?.on("data", (d: Buffer) => {
      if (d.toString().includes("ready")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`echo server ${name} exited (${code}): ${err}`));
    });
  });
  return child;
}

export interface Target {
  host: string;
  port: number;
  localAddress?: string;
}

/** Connection attempts from inside a namespace, all in one process. */
export async function probeFrom(netns: string, targets: Target[], timeoutMs = 500): Promise<string[]> {
  const res = await run("nsenter", [
    `--net=${netnsPath(netns)}`,
    process.execPath,
    PROBE,
    "connect",
    String(timeoutMs),
    JSON.stringify(targets),
  ]);
  return JSON.parse(res.stdout) as string[];
}

/** A connection attempt from this process (root namespace). */
export function probeHere(target: Target, timeoutMs = 1_000): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect({ host: target.host, port: target.port });
    const done = (r: string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done("timeout"), timeoutMs);
    sock.on("connect", () => sock.write("ping"));
    sock.on("data", (d) => done(`connected ${d}`));
    sock.on("error", (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
  });
}

/** Packets counted by a named counter of the sandbox's nft table. */
export async function nftCounter(netns: string, counter: string): Promise<number> {
  const res = await run("nsenter", [
    `--net=${netnsPath(netns)}`,
    "nft",
    "-j",
    "list",
    "counter",
    "inet",
    "firebreak",
    counter,
  ]);
  const json = JSON.parse(res.stdout) as { nftables: { counter?: { packets: number } }[] };
  const entry = json.nftables.find((e) => e.counter);
  if (!entry?.counter) throw new Error(`counter ${counter} not found in ${netns}`);
  return entry.counter.packets;
}

export function stop(child: ChildProcess | undefined): void {
  if (child && child.exitCode === null && child.pid) child.kill("SIGKILL");
}

/**
 * Writes an owner record naming this process for a test network, so the
 * reconciler of another Firebreak process on the host (a test suite running
 * beside this one) does not remove its fb-* namespace and veth as orphans.
 * Returns the function that removes the record.
 */
export async function holdOwner(sandboxId: string, slot: number): Promise<() => Promise<void>> {
  const dir = paths.ownersDir(loadConfig());
  const file = path.join(dir, `${sandboxId}.json`);
  await mkdir(dir, { recursive: true });
  await writeFile(
    file,
    JSON.stringify({
      id: sandboxId,
      ownerPid: process.pid,
      ownerStartTime: await processStartTime(process.pid),
      stateDir: "/nonexistent/firebreak-network-tests",
      createdAt: new Date().toISOString(),
      template: "stand-in",
      slot,
    }),
  );
  return () => rm(file, { force: true });
}
