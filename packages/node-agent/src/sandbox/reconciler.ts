// The reconciler: after a crash, a killed node or an interrupted CLI, it finds
// every resource whose owner is gone and removes it. Ownership: each sandbox
// directory holds state.json with the owning process (pid + start time, so a
// reused pid does not count as alive). Resources with no directory at all
// (namespaces, cgroups, QEMU processes named fb-<id>) are orphans by definition.
import fs from "node:fs/promises";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import { listSandboxCgroups, SandboxCgroup } from "../jail/cgroup.ts";
import { destroySandboxNetwork, listNetworkResources, NETNS_PREFIX } from "../network/index.ts";
import { MAX_SLOTS, type SlotRegistry } from "./slots.ts";

export interface SandboxRecord {
  id: string;
  ownerPid: number;
  ownerStartTime: number | undefined;
  createdAt: string;
  template: string;
  slot?: number;
  qemuPid?: number;
}

export interface ReconcileReport {
  removed: string[];
}

export async function writeRecord(dir: string, record: SandboxRecord): Promise<void> {
  const tmp = path.join(dir, `state.json.${process.pid}.tmp`);
  await fs.writeFile(tmp, JSON.stringify(record));
  await fs.rename(tmp, path.join(dir, "state.json"));
}

async function readRecord(dir: string): Promise<SandboxRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(path.join(dir, "state.json"), "utf8")) as SandboxRecord;
  } catch {
    return undefined;
  }
}

async function startTime(pid: number): Promise<number | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
  } catch {
    return undefined;
  }
}

async function ownerAlive(r: SandboxRecord): Promise<boolean> {
  const st = await startTime(r.ownerPid);
  return st !== undefined && (r.ownerStartTime === undefined || st === r.ownerStartTime);
}

/** QEMU processes named fb-<id>: id -> pid. */
async function qemuProcesses(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const e of await fs.readdir("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const cmdline = await fs.readFile(`/proc/${e}/cmdline`, "utf8").catch(() => "");
    if (!cmdline.startsWith("qemu-system")) continue;
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
    if ((await startTime(pid)) === undefined) return;
    const state = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    if (/\) Z /.test(state)) return; // zombie of a dead parent: gone for our purposes
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Removes everything that belongs to no live owner. `live` lists sandbox ids
 * owned by the calling process (never touched).
 */
export async function reconcile(
  config: NodeConfig,
  slots: SlotRegistry,
  live: ReadonlySet<string>,
): Promise<ReconcileReport> {
  const removed: string[] = [];
  const base = paths.sandboxesDir(config);
  const keep = new Set<string>(live);
  const qemus = await qemuProcesses();
  let dirs: string[] = [];
  try {
    dirs = await fs.readdir(base);
  } catch {
    // no sandboxes yet
  }
  for (const id of dirs) {
    if (live.has(id)) continue;
    const dir = path.join(base, id);
    const rec = await readRecord(dir);
    if (rec && (await ownerAlive(rec))) {
      keep.add(id);
      continue;
    }
    if (!rec) {
      // A directory without a record is a create that died before writing
      // one, or one being written right now: leave young ones alone.
      const st = await fs.stat(dir).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs < 30_000) {
        keep.add(id);
        continue;
      }
    }
    const pid = qemus.get(id);
    if (pid) await killAndWait(pid);
    if (rec?.slot !== undefined)
      await destroySandboxNetwork({ sandboxId: id, slot: rec.slot }).catch(() => {});
    await (await SandboxCgroup.open(`fb-${id}`)).destroy().catch(() => {});
    await fs.rm(dir, { recursive: true, force: true });
    if (rec?.slot !== undefined) await slots.release(rec.slot);
    removed.push(`sandbox ${id}`);
  }
  // QEMU processes, namespaces and cgroups with no owning sandbox directory.
  for (const [id, pid] of qemus) {
    if (keep.has(id)) continue;
    await killAndWait(pid);
    removed.push(`qemu ${pid} (fb-${id})`);
  }
  const net = await listNetworkResources();
  const slotOwners = await slots.list();
  for (const ns of net.namespaces) {
    const id = ns.slice(NETNS_PREFIX.length);
    if (keep.has(id)) continue;
    const slot = [...slotOwners].find(([, owner]) => owner === id)?.[0];
    // An unknown slot names no veth: only the namespace is removed here, and
    // its veth is handled by the loop below.
    await destroySandboxNetwork({ sandboxId: id, slot: slot ?? MAX_SLOTS }).catch(() => {});
    removed.push(`namespace ${ns}`);
  }
  for (const veth of net.hostVeths) {
    const owner = net.hostVethOwners[veth];
    const id = owner?.startsWith(NETNS_PREFIX) ? owner.slice(NETNS_PREFIX.length) : undefined;
    if (id && keep.has(id)) continue;
    const slot = Number(veth.replace(/^\D+/, ""));
    await destroySandboxNetwork({ sandboxId: id ?? "orphan", slot }).catch(() => {});
    removed.push(`veth ${veth}`);
  }
  for (const cg of await listSandboxCgroups()) {
    const id = cg.replace(/^fb-/, "");
    if (keep.has(id)) continue;
    await (await SandboxCgroup.open(cg)).destroy().catch(() => {});
    removed.push(`cgroup ${cg}`);
  }
  for (const [slot, owner] of await slots.list()) {
    if (owner && keep.has(owner)) continue;
    if (!owner) {
      const st = await fs.stat(path.join(slots.dir, String(slot))).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs < 30_000) continue;
    }
    await slots.release(slot);
    removed.push(`slot ${slot}`);
  }
  return { removed };
}
