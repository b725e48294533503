// The reconciler: after a crash, a killed node or an interrupted CLI, it finds
// every resource whose owner is gone and removes it.
//
// Ownership is host-wide: before a sandbox creates anything, its owner record
// (sandbox id -> owning process, by pid and start time so a reused pid does not
// count, and the state dir) is written to <runDir>/owners/<id>.json, and it is
// removed last at teardown. A resource named after a sandbox id (QEMU "fb-<id>",
// namespace "fb-<id>", veth fbh-<slot> aliased to it, cgroup "fb-<id>", slot
// claim, state dir entry) whose owner record is missing or dead is an orphan.
// INVARIANT: resources are listed before owner records are read, so a sandbox
// created meanwhile (record first, resources after) is never mistaken for one.
import fs from "node:fs/promises";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import { writeFileAtomic } from "../host/safe-fs.ts";
import { listSandboxCgroups, SandboxCgroup } from "../jail/cgroup.ts";
import { destroySandboxNetwork, listNetworkResources, NETNS_PREFIX } from "../network/index.ts";
import { ForkPointGroups, layersDir } from "./fork-points.ts";
import { MAX_SLOTS, type SlotRegistry } from "./slots.ts";

export interface SandboxRecord {
  id: string;
  ownerPid: number;
  ownerStartTime: number | undefined;
  stateDir: string;
  createdAt: string;
  template: string;
  slot?: number;
  qemuPid?: number;
}

/** A paused sandbox holds no host-global resource, only files: it survives its owner. */
export const PAUSED_FILE = "paused.json";

export interface ReconcileReport {
  removed: string[];
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await writeFileAtomic(file, JSON.stringify(value), 0o644);
}

/** Writes the sandbox's record to its directory and to the host-wide owner registry. */
export async function writeRecord(config: NodeConfig, dir: string, record: SandboxRecord): Promise<void> {
  await fs.mkdir(paths.ownersDir(config), { recursive: true });
  await writeJsonAtomic(path.join(paths.ownersDir(config), `${record.id}.json`), record);
  await writeJsonAtomic(path.join(dir, "state.json"), record);
}

export async function removeOwner(config: NodeConfig, id: string): Promise<void> {
  await fs.rm(path.join(paths.ownersDir(config), `${id}.json`), { force: true });
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, "utf8")) as T;
  } catch {
    return undefined;
  }
}

export async function processStartTime(pid: number): Promise<number | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
  } catch {
    return undefined;
  }
}

async function ownerAlive(r: SandboxRecord): Promise<boolean> {
  const st = await processStartTime(r.ownerPid);
  return st !== undefined && (r.ownerStartTime === undefined || st === r.ownerStartTime);
}

/**
 * QEMU processes named fb-<id> in this PID namespace: id -> pid.
 * INVARIANT: a QEMU in another PID namespace (a container or chroot on this
 * host running its own Firebreak, with its own run dir) is never ours to
 * judge: its owner records are not in our run dir, and the pids in them would
 * mean nothing here. Our own QEMUs share our PID namespace (fb-launch makes no
 * new one).
 */
async function qemuProcesses(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const ownPidNs = await fs.readlink("/proc/self/ns/pid").catch(() => undefined);
  for (const e of await fs.readdir("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const cmdline = await fs.readFile(`/proc/${e}/cmdline`, "utf8").catch(() => "");
    if (!cmdline.startsWith("qemu-system")) continue;
    const pidNs = await fs.readlink(`/proc/${e}/ns/pid`).catch(() => undefined);
    if (ownPidNs !== undefined && pidNs !== ownPidNs) continue;
    const m = /\0-name\0fb-([a-z0-9]{1,20}),/.exec(cmdline);
    if (m?.[1]) out.set(m[1], Number(e));
  }
  return out;
}

async function killAndWait(pid: number): Promise<void> {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return;
  }
  for (let i = 0; i < 100; i++) {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    if (!stat || /\) Z /.test(stat)) return; // gone, or a zombie of a dead parent
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Removes everything on this host that belongs to no live owner. `live` lists
 * sandbox ids owned by the calling process (never touched).
 */
export async function reconcile(
  config: NodeConfig,
  slots: SlotRegistry,
  live: ReadonlySet<string>,
): Promise<ReconcileReport> {
  // 1. Everything that exists now.
  const qemus = await qemuProcesses();
  const net = await listNetworkResources();
  const cgroups = await listSandboxCgroups();
  const slotOwners = await slots.list();
  const ownDirs = await fs.readdir(paths.sandboxesDir(config)).catch(() => [] as string[]);

  // 2. Then who owns what (records are written before any resource exists).
  const records = new Map<string, SandboxRecord>();
  for (const f of await fs.readdir(paths.ownersDir(config)).catch(() => [] as string[])) {
    if (!f.endsWith(".json")) continue;
    const r = await readJson<SandboxRecord>(path.join(paths.ownersDir(config), f));
    if (r) records.set(f.slice(0, -5), r);
  }
  const aliveCache = new Map<string, boolean>();
  const isAlive = async (id: string): Promise<boolean> => {
    if (live.has(id)) return true;
    let v = aliveCache.get(id);
    if (v === undefined) {
      const r = records.get(id);
      v = r ? await ownerAlive(r) : false;
      aliveCache.set(id, v);
    }
    return v;
  };

  const orphans = new Set<string>();
  for (const id of qemus.keys()) if (!(await isAlive(id))) orphans.add(id);
  for (const ns of net.namespaces) {
    const id = ns.slice(NETNS_PREFIX.length);
    if (!(await isAlive(id))) orphans.add(id);
  }
  for (const cg of cgroups) {
    const id = cg.replace(/^fb-/, "");
    if (!(await isAlive(id))) orphans.add(id);
  }
  for (const id of records.keys()) if (!(await isAlive(id))) orphans.add(id);
  for (const id of ownDirs) {
    if (await isAlive(id)) continue;
    // A paused sandbox whose owner died is adopted by the next runtime, not removed
    // (unless it still holds resources: then it died mid-pause and is cleaned).
    const paused = await fs.access(path.join(paths.sandboxesDir(config), id, PAUSED_FILE)).then(
      () => true,
      () => false,
    );
    if (paused && !qemus.has(id) && !net.namespaces.includes(`${NETNS_PREFIX}${id}`)) continue;
    orphans.add(id);
  }
  for (const owner of slotOwners.values()) if (owner && !(await isAlive(owner))) orphans.add(owner);

  const removed: string[] = [];
  for (const id of orphans) {
    const rec = records.get(id);
    const pid = qemus.get(id);
    // A QEMU its dead owner froze (idle) must be thawed to die.
    if (pid) await (await SandboxCgroup.open(`fb-${id}`)).freeze(false).catch(() => {});
    if (pid) await killAndWait(pid);
    const slot = rec?.slot ?? [...slotOwners].find(([, owner]) => owner === id)?.[0];
    // An unknown slot names no veth: only the namespace goes here; a veth left
    // without its namespace is handled below.
    await destroySandboxNetwork({ sandboxId: id, slot: slot ?? MAX_SLOTS }).catch(() => {});
    await (await SandboxCgroup.open(`fb-${id}`)).destroy().catch(() => {});
    for (const stateDir of new Set([config.stateDir, rec?.stateDir].filter(Boolean) as string[])) {
      await fs.rm(path.join(stateDir, "sandboxes", id), { recursive: true, force: true });
    }
    if (slot !== undefined) await slots.release(slot);
    await removeOwner(config, id);
    removed.push(`sandbox ${id}${pid ? ` (qemu ${pid})` : ""}`);
  }

  // Veths whose namespace is gone, and slot claims with no owner id written.
  for (const veth of net.hostVeths) {
    const alias = net.hostVethOwners[veth];
    const id = alias?.startsWith(NETNS_PREFIX) ? alias.slice(NETNS_PREFIX.length) : undefined;
    if (id && (await isAlive(id))) continue;
    if (id && !orphans.has(id) && net.namespaces.includes(alias!)) continue;
    await destroySandboxNetwork({ sandboxId: id ?? "orphan", slot: Number(veth.replace(/^\D+/, "")) }).catch(
      () => {},
    );
    removed.push(`veth ${veth}`);
  }
  for (const [slot, owner] of slotOwners) {
    if (owner) continue;
    const st = await fs.stat(path.join(slots.dir, String(slot))).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > 30_000) {
      await slots.release(slot);
      removed.push(`slot ${slot}`);
    }
  }
  removed.push(...(await releaseUnusedLayers(config)));
  return { removed };
}

/**
 * Fork points (frozen memory + disk shared by a parent and its children, see
 * fork-points.ts) are removed once nothing uses them: no sandbox directory
 * that used them remains, no named snapshot keeps them (`named`), and no
 * other kept fork point is built on them (`@<id>` markers). Their host-wide
 * group claims go with them.
 */
export async function releaseUnusedLayers(
  config: NodeConfig,
  drop?: { layer: string; user: string },
): Promise<string[]> {
  const base = layersDir(config);
  if (drop) await fs.rm(path.join(base, drop.layer, "users", drop.user), { force: true });
  const removed: string[] = [];
  const exists = (p: string) =>
    fs.access(p).then(
      () => true,
      () => false,
    );
  // Passes until nothing more goes: removing a named snapshot's layer can free
  // the earlier layers its chain kept.
  for (let pass = 0; pass < 8; pass++) {
    let changed = false;
    for (const layer of await fs.readdir(base).catch(() => [] as string[])) {
      if (layer.startsWith(".")) continue;
      const dir = path.join(base, layer);
      let inUse = await exists(path.join(dir, "named"));
      for (const u of await fs.readdir(path.join(dir, "users")).catch(() => [] as string[])) {
        const alive = u.startsWith("@")
          ? await exists(path.join(base, u.slice(1)))
          : await exists(path.join(paths.sandboxesDir(config), u));
        if (alive) inUse = true;
        else await fs.rm(path.join(dir, "users", u), { force: true });
      }
      // A freeze writes the parent's marker right after creating the layer, so a
      // layer without markers has no users left.
      if (!inUse) {
        await fs.rm(dir, { recursive: true, force: true });
        removed.push(`layer ${layer}`);
        changed = true;
      }
    }
    if (!changed) break;
  }
  removed.push(...(await new ForkPointGroups(config).releaseOrphans()));
  return removed;
}
