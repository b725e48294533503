// The Jobs API's wire schemas: the same zod objects validate requests and
// describe the routes in /openapi.json. Request bodies are strict.
import { EgressPolicySchema } from "@firebreak/node-agent";
import { z } from "@hono/zod-openapi";
import { EnvVars, Metadata, NormalizedPolicySchema, TemplateName, TrafficSchema } from "../api/schemas.ts";
import { FAILURE_KINDS, JOB_STATES, TASK_STATES } from "../store/job-store.ts";

const Sha256 = z
  .string()
  .regex(/^[0-9a-f]{64}$/, "a sha256 in lowercase hex, as PUT /v1/jobs/files answers it");
const GuestPath = z.string().min(1).max(1024);
const FailureKind = z.enum(FAILURE_KINDS as [string, ...string[]]);

export const RetryBody = z
  .object({
    maxAttempts: z.number().int().min(1).max(10).default(1).openapi({
      description: "Attempts in all, the first included (1: no retry); interrupted attempts do not count",
    }),
    on: z
      .array(FailureKind)
      .max(4)
      .default(["infrastructure"])
      .openapi({ description: "Failures retried: exit_code, timeout, killed, infrastructure" }),
    exitCodes: z
      .array(z.number().int().min(1).max(255))
      .min(1)
      .max(64)
      .optional()
      .openapi({ description: "With exit_code: only these codes are retried (default: any non-zero)" }),
    backoffMs: z.number().int().min(0).max(3_600_000).default(1_000),
    backoffMultiplier: z.number().min(1).max(10).default(2),
    maxBackoffMs: z.number().int().min(0).max(3_600_000).default(60_000),
  })
  .strict()
  .openapi("JobRetryPolicy");

export const CreateJobBody = z
  .object({
    template: TemplateName.default("base"),
    cmd: z.string().min(1).max(100_000).optional().openapi({ description: "Run with /bin/bash -l -c" }),
    argv: z.array(z.string().max(100_000)).min(1).max(10_000).optional(),
    vcpus: z.number().int().min(1).max(8).default(1),
    memoryMib: z.number().int().min(128).max(16_384).default(256),
    network: z
      .object({
        policy: EgressPolicySchema.optional().describe(
          "Egress policy of every task's sandbox (default: deny all); see docs/API.md, Network. Secrets: bind private services here (credentials never enter the job record or the guest).",
        ),
        networks: EgressPolicySchema.shape.networks.describe(
          "Sandbox networks of the caller's tenant to join",
        ),
      })
      .strict()
      .optional(),
    envVars: EnvVars.default({}).openapi({ description: "Stored in the job record: not for secrets" }),
    metadata: Metadata.default({}).refine((r) => Object.keys(r).length <= 47, "at most 47 keys"),
    taskTimeoutMs: z
      .number()
      .int()
      .min(1_000)
      .max(30 * 24 * 3600_000)
      .default(600_000)
      .openapi({ description: "Each attempt's command is killed after this long (failure: timeout)" }),
    retry: RetryBody.optional(),
    parallelism: z.number().int().min(1).max(64).default(4),
    inputs: z.array(z.unknown()).min(1).max(10_000).optional().openapi({
      description:
        "One task per JSON value (in the task: $FIREBREAK_INPUT_FILE, and $FIREBREAK_INPUT up to 32 KiB)",
    }),
    inputFiles: z
      .array(z.object({ sha256: Sha256, name: z.string().min(1).max(255) }).strict())
      .min(1)
      .max(10_000)
      .optional()
      .openapi({ description: "One task per uploaded file, copied to input/<name> ($FIREBREAK_INPUT_FILE)" }),
    files: z
      .array(
        z
          .object({
            path: GuestPath.openapi({ description: "Relative to the task's working directory (~/job)" }),
            sha256: Sha256,
            mode: z.number().int().min(0).max(0o7777).optional().openapi({ description: "e.g. 493 (0755)" }),
          })
          .strict(),
      )
      .max(100)
      .default([])
      .openapi({
        description: "Uploaded files copied into every task's working directory before its command",
      }),
    outputs: z.array(GuestPath).max(64).optional().openapi({
      description:
        "Paths collected after the command (relative to the working directory, or absolute; directories: every file below). Default: out (= $FIREBREAK_OUTPUT_DIR) when it has files",
    }),
    maxLogBytes: z
      .number()
      .int()
      .min(1024)
      .max(16 * 2 ** 20)
      .default(2 ** 20)
      .openapi({
        description: "Output kept per attempt before the truncation marker (the last 64 KiB are kept too)",
      }),
  })
  .strict()
  .refine((b) => (b.cmd === undefined) !== (b.argv === undefined), {
    message: "give exactly one of cmd (a shell command line) or argv (a program and its arguments)",
  })
  .refine((b) => b.inputs === undefined || b.inputFiles === undefined, {
    message: "give inputs (JSON values) or inputFiles (uploaded files), not both",
  })
  .openapi("CreateJob");

export const JobIdParam = z.object({
  id: z
    .string()
    .max(64)
    .openapi({ param: { name: "id", in: "path" }, example: "jobk3x9q2m7a1b5c8d0e4f6" }),
});
export const TaskParams = JobIdParam.extend({
  index: z.coerce
    .number()
    .int()
    .min(0)
    .max(1_000_000)
    .openapi({ param: { name: "index", in: "path" } }),
});

const Counts = z.object({
  queued: z.number().int(),
  running: z.number().int(),
  succeeded: z.number().int(),
  failed: z.number().int(),
  cancelled: z.number().int(),
});

export const JobSchema = z
  .object({
    id: z.string(),
    tenantId: z.string(),
    state: z.enum(JOB_STATES as [string, ...string[]]),
    template: z.string(),
    cmd: z.string().optional(),
    argv: z.array(z.string()).optional(),
    vcpus: z.number().int(),
    memoryMib: z.number().int(),
    parallelism: z.number().int(),
    taskTimeoutMs: z.number().int(),
    retry: z.object({
      maxAttempts: z.number().int(),
      on: z.array(FailureKind),
      exitCodes: z.array(z.number().int()).optional(),
      backoffMs: z.number(),
      backoffMultiplier: z.number(),
      maxBackoffMs: z.number(),
    }),
    network: NormalizedPolicySchema.optional().openapi({ description: "Absent: deny all" }),
    envVars: z.record(z.string(), z.string()),
    metadata: z.record(z.string(), z.string()),
    files: z.array(
      z.object({ path: z.string(), sha256: z.string(), bytes: z.number(), mode: z.number().optional() }),
    ),
    outputs: z.array(z.string()),
    maxLogBytes: z.number().int(),
    taskCount: z.number().int(),
    tasks: Counts,
    createdAt: z.string(),
    startedAt: z.string().nullable(),
    endedAt: z.string().nullable(),
    cancelRequestedAt: z.string().nullable(),
  })
  .openapi("Job");

export const JobListQuery = z.object({
  state: z
    .union([z.string(), z.array(z.string())])
    .optional()
    .openapi({ description: "Repeat or comma-separate: state=running,queued" }),
  limit: z.coerce.number().int().min(1).max(1000).default(50),
  cursor: z
    .string()
    .regex(/^[0-9a-z]{1,16}$/)
    .optional(),
});
export const JobListSchema = z
  .object({ jobs: z.array(JobSchema), nextCursor: z.string().nullable() })
  .openapi("JobList");

export const ArtifactSchema = z
  .union([
    z.object({ path: z.string(), sha256: z.string(), bytes: z.number() }),
    z.object({
      path: z.string(),
      error: z.enum(["missing", "too_large", "limit", "unreadable"]),
      detail: z.string().optional(),
    }),
  ])
  .openapi("JobArtifact");

const TaskInputSchema = z.union([
  z.object({ kind: z.literal("none") }),
  z.object({ kind: z.literal("json"), value: z.unknown() }),
  z.object({ kind: z.literal("file"), sha256: z.string(), bytes: z.number(), name: z.string() }),
]);

export const AttemptSchema = z
  .object({
    attempt: z.number().int(),
    state: z.enum(["running", "succeeded", "failed", "interrupted", "cancelled"]),
    sandboxId: z.string().nullable(),
    startedAt: z.string(),
    endedAt: z.string().nullable(),
    exitCode: z.number().int().nullable(),
    failure: FailureKind.nullable(),
    message: z.string().nullable(),
    logBytes: z.number().int(),
    logDroppedBytes: z.number().int(),
    artifacts: z.array(ArtifactSchema),
    timings: z.record(z.string(), z.number()),
  })
  .openapi("JobTaskAttempt");

export const TaskSchema = z
  .object({
    index: z.number().int(),
    state: z.enum(TASK_STATES as [string, ...string[]]),
    input: TaskInputSchema,
    attempts: z.number().int(),
    interruptions: z.number().int(),
    exitCode: z.number().int().nullable(),
    failure: FailureKind.nullable(),
    message: z.string().nullable(),
    startedAt: z.string().nullable(),
    endedAt: z.string().nullable(),
    resultAttempt: z.number().int().nullable(),
    sandboxId: z.string().nullable(),
    artifacts: z.array(ArtifactSchema),
    logBytes: z.number().int(),
    logDroppedBytes: z.number().int(),
  })
  .openapi("JobTask");
export const TaskDetailSchema = TaskSchema.extend({ history: z.array(AttemptSchema) }).openapi(
  "JobTaskDetail",
);

export const TaskListQuery = z.object({
  from: z.coerce.number().int().min(0).max(1_000_000).default(0),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});
export const TaskListSchema = z
  .object({ tasks: z.array(TaskSchema), nextFrom: z.number().int().nullable() })
  .openapi("JobTaskList");

export const LogsQuery = z.object({
  attempt: z.coerce.number().int().min(1).max(1_000_000).optional(),
  follow: z.enum(["true", "false", "1", "0"]).optional().openapi({
    description: "Keep streaming until the task ends (through its retries unless attempt is given)",
  }),
});
export const LogEventSchema = z
  .union([
    z.object({
      type: z.enum(["stdout", "stderr", "truncated"]),
      attempt: z.number().int(),
      data: z.string().openapi({ description: "base64" }),
    }),
    z.object({ type: z.literal("attempt"), attempt: z.number().int() }),
    z.object({
      type: z.literal("end"),
      attempt: z.number().int(),
      state: z.string(),
      exitCode: z.number().int().nullable(),
      failure: z.string().nullable(),
    }),
  ])
  .openapi("JobLogEvent");

export const ArtifactQuery = z.object({
  path: z.string().min(1).max(4096),
  attempt: z.coerce.number().int().min(1).max(1_000_000).optional(),
});
export const ArtifactListSchema = z
  .object({
    artifacts: z.array(
      z.object({
        task: z.number().int(),
        attempt: z.number().int(),
        path: z.string(),
        sha256: z.string(),
        bytes: z.number(),
      }),
    ),
  })
  .openapi("JobArtifactList");

export const UploadedSchema = z
  .object({ sha256: z.string(), bytes: z.number().int() })
  .openapi("JobFileUploaded");

const Totals = z.object({
  sandboxes: z.number().int(),
  lifetimeSeconds: z.number(),
  cpuSeconds: z.number(),
  memoryGibSeconds: z.number(),
  peakMemoryMib: z.number(),
  traffic: TrafficSchema,
});
export const JobUsageSchema = z
  .object({
    jobId: z.string(),
    state: z.string(),
    total: Totals,
    tasks: z.array(
      z.object({
        index: z.number().int(),
        total: Totals,
        attempts: z.array(
          z.object({
            attempt: z.number().int(),
            kind: z.enum(["initial", "retry", "rerun"]),
            state: z.string(),
            sandboxId: z.string().nullable(),
            usage: Totals.nullable(),
            final: z.boolean(),
          }),
        ),
      }),
    ),
  })
  .openapi("JobUsage");
