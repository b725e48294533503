// One sandbox on this node: its identity, what it holds in each state, and
// the cleanups of what it holds. NodeRuntime is the only writer of its state
// (sandbox/node-runtime.ts, `#set`), always by a transition the table in
// state.ts allows.
import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { FirebreakError } from "../errors.ts";
import type { SandboxCgroup } from "../jail/cgroup.ts";
import type { SandboxNetwork } from "../network/index.ts";
import type { DiskLayer, QemuVm } from "../vmm/qemu-vm.ts";
import { type EnvdClient, envdClient } from "./envd-client.ts";
import { newAccessToken } from "./ids.ts";
import type { SandboxRecord } from "./reconciler.ts";
import { ByteRing } from "./sandbox-logs.ts";
import type { SandboxState } from "./state.ts";

/** A built template image as the runtime needs it. */
export interface TemplateImage {
  name: string;
  /** Content address of the image; snapshots and warm pools need it. */
  key?: string | undefined;
  /** Read-only root image (raw ext4). */
  imagePath: string;
  env: Record<string, string>;
  user: string;
  workdir?: string | undefined;
  start?: string | undefined;
  ready?: string | undefined;
  /** How long `ready` may take after a cold boot. @default 60_000 */
  readyTimeoutMs?: number | undefined;
  /** The template's own default shape (else DEFAULT_SHAPE). */
  shape?: Shape | undefined;
}

export interface Shape {
  vcpus: number;
  memoryMib: number;
}

export type StartPath = "warm" | "snapshot" | "cold";

export interface StartTimings {
  /** warm: claimed from a pool; snapshot: restored; cold: booted. */
  path: StartPath;
  /** From the create call until the sandbox is usable. */
  totalMs: number;
  /** Each phase in ms, in order (network, disk, cgroup, spawn, boot|restore, init, ...). */
  phases: Record<string, number>;
  /** Guest uptime when the agent reported ready (cold boots). */
  guestUptimeMs?: number;
  /** Why a faster path was not taken, when one should have been. */
  fallback?: string;
}

/**
 * Whose the sandbox's resources are: a tenant's (charged from hand-over), or
 * the platform's (overhead: a warm pool VM until claimed, the VM that makes
 * a template's snapshot, a template build's VM).
 */
export type SandboxAccount = "tenant" | "warm_pool" | "snapshot_prepare" | "template_build";

/** What a sandbox holds while its VM runs. `vm` is replaced when a fork restarts it. */
export interface LiveResources {
  slot: number;
  network: SandboxNetwork;
  cgroup: SandboxCgroup;
  vm: QemuVm;
}

/**
 * A sandbox's state with exactly what that state holds: a running sandbox
 * has its live resources (no optional fields behind `!`); a starting or
 * resuming one has them once its VM is up; a paused one only files.
 */
export type Held =
  | { state: "starting" | "resuming"; live?: LiveResources }
  | { state: "standby" | "warm" | "running" | "pausing"; live: LiveResources }
  /** memory: its RAM was saved (a resume restores); false: only its disk (a resume cold-boots). */
  | { state: "paused"; memory: boolean }
  | { state: "stopping"; reason: string }
  | { state: "stopped" | "failed" | "crashed"; reason: string };

/** The runtime's key to a sandbox's state (module-private by convention: only node-runtime.ts imports it). */
export const SET_HELD: unique symbol = Symbol("setHeld");

export interface ExecOptions {
  user?: string;
  cwd?: string;
  env?: Record<string, string>;
  /** Data written to the command's stdin, then closed. */
  stdin?: AsyncIterable<Uint8Array> | Uint8Array;
  onStdout?: (b: Uint8Array) => void;
  onStderr?: (b: Uint8Array) => void;
  signal?: AbortSignal;
}

export class Sandbox {
  readonly id: string;
  readonly template: TemplateImage;
  readonly shape: Shape;
  readonly dir: string;
  readonly createdAt: Date;
  #held: Held = { state: "starting" };
  timings: StartTimings | undefined;
  accessToken: string;
  /** Env given at create (kept for resume and fork, which re-initialise the guest). */
  envVars: Record<string, string> = {};
  /** Fork layers this sandbox's disk and memory chain uses (stateDir/layers/<id>). */
  layers: string[] = [];
  /** The root disk chain QEMU gets as descriptors, base image first, own layer last. */
  disk: DiskLayer[] = [];
  /** The on-disk record (state.json and the host-wide owner registry). */
  record: SandboxRecord | undefined;
  /** Started for a warm pool and not claimed yet: not a user's sandbox. */
  pooled = false;
  /** Whose its resources are (see SandboxAccount). */
  account: SandboxAccount = "tenant";
  /**
   * Handed to its tenant (the node service set it when it reported the
   * hand-over counters): what its cgroup used before is overhead, after is
   * the tenant's. A tenant sandbox torn down before that is a failed start.
   */
  handedOver = false;
  /** The control plane's id for it (logs, traces). */
  platformId: string | undefined;
  /** Output of the template's start command (bounded). */
  readonly startOutput = new ByteRing();
  /** How long each part of its teardown took (ms), once torn down. */
  teardownPhases: Record<string, number> = {};
  /** Phases of its last pause, resume or fork (ms, in order). */
  lastPhases: Record<string, number> = {};
  /** Set by the runtime: tears the sandbox down (warm pool discards). */
  discard: (() => void) | undefined;
  /**
   * Cleanups of what lives only while the VM runs: slot, network, egress,
   * cgroup, VM (undone last-in first-out by pause, kill, and every failure).
   */
  liveStack = new AsyncDisposableStack();
  /** Cleanups of what lives as long as the sandbox: its directory and fork-layer uses. */
  readonly filesStack = new AsyncDisposableStack();
  /** A pause detaches egress but keeps the policy for the resume. */
  keepPolicy = false;
  /**
   * The cgroup its QEMU is frozen in (idle; NodeRuntime thaws it on the next
   * request and before anything that needs QEMU to answer or to die).
   */
  frozenIn: SandboxCgroup | undefined;
  get frozen(): boolean {
    return this.frozenIn !== undefined;
  }
  /** When it last used CPU or had a connection open (ms epoch), and its cgroup's CPU then. */
  lastBusyAt = Date.now();
  lastCpuNanos = -1;
  lastCpuAt = 0;
  /** Told of every use of its guest agent (NodeRuntime: the idle freezer's clock, and a thaw). */
  onUse: (() => void) | undefined;
  /** Freezes and thaws, in order (NodeRuntime). */
  freezeChain: Promise<void> = Promise.resolve();
  /** Fired by a kill while the sandbox is starting or resuming. */
  readonly abort = new AbortController();
  /** Settles when every resource of this sandbox is gone. */
  readonly torndown: Promise<void>;
  resolveTorndown!: () => void;
  #clients = new Map<string, EnvdClient>();

  /** `initial`: where a sandbox begins (starting, or paused when adopted from disk). */
  constructor(
    id: string,
    template: TemplateImage,
    shape: Shape,
    dir: string,
    opts: { createdAt?: Date; initial?: { state: "starting" } | { state: "paused"; memory: boolean } } = {},
  ) {
    const createdAt = opts.createdAt ?? new Date();
    this.#held = opts.initial ?? { state: "starting" };
    this.id = id;
    this.template = template;
    this.shape = shape;
    this.dir = dir;
    this.createdAt = createdAt;
    this.accessToken = newAccessToken();
    this.torndown = new Promise((r) => {
      this.resolveTorndown = r;
    });
  }

  get state(): SandboxState {
    return this.#held.state;
  }

  get held(): Held {
    return this.#held;
  }

  /** Only NodeRuntime sets the state, through its transition check. */
  [SET_HELD](next: Held): void {
    this.#held = next;
  }

  /** The live resources, when the state has them. */
  get live(): LiveResources | undefined {
    return "live" in this.#held ? this.#held.live : undefined;
  }

  /** Why it ended (or is ending). */
  get endReason(): string | undefined {
    return "reason" in this.#held ? this.#held.reason : undefined;
  }

  // Views of the live resources (read-only; the state holds them).
  get vm(): QemuVm | undefined {
    return this.live?.vm;
  }
  get network(): SandboxNetwork | undefined {
    return this.live?.network;
  }
  get cgroup(): SandboxCgroup | undefined {
    return this.live?.cgroup;
  }
  get slot(): number | undefined {
    return this.live?.slot;
  }

  /** The live resources, or SANDBOX_STATE_INVALID naming the state. */
  requireLive(): LiveResources {
    const live = this.live;
    if (!live) throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${this.id} is ${this.state}`);
    return live;
  }

  /** Forgets cached clients (their token changed). */
  resetClients(): void {
    for (const c of this.#clients.values()) c.close();
    this.#clients.clear();
  }

  /** A client for the guest agent, acting as `user` (default: the template's user). */
  envd(user?: string): EnvdClient {
    const { network } = this.requireLive();
    this.onUse?.();
    const key = user ?? "";
    let c = this.#clients.get(key);
    if (!c) {
      c = envdClient(network.sandboxAddress, this.accessToken, user);
      this.#clients.set(key, c);
    }
    return c;
  }

  /**
   * Runs a command in the guest (argv, no shell) and streams its output.
   * Resolves with the exit code; a command killed by a signal gives 128+n.
   */
  async exec(argv: string[], opts: ExecOptions = {}): Promise<{ exitCode: number; pid: number }> {
    if (this.state !== "running" && this.state !== "starting" && this.state !== "warm") {
      throw new FirebreakError("SANDBOX_STATE_INVALID", `sandbox ${this.id} is ${this.state}`);
    }
    const [cmd, ...args] = argv;
    if (!cmd) throw new FirebreakError("INTERNAL", "exec needs a command");
    const client = this.envd(opts.user);
    const tag = `exec-${randomBytes(6).toString("hex")}`;
    const stream = client.process.start(
      {
        process: { cmd, args, envs: opts.env ?? {}, ...(opts.cwd ? { cwd: opts.cwd } : {}) },
        stdin: opts.stdin !== undefined,
        tag,
      },
      { ...(opts.signal ? { signal: opts.signal } : {}) },
    );
    let pid = -1;
    let stdinDone: Promise<void> | undefined;
    for await (const res of stream) {
      const ev = res.event?.event;
      if (!ev) continue;
      if (ev.case === "start") {
        pid = ev.value.pid;
        if (opts.stdin !== undefined) stdinDone = this.#feedStdin(client, pid, opts.stdin);
      } else if (ev.case === "data") {
        const out = ev.value.output;
        if (out.case === "stdout") opts.onStdout?.(out.value);
        else if (out.case === "stderr") opts.onStderr?.(out.value);
        else if (out.case === "pty") opts.onStdout?.(out.value);
      } else if (ev.case === "end") {
        await stdinDone?.catch(() => {});
        return { exitCode: exitCodeOf(ev.value), pid };
      }
    }
    throw new FirebreakError("AGENT_ERROR", `the agent closed the stream of ${cmd} without an end event`);
  }

  async #feedStdin(
    client: EnvdClient,
    pid: number,
    input: AsyncIterable<Uint8Array> | Uint8Array,
  ): Promise<void> {
    const selector = { selector: { case: "pid" as const, value: pid } };
    const chunks = input instanceof Uint8Array ? [input] : input;
    try {
      for await (const chunk of chunks) {
        await client.process.sendInput({
          process: selector,
          input: { input: { case: "stdin", value: chunk } },
        });
      }
      await client.process.closeStdin({ process: selector });
    } catch (e) {
      // The process may have exited before reading all input.
      if (!(e instanceof ConnectError && e.code === Code.NotFound)) throw e;
    }
  }
}

function exitCodeOf(end: { exitCode: number; exited: boolean; status: string }): number {
  if (end.exited) return end.exitCode;
  const m = /signal: (\w+)/.exec(end.status);
  const signals: Record<string, number> = { hangup: 1, interrupt: 2, killed: 9, terminated: 15 };
  return 128 + (signals[m?.[1] ?? ""] ?? 9);
}
