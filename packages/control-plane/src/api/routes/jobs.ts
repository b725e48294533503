// /v1/jobs: submit, list, get, cancel; tasks, their logs (streamed while they
// run) and artifacts; the job's usage; file uploads for jobs. The work is
// JobService's (src/jobs); these routes parse, check scopes and render.
import { createRoute, type OpenAPIHono, type z } from "@hono/zod-openapi";
import { actor, requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { JobService } from "../../jobs/job-service.ts";
import { DEFAULT_RETRY } from "../../jobs/retry.ts";
import type { JobSpec } from "../../jobs/spec.ts";
import {
  ArtifactListSchema,
  ArtifactQuery,
  CreateJobBody,
  JobIdParam,
  JobListQuery,
  JobListSchema,
  JobSchema,
  JobUsageSchema,
  LogEventSchema,
  LogsQuery,
  TaskDetailSchema,
  TaskListQuery,
  TaskListSchema,
  TaskParams,
  UploadedSchema,
} from "../../jobs/wire.ts";
import {
  type AttemptRecord,
  emptyCounts,
  JOB_STATES,
  type JobRecord,
  type JobState,
  type TaskRecord,
  type TaskState,
} from "../../store/job-store.ts";
import type { AppEnv, Deps } from "../context.ts";
import { body, errors, json, security } from "../openapi-helpers.ts";
import type { NormalizedPolicySchema } from "../schemas.ts";
import { granted } from "./sandboxes.ts";

const tags = ["jobs"];
/** How often a followed log looks for new output. */
const FOLLOW_POLL_MS = 250;

export function jobJson(job: JobRecord, counts: Record<TaskState, number> = emptyCounts()) {
  const spec = job.spec as JobSpec;
  return {
    id: job.id,
    tenantId: job.tenantId,
    state: job.state,
    template: spec.template,
    ...("cmd" in spec.command ? { cmd: spec.command.cmd } : { argv: spec.command.argv }),
    vcpus: spec.vcpus,
    memoryMib: spec.memoryMib,
    parallelism: spec.parallelism,
    taskTimeoutMs: spec.taskTimeoutMs,
    retry: spec.retry,
    ...(spec.network ? { network: spec.network as unknown as z.infer<typeof NormalizedPolicySchema> } : {}),
    envVars: spec.envVars,
    metadata: spec.metadata,
    files: spec.files,
    outputs: spec.outputs,
    maxLogBytes: spec.maxLogBytes,
    taskCount: job.taskCount,
    tasks: counts,
    createdAt: job.createdAt,
    startedAt: job.startedAt,
    endedAt: job.endedAt,
    cancelRequestedAt: job.cancelRequestedAt,
  };
}

function attemptJson(a: AttemptRecord) {
  return {
    attempt: a.attempt,
    state: a.state,
    sandboxId: a.sandboxId,
    startedAt: a.startedAt,
    endedAt: a.endedAt,
    exitCode: a.exitCode,
    failure: a.failure,
    message: a.message,
    logBytes: a.logBytes,
    logDroppedBytes: a.logDroppedBytes,
    artifacts: a.artifacts,
    timings: a.timings,
  };
}

export function taskJson(t: TaskRecord, attempts: AttemptRecord[]) {
  const result = attempts.find((a) => a.attempt === t.resultAttempt) ?? attempts.at(-1);
  return {
    index: t.index,
    state: t.state,
    input: t.input,
    attempts: t.attempts,
    interruptions: t.interruptions,
    exitCode: t.exitCode,
    failure: t.failure,
    message: t.message,
    startedAt: t.startedAt,
    endedAt: t.endedAt,
    resultAttempt: t.resultAttempt,
    sandboxId: result?.sandboxId ?? null,
    artifacts: result?.artifacts ?? [],
    logBytes: result?.logBytes ?? 0,
    logDroppedBytes: result?.logDroppedBytes ?? 0,
  };
}

function listParam(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(",")).filter(Boolean);
}

export function jobRoutes(app: OpenAPIHono<AppEnv>, deps: Deps, jobs: JobService): void {
  app.openapi(
    createRoute({
      method: "put",
      path: "/v1/jobs/files",
      tags,
      security,
      summary: "Upload a file for jobs (raw body); answers its sha256",
      description:
        "Content-addressed: the same bytes give the same sha256. Name it in a job's files[] (copied into every task) or inputFiles[] (one task each). Limited to FIREBREAK_JOB_MAX_FILE_BYTES (default 256 MiB): 413 PAYLOAD_TOO_LARGE.",
      request: {
        body: { content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } } },
      },
      responses: { 200: json(UploadedSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const stream = c.req.raw.body ?? new Blob([]).stream();
      return c.json(await jobs.upload(caller.tenant.id, stream), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/jobs",
      tags,
      security,
      summary: "Submit a job: one task, or one per input, each in its own sandbox",
      description:
        "Queued at once and run by the dispatcher (parallelism tasks at a time). Each task: a sandbox of the template, the job's files and its input in ~/job, the command run to completion, outputs collected, the sandbox killed. See docs/API.md, Jobs.",
      request: body(CreateJobBody),
      responses: { 201: json(JobSchema, "Queued"), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = c.req.valid("json");
      const job = await jobs.submit(actor(caller), {
        template: b.template,
        command: b.cmd !== undefined ? { cmd: b.cmd } : { argv: b.argv! },
        vcpus: b.vcpus,
        memoryMib: b.memoryMib,
        network: b.network
          ? {
              ...granted(caller, b.network.policy, "network.policy"),
              networks: [...(b.network.policy?.networks ?? []), ...(b.network.networks ?? [])],
            }
          : undefined,
        envVars: b.envVars,
        metadata: b.metadata,
        taskTimeoutMs: b.taskTimeoutMs,
        retry: { ...DEFAULT_RETRY, ...(b.retry as Partial<typeof DEFAULT_RETRY>) },
        parallelism: b.parallelism,
        inputs: b.inputs,
        inputFiles: b.inputFiles,
        files: b.files,
        outputs: b.outputs,
        maxLogBytes: b.maxLogBytes,
      });
      return c.json(jobJson(job, (await jobs.counts([job.id])).get(job.id)), 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs",
      tags,
      security,
      summary: "List jobs (newest first)",
      request: { query: JobListQuery },
      responses: { 200: json(JobListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const q = c.req.valid("query");
      const states = listParam(q.state);
      for (const s of states) {
        if (!JOB_STATES.includes(s as JobState)) {
          throw new ApiError("VALIDATION_FAILED", `state: ${s} is not one of ${JOB_STATES.join(", ")}`);
        }
      }
      const page = await jobs.list({
        tenantId: caller.tenant.id,
        states: states as JobState[],
        limit: q.limit,
        ...(q.cursor ? { cursor: q.cursor } : {}),
      });
      const counts = await jobs.counts(page.jobs.map((j) => j.id));
      return c.json(
        { jobs: page.jobs.map((j) => jobJson(j, counts.get(j.id))), nextCursor: page.nextCursor },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}",
      tags,
      security,
      summary: "Get a job (tasks counted by state)",
      request: { params: JobIdParam },
      responses: { 200: json(JobSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const job = await jobs.get(caller.tenant.id, c.req.valid("param").id);
      return c.json(jobJson(job, (await jobs.counts([job.id])).get(job.id)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/jobs/{id}/cancel",
      tags,
      security,
      summary: "Cancel a job: queued tasks at once, running tasks' sandboxes are killed",
      description:
        "Answers the job: cancelled, or cancelling while running tasks stop (GET it again). An ended job is answered as it is.",
      request: { params: JobIdParam },
      responses: { 200: json(JobSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const job = await jobs.cancel(caller.tenant.id, c.req.valid("param").id);
      return c.json(jobJson(job, (await jobs.counts([job.id])).get(job.id)), 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}/tasks",
      tags,
      security,
      summary: "The job's tasks in order, with each one's result (exit code, failure, artifacts)",
      request: { params: JobIdParam, query: TaskListQuery },
      responses: { 200: json(TaskListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id } = c.req.valid("param");
      const q = c.req.valid("query");
      const job = await jobs.get(caller.tenant.id, id);
      const rows = await jobs.tasks(caller.tenant.id, id, { fromIndex: q.from, limit: q.limit });
      const last = rows.at(-1)?.task.index;
      return c.json(
        {
          tasks: rows.map((r) => taskJson(r.task, r.attempts)),
          nextFrom:
            last !== undefined && last + 1 < job.taskCount && rows.length === q.limit ? last + 1 : null,
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}/tasks/{index}",
      tags,
      security,
      summary: "One task, with every attempt (retries included)",
      request: { params: TaskParams },
      responses: { 200: json(TaskDetailSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id, index } = c.req.valid("param");
      const { task, attempts } = await jobs.task(caller.tenant.id, id, index);
      return c.json({ ...taskJson(task, attempts), history: attempts.map(attemptJson) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}/tasks/{index}/logs",
      tags,
      security,
      summary: "A task's stdout and stderr (NDJSON; follow=true streams while it runs)",
      description:
        "Lines: {type: stdout|stderr, attempt, data: base64}; {type: truncated, ...} marks output cut at maxLogBytes (the last 64 KiB follow); {type: attempt} when following moves to a retry; {type: end, attempt, state, exitCode, failure} once an attempt has ended. Default attempt: the task's result, else its latest.",
      request: { params: TaskParams, query: LogsQuery },
      responses: {
        200: {
          description: "NDJSON stream of JobLogEvent",
          content: { "application/x-ndjson": { schema: LogEventSchema } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id, index } = c.req.valid("param");
      const q = c.req.valid("query");
      const follow = q.follow === "true" || q.follow === "1";
      const tenantId = caller.tenant.id;
      const first = await jobs.attemptOf(tenantId, id, index, q.attempt);
      let current = first.attempt?.attempt;
      let afterSeq = 0;
      let cancelled = false;
      const enc = new TextEncoder();
      const line = (o: unknown) => enc.encode(`${JSON.stringify(o)}\n`);
      const sleep = () => new Promise((r) => setTimeout(r, FOLLOW_POLL_MS));
      // Pull-based: the store is read only when the client has taken the last lines.
      const out = new ReadableStream<Uint8Array>(
        {
          async pull(ctl) {
            for (;;) {
              if (cancelled) return;
              if (current === undefined) {
                if (!follow) return ctl.close();
                const now = await jobs.attemptOf(tenantId, id, index).catch(() => undefined);
                if (!now) return ctl.close();
                const next = now.attempts.find((a) => a.attempt > (first.attempt?.attempt ?? 0));
                if (next) {
                  current = next.attempt;
                  afterSeq = 0;
                  return ctl.enqueue(line({ type: "attempt", attempt: current }));
                }
                if (now.task.state !== "queued" && now.task.state !== "running") return ctl.close();
                await sleep();
                continue;
              }
              const chunks = await jobs.readLogs(id, index, current, afterSeq, 64);
              if (chunks.length) {
                afterSeq = chunks.at(-1)!.seq;
                for (const ch of chunks) {
                  ctl.enqueue(
                    line({
                      type: ch.stream,
                      attempt: current,
                      data: Buffer.from(ch.data).toString("base64"),
                    }),
                  );
                }
                return;
              }
              const now = await jobs.attemptOf(tenantId, id, index, current);
              const a = now.attempt;
              if (a && a.state !== "running") {
                // Output is stored before the attempt's end: read once more, then end.
                const rest = await jobs.readLogs(id, index, current, afterSeq, 64);
                if (rest.length) continue;
                ctl.enqueue(
                  line({
                    type: "end",
                    attempt: a.attempt,
                    state: a.state,
                    exitCode: a.exitCode,
                    failure: a.failure,
                  }),
                );
                const more =
                  follow &&
                  q.attempt === undefined &&
                  (now.task.state === "queued" || now.task.state === "running");
                if (!more) return ctl.close();
                // Follow the task into its next attempt.
                first.attempt = a;
                current = undefined;
                return;
              }
              if (!follow) return ctl.close();
              await sleep();
            }
          },
          cancel() {
            cancelled = true;
          },
        },
        { highWaterMark: 1 },
      );
      return new Response(out, {
        status: 200,
        headers: { "content-type": "application/x-ndjson", "cache-control": "no-store" },
      }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}/tasks/{index}/artifacts",
      tags,
      security,
      summary: "Download one artifact of a task (by its path)",
      description:
        "The result attempt's unless attempt is given. X-Firebreak-Sha256 carries the content address.",
      request: { params: TaskParams, query: ArtifactQuery },
      responses: {
        200: {
          description: "The artifact's bytes",
          content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } },
        },
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id, index } = c.req.valid("param");
      const q = c.req.valid("query");
      const a = await jobs.artifact(caller.tenant.id, id, index, q.path, q.attempt);
      return new Response(a.stream, {
        status: 200,
        headers: {
          "content-type": "application/octet-stream",
          "content-length": String(a.bytes),
          "x-firebreak-sha256": a.ref.sha256,
        },
      }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}/artifacts",
      tags,
      security,
      summary: "Every task's artifacts (of its result attempt), in task order",
      request: { params: JobIdParam },
      responses: { 200: json(ArtifactListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id } = c.req.valid("param");
      const job = await jobs.get(caller.tenant.id, id);
      const out: { task: number; attempt: number; path: string; sha256: string; bytes: number }[] = [];
      for (let from = 0; from < job.taskCount; from += 1000) {
        for (const { task, attempts } of await jobs.tasks(caller.tenant.id, id, {
          fromIndex: from,
          limit: 1000,
        })) {
          const result = attempts.find((a) => a.attempt === task.resultAttempt);
          for (const r of result?.artifacts ?? []) {
            if ("sha256" in r) out.push({ task: task.index, attempt: result!.attempt, ...r });
          }
        }
      }
      return c.json({ artifacts: out }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/jobs/{id}/usage",
      tags,
      security,
      summary: "The job's cost tree: each task's attempts (retries labelled) and the total",
      description:
        "From the usage ledger: every task sandbox has the job as its root (GET /v1/usage?groupBy=root shows the same total under the job's id).",
      request: { params: JobIdParam },
      responses: { 200: json(JobUsageSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      return c.json(await jobs.usage(caller.tenant.id, c.req.valid("param").id), 200);
    },
  );

  void deps;
}
