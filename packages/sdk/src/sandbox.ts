// Sandbox: create, connect, list, and act on one sandbox; its commands and
// files live in the `commands` and `files` namespaces.
import { Code, type Execution, type RunCodeOptions } from "./code.ts";
import { Commands } from "./commands.ts";
import { type ConnectionOptions, resolveConnection } from "./connection.ts";
import { FirebreakApiError, NotFoundError } from "./errors.ts";
import { Files } from "./files.ts";
import { HttpClient } from "./http.ts";
import { cursorPaginator, type Paginator } from "./paginator.ts";
import type {
  EgressPolicy,
  NormalizedEgressPolicy,
  SandboxEvent,
  SandboxInfo,
  SandboxState,
} from "./types.ts";

export interface SandboxCreateOptions extends ConnectionOptions {
  /** Template to start from. @default "base" */
  template?: string;
  /** vCPUs. @default the template's (1 for base, 2 for code-interpreter) */
  vcpus?: number;
  /** Guest memory in MiB. @default the template's (256 for base, 1024 for code-interpreter) */
  memoryMib?: number;
  /**
   * Lifetime: the sandbox is killed this long after creation unless extended
   * with setTimeout(). @default 300_000 (5 minutes; the server caps it, 24 h by default)
   */
  timeoutMs?: number;
  /** Environment variables every command in the sandbox sees. */
  envVars?: Record<string, string>;
  /** Labels for listing and usage grouping (`Sandbox.list({ metadata })`, `usage --group-by metadata.KEY`). */
  metadata?: Record<string, string>;
  /** Egress policy (default: deny all) and sandbox networks to join. */
  network?: { policy?: EgressPolicy; networks?: string[] };
  signal?: AbortSignal;
}

export interface SandboxListOptions extends ConnectionOptions {
  /** Only sandboxes in this state (or any of these states). */
  state?: SandboxState | readonly SandboxState[];
  /** Only sandboxes whose metadata has all of these key/value pairs. */
  metadata?: Record<string, string>;
  /** Page size. @default the server's (50) */
  limit?: number;
}

const path = (id: string) => `/v1/sandboxes/${encodeURIComponent(id)}`;

/** A sandbox's egress policy. */
export class SandboxNetwork {
  readonly #http: HttpClient;
  readonly #id: string;
  /** @internal */
  constructor(http: HttpClient, id: string) {
    this.#http = http;
    this.#id = id;
  }

  /** The policy in force (normalized; the default denies everything). */
  async get(): Promise<NormalizedEgressPolicy> {
    return (await this.#http.json<{ policy: NormalizedEgressPolicy }>("GET", `${path(this.#id)}/network`))
      .policy;
  }

  /** Replaces the policy of the running sandbox; in force when this resolves (CONFLICT unless running). */
  async update(policy: EgressPolicy): Promise<NormalizedEgressPolicy> {
    const r = await this.#http.json<{ policy: NormalizedEgressPolicy }>("PUT", `${path(this.#id)}/network`, {
      json: { policy },
    });
    return r.policy;
  }
}

export class Sandbox {
  readonly id: string;
  readonly commands: Commands;
  readonly files: Files;
  readonly network: SandboxNetwork;
  /** Stateful code execution and contexts (code-interpreter templates). */
  readonly code: Code;
  #info: SandboxInfo;
  readonly #http: HttpClient;

  /** @internal Use Sandbox.create() or Sandbox.connect(). */
  constructor(info: SandboxInfo, http: HttpClient) {
    this.id = info.id;
    this.#info = info;
    this.#http = http;
    this.commands = new Commands(http, info.id);
    this.files = new Files(http, info.id);
    this.network = new SandboxNetwork(http, info.id);
    this.code = new Code(http, info.id);
  }

  /**
   * Runs code in the sandbox's code interpreter (a code-interpreter template):
   * Python by default; variables survive between calls in the same context.
   * Shorthand for `sandbox.code.run()`.
   */
  runCode(code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    return this.code.run(code, opts);
  }

  /** What the server last said about this sandbox (refresh with getInfo()). */
  get info(): SandboxInfo {
    return this.#info;
  }

  /** Token for the sandbox's in-guest agent (E2B envd protocol). */
  get envdAccessToken(): string | undefined {
    return this.#info.envdAccessToken;
  }

  /** Token for the sandbox's private ports through ingress (not for commands or files). */
  get ingressToken(): string | undefined {
    return this.#info.ingressToken;
  }

  /** Starts a sandbox and resolves once it is running. */
  static async create(opts: SandboxCreateOptions = {}): Promise<Sandbox> {
    const http = new HttpClient(resolveConnection(opts));
    const body = {
      ...(opts.template !== undefined ? { template: opts.template } : {}),
      ...(opts.vcpus !== undefined ? { vcpus: opts.vcpus } : {}),
      ...(opts.memoryMib !== undefined ? { memoryMib: opts.memoryMib } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      ...(opts.envVars ? { envVars: opts.envVars } : {}),
      ...(opts.metadata ? { metadata: opts.metadata } : {}),
      ...(opts.network ? { network: opts.network } : {}),
    };
    const headers: Record<string, string> = http.conn.sandboxToken
      ? { "x-firebreak-sandbox-token": http.conn.sandboxToken }
      : {};
    const info = await http.json<SandboxInfo>("POST", "/v1/sandboxes", {
      json: body,
      headers,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    return new Sandbox(info, http);
  }

  /** A handle on an existing sandbox (throws NOT_FOUND when there is none). */
  static async connect(id: string, opts: ConnectionOptions = {}): Promise<Sandbox> {
    const http = new HttpClient(resolveConnection(opts));
    return new Sandbox(await http.json<SandboxInfo>("GET", path(id)), http);
  }

  /** Sandboxes of the caller's tenant, newest first, one page per iteration. */
  static list(opts: SandboxListOptions = {}): Paginator<SandboxInfo> {
    const http = new HttpClient(resolveConnection(opts));
    return cursorPaginator<SandboxInfo>(http, "/v1/sandboxes", "sandboxes", {
      state: typeof opts.state === "string" ? [opts.state] : opts.state,
      metadata: Object.entries(opts.metadata ?? {}).map(([k, v]) => `${k}:${v}`),
      limit: opts.limit,
    });
  }

  /** Kills a sandbox by id; false when there is no such sandbox (true when it had already ended). */
  static async kill(id: string, opts: ConnectionOptions = {}): Promise<boolean> {
    return killById(new HttpClient(resolveConnection(opts)), id);
  }

  /** Refreshes and returns what the server says about this sandbox. */
  async getInfo(): Promise<SandboxInfo> {
    this.#info = { ...this.#info, ...(await this.#http.json<SandboxInfo>("GET", path(this.id))) };
    return this.#info;
  }

  /** Whether the sandbox is running (false once it has ended or is unknown). */
  async isRunning(): Promise<boolean> {
    try {
      return (await this.getInfo()).state === "running";
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** Kills the sandbox; false when the server does not know it (true when it had already ended). */
  kill(): Promise<boolean> {
    return killById(this.#http, this.id);
  }

  /** Sets the remaining lifetime: the sandbox is killed `timeoutMs` from now. */
  async setTimeout(timeoutMs: number): Promise<void> {
    await this.#http.empty("POST", `${path(this.id)}/timeout`, { json: { timeoutMs } });
  }

  /**
   * Pauses the sandbox to disk (CONFLICT when it is not running).
   * @param opts.memory false: keep only the disk; the resume boots it afresh
   * (files kept, processes and memory lost). @default true
   */
  async pause(opts: { memory?: boolean } = {}): Promise<SandboxInfo> {
    this.#info = await this.#http.json<SandboxInfo>("POST", `${path(this.id)}/pause`, {
      ...(opts.memory !== undefined ? { json: { memory: opts.memory } } : {}),
    });
    return this.#info;
  }

  /**
   * Resumes a paused sandbox (CONFLICT when it is not paused).
   * @param opts.timeoutMs new lifetime from now. @default the sandbox's timeoutMs
   */
  async resume(opts: { timeoutMs?: number } = {}): Promise<SandboxInfo> {
    this.#info = await this.#http.json<SandboxInfo>("POST", `${path(this.id)}/resume`, {
      ...(opts.timeoutMs !== undefined ? { json: { timeoutMs: opts.timeoutMs } } : {}),
    });
    return this.#info;
  }

  /** Forks the running sandbox into `count` new ones, each a copy of its disk and memory. */
  async fork(count = 1): Promise<Sandbox[]> {
    if (!Number.isInteger(count) || count < 1) {
      throw new FirebreakApiError({
        code: "VALIDATION_FAILED",
        message: `fork count must be a whole number of at least 1, got ${count}`,
      });
    }
    const r = await this.#http.json<{ sandboxes: SandboxInfo[] }>("POST", `${path(this.id)}/fork`, {
      json: { count },
    });
    return r.sandboxes.map((info) => new Sandbox(info, this.#http));
  }

  /** The sandbox's path through the platform: scheduling, start path, state changes, end. */
  async events(): Promise<SandboxEvent[]> {
    const r = await this.#http.json<{ events: SandboxEvent[] }>("GET", `${path(this.id)}/events`);
    return r.events;
  }

  /**
   * The sandbox's serial console (`console`) or its template's start command
   * output (`start`), as bytes from `offset`; with `follow`, new output as it
   * is printed, until the sandbox ends or `signal` aborts.
   */
  async *logs(
    opts: { source?: "console" | "start"; offset?: number; follow?: boolean; signal?: AbortSignal } = {},
  ): AsyncGenerator<Uint8Array> {
    const res = await this.#http.request("GET", `${path(this.id)}/logs`, {
      query: { source: opts.source ?? "console", offset: opts.offset ?? 0, follow: opts.follow ?? false },
      stream: true,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    if (!res.body) return;
    const reader = res.body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        if (value?.length) yield value;
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
  }
}

async function killById(http: HttpClient, id: string): Promise<boolean> {
  try {
    await http.empty("DELETE", path(id));
    return true;
  } catch (e) {
    if (e instanceof NotFoundError && e.code === "NOT_FOUND") return false;
    throw e;
  }
}
