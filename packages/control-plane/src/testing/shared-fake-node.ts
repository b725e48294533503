// Test support: a FakeNode whose sandboxes live in a directory (one JSON file
// each), so several control-plane processes reach the same node, like
// replicas reaching one node daemon. The node outlives any one of them: a
// replica killed with SIGKILL leaves its sandboxes running here.
import fs from "node:fs";
import path from "node:path";
import { FirebreakError } from "@firebreak/node-agent";
import type { NodeReport, NodeSandboxInfo, NodeSandboxStatus, UsageSample } from "../node/node-client.ts";
import { FakeNode } from "./fake-node.ts";

interface Entry {
  state: "running" | "paused";
  token: string;
  born: number;
  /** Paused without memory (the resume is cold). */
  fsOnly?: boolean;
}

export class SharedFakeNode extends FakeNode {
  readonly dir: string;
  readonly #prefix = `${process.pid}x${Math.random().toString(36).slice(2, 6)}`;

  constructor(dir: string, id = "fake") {
    super(id);
    this.dir = dir;
    fs.mkdirSync(dir, { recursive: true });
  }

  #file(id: string): string {
    if (!/^[a-z0-9x-]+$/.test(id)) throw new Error(`bad fake sandbox id ${id}`);
    return path.join(this.dir, `${id}.json`);
  }

  #read(id: string): Entry | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.#file(id), "utf8")) as Entry;
    } catch {
      return undefined;
    }
  }

  #write(id: string, e: Entry): void {
    const tmp = `${this.#file(id)}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(e));
    fs.renameSync(tmp, this.#file(id));
  }

  #ids(): string[] {
    return fs
      .readdirSync(this.dir)
      .filter((f) => f.endsWith(".json"))
      .map((f) => f.slice(0, -5));
  }

  override async report(): Promise<NodeReport> {
    const r = await super.report();
    const live = this.#ids().filter((id) => this.#read(id)?.state === "running");
    return {
      ...r,
      sandboxes: live.length,
      committedVcpus: live.length,
      committedMemoryMib: live.length * 256,
      freeMemoryMib: this.hostCapacity.memoryMib - live.length * 256,
    };
  }

  override async listSandboxes() {
    return this.#ids().map((id) => ({ id, status: this.#status(id) }));
  }

  override async create(req: Parameters<FakeNode["create"]>[0]): Promise<NodeSandboxInfo> {
    const info = await super.create(req);
    const local = this.sandboxes.get(info.id)!;
    this.sandboxes.delete(info.id);
    const id = `${this.#prefix}-${info.id}`;
    this.#write(id, { state: "running", token: local.token, born: local.born });
    return { ...info, id };
  }

  #status(id: string): NodeSandboxStatus {
    const e = this.#read(id);
    return e ? { state: e.state } : { state: "gone", reason: "gone", crashed: true };
  }

  override async status(ids: string[]): Promise<Map<string, NodeSandboxStatus>> {
    return new Map(ids.map((id) => [id, this.#status(id)]));
  }

  override async usageSample(id: string): Promise<UsageSample | undefined> {
    const e = this.#read(id);
    if (e?.state !== "running") return undefined;
    const ms = Date.now() - e.born;
    return { at: Date.now(), cpuNanos: ms * 1e5, memoryBytes: 100 * 2 ** 20, memoryPeakBytes: 100 * 2 ** 20 };
  }

  override async kill(id: string): Promise<UsageSample | undefined> {
    const s = await this.usageSample(id);
    fs.rmSync(this.#file(id), { force: true });
    return s;
  }

  override async pause(id: string, opts: { memory?: boolean } = {}): Promise<UsageSample | undefined> {
    const e = this.#read(id);
    if (!e) return super.pause(id, opts); // the same error as the fake node (SANDBOX_NOT_FOUND)
    if (e.state !== "running")
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${e.state}`);
    const s = await this.usageSample(id);
    this.#write(id, { ...e, state: "paused", ...(opts.memory === false ? { fsOnly: true } : {}) });
    return s;
  }

  override async resume(id: string) {
    const e = this.#read(id);
    if (!e) return super.resume(id);
    if (e.state !== "paused")
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${id} is ${e.state}`);
    this.#write(id, { state: "running", token: e.token, born: e.born });
    return { path: e.fsOnly ? ("cold" as const) : ("snapshot" as const), totalMs: 1 };
  }

  override async accessToken(id: string) {
    return this.#read(id)?.token;
  }

  /** The node outlives the control plane: nothing to stop. */
  override async close() {}
}
