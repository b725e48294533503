// firebreak.jobs: batch jobs. A job runs a command to completion in sandboxes
// of its own: once, or once per input (fan-out), a few at a time; each task's
// output is kept, its declared outputs become artifacts, and its sandbox is
// torn down at once. Files reach tasks by content address (uploadFile).
import { fromBase64, toBytes } from "./bytes.ts";
import { FirebreakApiError } from "./errors.ts";
import type { HttpClient } from "./http.ts";
import { cursorPaginator, type Paginator } from "./paginator.ts";
import type { EgressPolicy, NormalizedEgressPolicy, Traffic } from "./types.ts";

export type JobState = "queued" | "running" | "cancelling" | "succeeded" | "failed" | "cancelled";
export type TaskState = "queued" | "running" | "succeeded" | "failed" | "cancelled";
/** Why a task failed: non-zero exit, over its timeout, killed by a signal or from outside, or the platform. */
export type FailureKind = "exit_code" | "timeout" | "killed" | "infrastructure";

export interface RetryPolicy {
  /** Attempts in all, the first included. @default 1 (no retry) */
  maxAttempts?: number;
  /** Failures retried. @default ["infrastructure"] */
  on?: FailureKind[];
  /** With "exit_code": only these codes. @default every non-zero code */
  exitCodes?: number[];
  /** @default 1000 */
  backoffMs?: number;
  /** @default 2 */
  backoffMultiplier?: number;
  /** @default 60000 */
  maxBackoffMs?: number;
}

type Data = string | Uint8Array | ArrayBuffer;

/** A file copied into every task's working directory: uploaded from `data`, or already uploaded (`sha256`). */
export type JobFileInput = { path: string; mode?: number } & ({ data: Data } | { sha256: string });
/** A file that is one task's input (in the task: input/<name>). */
export type JobInputFile = { name: string } & ({ data: Data } | { sha256: string });

export interface JobCreateOptions {
  /** @default "base" */
  template?: string;
  /** A shell command line (/bin/bash -l -c) or an argv. */
  command: string | readonly string[];
  /** @default 1 */
  vcpus?: number;
  /** @default 256 */
  memoryMib?: number;
  /** Egress policy of every task's sandbox (default: deny all). Secrets: bind private services here. */
  network?: { policy?: EgressPolicy; networks?: string[] };
  /** Stored in the job record: not for secrets. */
  envVars?: Record<string, string>;
  metadata?: Record<string, string>;
  /** Each attempt's command is killed after this long. @default 600_000 */
  taskTimeoutMs?: number;
  retry?: RetryPolicy;
  /** Tasks running at once. @default 4 */
  parallelism?: number;
  /** One task per JSON value (in the task: $FIREBREAK_INPUT_FILE, $FIREBREAK_INPUT). */
  inputs?: unknown[];
  /** One task per file. */
  inputFiles?: JobInputFile[];
  files?: JobFileInput[];
  /** Paths collected after the command. @default ["out"] ($FIREBREAK_OUTPUT_DIR) */
  outputs?: string[];
  /** Output kept per attempt before the truncation marker. @default 1 MiB */
  maxLogBytes?: number;
  signal?: AbortSignal;
}

export type ArtifactRef =
  | { path: string; sha256: string; bytes: number }
  | { path: string; error: "missing" | "too_large" | "limit" | "unreadable"; detail?: string };

export interface JobInfo {
  id: string;
  tenantId: string;
  state: JobState;
  template: string;
  cmd?: string;
  argv?: string[];
  vcpus: number;
  memoryMib: number;
  parallelism: number;
  taskTimeoutMs: number;
  retry: Required<Omit<RetryPolicy, "exitCodes">> & { exitCodes?: number[] };
  network?: NormalizedEgressPolicy;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  files: { path: string; sha256: string; bytes: number; mode?: number }[];
  outputs: string[];
  maxLogBytes: number;
  taskCount: number;
  /** Tasks per state. */
  tasks: Record<TaskState, number>;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
  cancelRequestedAt: string | null;
}

export type TaskInput =
  | { kind: "none" }
  | { kind: "json"; value: unknown }
  | { kind: "file"; sha256: string; bytes: number; name: string };

/** A task and its result (the result attempt's; while it runs, the current attempt's). */
export interface TaskInfo {
  index: number;
  state: TaskState;
  input: TaskInput;
  attempts: number;
  interruptions: number;
  exitCode: number | null;
  failure: FailureKind | null;
  message: string | null;
  startedAt: string | null;
  endedAt: string | null;
  resultAttempt: number | null;
  sandboxId: string | null;
  artifacts: ArtifactRef[];
  logBytes: number;
  logDroppedBytes: number;
}

export interface AttemptInfo {
  attempt: number;
  state: "running" | "succeeded" | "failed" | "interrupted" | "cancelled";
  sandboxId: string | null;
  startedAt: string;
  endedAt: string | null;
  exitCode: number | null;
  failure: FailureKind | null;
  message: string | null;
  logBytes: number;
  logDroppedBytes: number;
  artifacts: ArtifactRef[];
  /** Phases in ms: sandbox, upload, command, collect, teardown. */
  timings: Record<string, number>;
}

export interface TaskDetail extends TaskInfo {
  /** Every attempt, retries and interrupted ones included. */
  history: AttemptInfo[];
}

export type JobLogEvent =
  | { type: "stdout" | "stderr" | "truncated"; attempt: number; data: Uint8Array; text: string }
  | { type: "attempt"; attempt: number }
  | { type: "end"; attempt: number; state: string; exitCode: number | null; failure: FailureKind | null };

export interface UsageTotals {
  sandboxes: number;
  lifetimeSeconds: number;
  cpuSeconds: number;
  memoryGibSeconds: number;
  peakMemoryMib: number;
  traffic: Traffic;
}

export interface JobUsage {
  jobId: string;
  state: JobState;
  total: UsageTotals;
  tasks: {
    index: number;
    total: UsageTotals;
    attempts: {
      attempt: number;
      /** initial, retry (after a failure), rerun (after an interruption). */
      kind: "initial" | "retry" | "rerun";
      state: string;
      sandboxId: string | null;
      usage: UsageTotals | null;
      final: boolean;
    }[];
  }[];
}

const FINAL: readonly JobState[] = ["succeeded", "failed", "cancelled"];
const path = (id: string) => `/v1/jobs/${encodeURIComponent(id)}`;

export class Jobs {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /** Uploads a file for jobs; its content address. */
  uploadFile(
    data: Data | ReadableStream<Uint8Array>,
    opts: { signal?: AbortSignal } = {},
  ): Promise<{ sha256: string; bytes: number }> {
    return this.#http.json("PUT", "/v1/jobs/files", {
      bytes: data instanceof ReadableStream ? data : toBytes(data),
      stream: data instanceof ReadableStream,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  /** Submits a job (uploading the files given as data first); resolves once it is queued. */
  async create(opts: JobCreateOptions): Promise<JobInfo> {
    if (typeof opts.command !== "string" && opts.command.length === 0) {
      throw new FirebreakApiError({
        code: "VALIDATION_FAILED",
        message: "command is empty: name a program to run",
      });
    }
    const signal = opts.signal ? { signal: opts.signal } : {};
    const sha = async (f: { data: Data } | { sha256: string }) =>
      "sha256" in f ? f.sha256 : (await this.uploadFile(f.data, signal)).sha256;
    const files = [];
    for (const f of opts.files ?? []) {
      files.push({ path: f.path, sha256: await sha(f), ...(f.mode !== undefined ? { mode: f.mode } : {}) });
    }
    let inputFiles: { name: string; sha256: string }[] | undefined;
    if (opts.inputFiles) {
      inputFiles = [];
      for (const f of opts.inputFiles) inputFiles.push({ name: f.name, sha256: await sha(f) });
    }
    const body = {
      ...(typeof opts.command === "string" ? { cmd: opts.command } : { argv: [...opts.command] }),
      ...(opts.template !== undefined ? { template: opts.template } : {}),
      ...(opts.vcpus !== undefined ? { vcpus: opts.vcpus } : {}),
      ...(opts.memoryMib !== undefined ? { memoryMib: opts.memoryMib } : {}),
      ...(opts.network ? { network: opts.network } : {}),
      ...(opts.envVars ? { envVars: opts.envVars } : {}),
      ...(opts.metadata ? { metadata: opts.metadata } : {}),
      ...(opts.taskTimeoutMs !== undefined ? { taskTimeoutMs: opts.taskTimeoutMs } : {}),
      ...(opts.retry ? { retry: opts.retry } : {}),
      ...(opts.parallelism !== undefined ? { parallelism: opts.parallelism } : {}),
      ...(opts.inputs ? { inputs: opts.inputs } : {}),
      ...(inputFiles ? { inputFiles } : {}),
      ...(files.length ? { files } : {}),
      ...(opts.outputs ? { outputs: opts.outputs } : {}),
      ...(opts.maxLogBytes !== undefined ? { maxLogBytes: opts.maxLogBytes } : {}),
    };
    return this.#http.json<JobInfo>("POST", "/v1/jobs", { json: body, ...signal });
  }

  /** Submits a job and waits for it to end; the job and its tasks in order. */
  async run(
    opts: JobCreateOptions & { onUpdate?: (job: JobInfo) => void; pollMs?: number },
  ): Promise<{ job: JobInfo; tasks: TaskInfo[] }> {
    const created = await this.create(opts);
    const job = await this.wait(created.id, opts);
    return { job, tasks: await this.tasks(job.id) };
  }

  get(id: string): Promise<JobInfo> {
    return this.#http.json<JobInfo>("GET", path(id));
  }

  /** The caller's jobs, newest first, in pages. */
  list(opts: { state?: JobState | readonly JobState[]; limit?: number } = {}): Paginator<JobInfo> {
    const state =
      opts.state === undefined ? undefined : typeof opts.state === "string" ? [opts.state] : opts.state;
    return cursorPaginator<JobInfo>(this.#http, "/v1/jobs", "jobs", {
      ...(state ? { state: state.join(",") } : {}),
      limit: opts.limit,
    });
  }

  /** Stops a job: queued tasks at once, running ones as their sandboxes are killed. */
  cancel(id: string): Promise<JobInfo> {
    return this.#http.json<JobInfo>("POST", `${path(id)}/cancel`);
  }

  /** Polls until the job has ended (succeeded, failed or cancelled). */
  async wait(
    id: string,
    opts: { onUpdate?: (job: JobInfo) => void; pollMs?: number; signal?: AbortSignal } = {},
  ): Promise<JobInfo> {
    for (;;) {
      const job = await this.get(id);
      opts.onUpdate?.(job);
      if (FINAL.includes(job.state)) return job;
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          clearTimeout(t);
          reject(new FirebreakApiError({ code: "ABORTED", message: `waiting for job ${id} was aborted` }));
        };
        const t = setTimeout(() => {
          opts.signal?.removeEventListener("abort", onAbort);
          resolve();
        }, opts.pollMs ?? 500);
        if (opts.signal?.aborted) onAbort();
        else opts.signal?.addEventListener("abort", onAbort, { once: true });
      });
    }
  }

  /** Every task of the job, in index order, with its result. */
  async tasks(id: string): Promise<TaskInfo[]> {
    const out: TaskInfo[] = [];
    let from: number | null = 0;
    while (from !== null) {
      const r: { tasks: TaskInfo[]; nextFrom: number | null } = await this.#http.json(
        "GET",
        `${path(id)}/tasks`,
        {
          query: { from, limit: 1000 },
        },
      );
      out.push(...r.tasks);
      from = r.nextFrom;
    }
    return out;
  }

  /** One task with every attempt. */
  task(id: string, index: number): Promise<TaskDetail> {
    return this.#http.json<TaskDetail>("GET", `${path(id)}/tasks/${index}`);
  }

  /**
   * A task's output, line by line as the server sends it; with `follow` it
   * streams while the task runs (through its retries) until it ends.
   */
  async *logs(
    id: string,
    index: number,
    opts: { attempt?: number; follow?: boolean; signal?: AbortSignal } = {},
  ): AsyncGenerator<JobLogEvent> {
    const dec = new TextDecoder();
    type Wire =
      | { type: "stdout" | "stderr" | "truncated"; attempt: number; data: string }
      | Exclude<JobLogEvent, { data: Uint8Array }>;
    for await (const ev of this.#http.stream<Wire>("GET", `${path(id)}/tasks/${index}/logs`, {
      query: { attempt: opts.attempt, follow: opts.follow ? "true" : undefined },
      ...(opts.signal ? { signal: opts.signal } : {}),
    })) {
      if ("data" in ev) {
        const data = fromBase64(ev.data);
        yield { type: ev.type, attempt: ev.attempt, data, text: dec.decode(data) };
      } else yield ev;
    }
  }

  /** Every task's artifacts (of its result attempt), in task order. */
  async artifacts(
    id: string,
  ): Promise<{ task: number; attempt: number; path: string; sha256: string; bytes: number }[]> {
    return (await this.#http.json<{ artifacts: never[] }>("GET", `${path(id)}/artifacts`)).artifacts;
  }

  /** One artifact's bytes (the result attempt's unless `attempt` is given). */
  downloadArtifact(
    id: string,
    index: number,
    file: string,
    opts?: { attempt?: number; format?: "bytes" },
  ): Promise<Uint8Array>;
  downloadArtifact(
    id: string,
    index: number,
    file: string,
    opts: { attempt?: number; format: "stream" },
  ): Promise<ReadableStream<Uint8Array>>;
  async downloadArtifact(
    id: string,
    index: number,
    file: string,
    opts: { attempt?: number; format?: "bytes" | "stream" } = {},
  ): Promise<Uint8Array | ReadableStream<Uint8Array>> {
    const res = await this.#http.request("GET", `${path(id)}/tasks/${index}/artifacts`, {
      query: { path: file, attempt: opts.attempt },
      stream: opts.format === "stream",
    });
    if (opts.format === "stream") return res.body ?? new Blob([]).stream();
    return new Uint8Array(await res.arrayBuffer());
  }

  /** The job's cost tree: each task's attempts (retries labelled) and the total. */
  usage(id: string): Promise<JobUsage> {
    return this.#http.json<JobUsage>("GET", `${path(id)}/usage`);
  }
}
