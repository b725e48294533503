import { ManagedProcess, type SpawnSpec } from "./managed-process.ts";

export type Selector = { pid: number } | { tag: string };

/** Running processes by pid. A process leaves the table when it ends. */
export class ProcessTable {
  #byPid = new Map<number, ManagedProcess>();

  async start(spec: SpawnSpec): Promise<ManagedProcess> {
    const onEnded = (p: ManagedProcess) => this.#byPid.delete(p.pid);
    const proc = spec.pty
      ? await ManagedProcess.spawnPty(spec, onEnded)
      : await ManagedProcess.spawnPiped(spec, onEnded);
    if (!proc.ended) this.#byPid.set(proc.pid, proc);
    return proc;
  }

  find(sel: Selector): ManagedProcess | undefined {
    if ("pid" in sel) return this.#byPid.get(sel.pid);
    for (const p of this.#byPid.values()) if (p.tag === sel.tag) return p;
    return undefined;
  }

  list(): ManagedProcess[] {
    return [...this.#byPid.values()];
  }

  /** Kills everything (agent shutdown). */
  killAll(): void {
    for (const p of this.#byPid.values()) p.signal("SIGKILL");
  }
}
