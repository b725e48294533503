// The wire schemas. The same zod objects validate requests and generate
// /openapi.json, so the document cannot drift from what the server accepts.
// Request bodies are strict: unknown fields are VALIDATION_FAILED.
import { EgressPolicySchema, TEMPLATE_NAME_RE } from "@firebreak/node-agent";
import { z } from "@hono/zod-openapi";
import { API_ERRORS, type ApiErrorCode } from "../errors.ts";
import { SANDBOX_STATES, SCOPES } from "../store/store.ts";

const CODES = Object.keys(API_ERRORS) as [ApiErrorCode, ...ApiErrorCode[]];

export const ErrorSchema = z
  .object({
    error: z.object({
      code: z.enum(CODES),
      message: z.string(),
      requestId: z.string(),
    }),
  })
  .openapi("Error");

const Id = z.string().regex(/^[a-z0-9]{1,64}$/);
export const SandboxIdParam = z.object({
  id: z.string().openapi({ param: { name: "id", in: "path" }, example: "k3x9q2m7a1b5c8d0e4f6" }),
});

export const EnvVars = z
  .record(
    z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "not an environment variable name"),
    z.string().max(32_768),
  )
  .refine((r) => Object.keys(r).length <= 200, "at most 200 variables");
export const Metadata = z
  .record(z.string().min(1).max(64), z.string().max(512))
  .refine((r) => Object.keys(r).length <= 50, "at most 50 keys");

// SECURITY: a template name becomes a file name on the node; every route that
// takes one (body, path, E2B templateID) checks it with this one pattern.
export const TemplateName = z.string().regex(TEMPLATE_NAME_RE, "1-40 lowercase letters, digits or dashes");

export const CreateSandboxBody = z
  .object({
    template: TemplateName.default("base"),
    vcpus: z
      .number()
      .int()
      .min(1)
      .max(8)
      .optional()
      .openapi({ description: "Default: the template's shape (1 for base, 2 for code-interpreter)." }),
    memoryMib: z
      .number()
      .int()
      .min(128)
      .max(16_384)
      .optional()
      .openapi({ description: "Default: the template's shape (256 for base, 1024 for code-interpreter)." }),
    timeoutMs: z
      .number()
      .int()
      .min(1_000)
      .max(30 * 24 * 3600_000)
      .optional()
      .openapi({
        description: "Default 300000 (5 min); the server's maximum is configurable (default 24 h).",
      }),
    envVars: EnvVars.default({}),
    metadata: Metadata.default({}),
    network: z
      .object({
        // Not .openapi(): the node agent's zod objects may load before zod-openapi extends zod.
        policy: EgressPolicySchema.optional().describe(
          "Egress policy (default: deny all); see docs/API.md, Network.",
        ),
        networks: EgressPolicySchema.shape.networks.describe(
          "Sandbox networks of the caller's tenant to join (merged into policy.networks)",
        ),
      })
      .strict()
      .optional(),
  })
  .strict()
  .openapi("CreateSandbox");

// Network (egress policy, private services)

/** A policy as the node enforces it: every default filled, CIDRs canonical. */
export const NormalizedPolicySchema = z
  .object({
    internet: z.boolean(),
    allow: z.array(
      z.object({
        cidr: z.string(),
        ports: z.union([z.literal("any"), z.array(z.number().int())]),
        protocol: z.enum(["tcp", "udp", "any"]),
      }),
    ),
    allowDomains: z.array(z.string()),
    services: z.array(z.string()),
    bandwidthKBps: z.number().int().optional(),
    networks: z.array(z.string()),
    grantedBy: z
      .literal("admin")
      .optional()
      .describe("Present when an admin key made the policy (it may allow private ranges)"),
    platform: z
      .literal(true)
      .optional()
      .describe(
        "Present when granted: the sandbox calls the API from inside as itself (docs/API.md, Platform grant)",
      ),
  })
  .openapi("EgressPolicy");
export const NetworkSchema = z.object({ policy: NormalizedPolicySchema }).openapi("SandboxNetwork");
export const PutNetworkBody = z.object({ policy: EgressPolicySchema }).strict().openapi("SetSandboxNetwork");

export const ServiceBody = z
  .object({
    name: z.string(),
    address: z.string(),
    port: z.number().int(),
    protocol: z.enum(["tcp", "http"]),
    tenants: z
      .array(z.string())
      .optional()
      .openapi({ description: "Tenant ids allowed to bind it; absent: all" }),
    inject: z.object({ header: z.string(), value: z.string() }).strict().optional().openapi({
      description: "http only: a header the node's proxy adds to every request (never enters the guest)",
    }),
  })
  .strict()
  .openapi("CreateService");
export const ServiceSchema = z
  .object({
    name: z.string(),
    address: z.string(),
    port: z.number().int(),
    protocol: z.enum(["tcp", "http"]),
    tenants: z.array(z.string()).optional(),
    inject: z
      .object({
        header: z.string(),
        value: z.string().openapi({ description: '"***" unless the caller is an admin' }),
      })
      .optional(),
  })
  .openapi("PrivateService");
export const ServiceListSchema = z.object({ services: z.array(ServiceSchema) }).openapi("PrivateServiceList");
export const ServiceNameParam = z.object({
  name: z.string().openapi({ param: { name: "name", in: "path" }, example: "postgres.internal" }),
});

export const SandboxStateSchema = z.enum(SANDBOX_STATES as [string, ...string[]]).openapi("SandboxState");
export const StartPathSchema = z.enum(["warm", "snapshot", "cold"]);

export const SandboxSchema = z
  .object({
    id: z.string(),
    tenantId: z.string(),
    template: z.string(),
    state: SandboxStateSchema,
    vcpus: z.number().int(),
    memoryMib: z.number().int(),
    metadata: z.record(z.string(), z.string()),
    envdAccessToken: z.string().optional(),
    /** Opens the sandbox's private ports through ingress (X-Firebreak-Ingress-Token, ?token=); never the envd token. */
    ingressToken: z.string().optional(),
    createdAt: z.string(),
    readyAt: z.string().nullable(),
    endedAt: z.string().optional(),
    endReason: z.string().optional(),
    endedBy: z.string().optional(),
    timeoutMs: z.number().int(),
    timeoutAt: z.string().nullable(),
    startPath: StartPathSchema.nullable(),
    timings: z.object({ totalMs: z.number(), phases: z.record(z.string(), z.number()) }).nullable(),
    parentId: z.string().optional(),
    rootId: z.string(),
  })
  .openapi("Sandbox");

const StringOrList = z.union([z.string(), z.array(z.string())]);
export const ListSandboxesQuery = z.object({
  state: StringOrList.optional().openapi({ description: "Repeat or comma-separate: state=running,paused" }),
  metadata: StringOrList.optional().openapi({ description: "key:value, repeatable (all must match)" }),
  limit: z.coerce.number().int().min(1).max(1000).default(50),
  cursor: z
    .string()
    .regex(/^[0-9a-z]{1,16}$/)
    .optional(),
});

export const SandboxListSchema = z
  .object({ sandboxes: z.array(SandboxSchema), nextCursor: z.string().nullable() })
  .openapi("SandboxList");

export const TimeoutBody = z
  .object({
    timeoutMs: z
      .number()
      .int()
      .min(1_000)
      .max(30 * 24 * 3600_000),
  })
  .strict();
export const ResumeBody = z
  .object({
    timeoutMs: z
      .number()
      .int()
      .min(1_000)
      .max(30 * 24 * 3600_000)
      .optional(),
  })
  .strict();
export const PauseBody = z
  .object({
    /** false: keep only the disk; the resume boots the sandbox afresh (processes and memory are lost). */
    memory: z.boolean().optional(),
  })
  .strict();
export const ForkBody = z.object({ count: z.number().int().min(1).max(16).default(1) }).strict();

export const EventsSchema = z
  .object({
    events: z.array(
      z.object({ at: z.string(), type: z.string(), detail: z.record(z.string(), z.unknown()) }),
    ),
  })
  .openapi("SandboxEvents");

export const SandboxMetricsQuery = z.object({
  start: z.coerce.number().int().min(0).optional().openapi({ description: "From (ms since the epoch)." }),
  end: z.coerce.number().int().min(0).optional().openapi({ description: "Until (ms since the epoch)." }),
});
export const SandboxMetricsSchema = z
  .object({
    sandboxId: z.string(),
    points: z.array(
      z.object({
        at: z.number().openapi({ description: "End of the interval (ms since the epoch)." }),
        timestamp: z.string(),
        intervalMs: z.number(),
        vcpus: z.number().int(),
        cpuUsedPct: z
          .number()
          .openapi({ description: "CPU over the interval as a share of the sandbox's vCPUs (0-100)." }),
        memoryUsedBytes: z.number(),
        memoryTotalBytes: z.number(),
        diskUsedBytes: z.number().optional(),
        diskTotalBytes: z.number().optional(),
        networkTxBytes: z.number().optional(),
        networkRxBytes: z.number().optional(),
      }),
    ),
  })
  .openapi("SandboxMetrics");

// Traces

export const TraceIdParam = z.object({
  traceId: z
    .string()
    .regex(/^[0-9a-f]{32}$/, "a trace id: 32 lowercase hex digits (X-Trace-Id of an answer)")
    .openapi({ param: { name: "traceId", in: "path" } }),
});
export const SpanSchema = z
  .object({
    traceId: z.string(),
    spanId: z.string(),
    parentSpanId: z.string().nullable(),
    name: z.string(),
    kind: z.string(),
    scope: z.string().openapi({ description: "firebreak-control-plane or firebreak-node" }),
    startTime: z.string(),
    endTime: z.string(),
    startMs: z.number(),
    durationMs: z.number(),
    status: z.enum(["unset", "ok", "error"]),
    statusMessage: z.string().optional(),
    attributes: z.record(z.string(), z.unknown()),
    events: z.array(
      z.object({ name: z.string(), time: z.string(), attributes: z.record(z.string(), z.unknown()) }),
    ),
  })
  .openapi("Span");
export const TraceSchema = z
  .object({
    traceId: z.string(),
    name: z.string(),
    startTime: z.string(),
    durationMs: z.number(),
    spans: z.array(SpanSchema),
    droppedSpans: z.number().int(),
  })
  .openapi("Trace");
export const SandboxTracesSchema = z
  .object({ sandboxId: z.string(), traces: z.array(TraceSchema) })
  .openapi("SandboxTraces");

// Commands

export const CommandBody = z
  .object({
    cmd: z.string().min(1).max(100_000).optional().openapi({ description: "Run with /bin/bash -l -c" }),
    argv: z.array(z.string()).min(1).max(10_000).optional(),
    envVars: EnvVars.optional(),
    cwd: z.string().max(4096).optional(),
    user: z
      .string()
      .regex(/^[a-z_][a-z0-9_-]{0,31}$/)
      .optional(),
    stdin: z
      .string()
      .max(1024 * 1024)
      .optional()
      .openapi({ description: "UTF-8, written then closed" }),
    background: z.boolean().default(false),
    timeoutMs: z
      .number()
      .int()
      .min(1)
      .max(30 * 24 * 3600_000)
      .optional(),
  })
  .strict()
  .refine((b) => (b.cmd === undefined) !== (b.argv === undefined), {
    message: "give exactly one of cmd (a shell command line) or argv (a program and its arguments)",
  })
  .openapi("RunCommand");

export const CommandEventSchema = z
  .union([
    z.object({ type: z.literal("start"), pid: z.number().int() }),
    z.object({ type: z.literal("stdout"), data: z.string().openapi({ description: "base64" }) }),
    z.object({ type: z.literal("stderr"), data: z.string().openapi({ description: "base64" }) }),
    z.object({ type: z.literal("end"), exitCode: z.number().int(), error: z.string().optional() }),
  ])
  .openapi("CommandEvent");

export const PidSchema = z.object({ pid: z.number().int() }).openapi("CommandStarted");
export const CommandListSchema = z
  .object({
    commands: z.array(
      z.object({
        pid: z.number().int(),
        cmd: z.string(),
        args: z.array(z.string()),
        tag: z.string().optional(),
      }),
    ),
  })
  .openapi("CommandList");
export const PidParams = z.object({
  id: z.string().openapi({ param: { name: "id", in: "path" } }),
  pid: z.coerce
    .number()
    .int()
    .min(1)
    .openapi({ param: { name: "pid", in: "path" } }),
});
export const SignalBody = z.object({ signal: z.enum(["SIGTERM", "SIGKILL"]) }).strict();
export const StdinBody = z
  .object({
    data: z
      .base64()
      .max(2 * 1024 * 1024)
      .default(""),
    eof: z.boolean().default(false),
  })
  .strict();

// Files

export const PathQuery = z.object({
  path: z.string().min(1).max(4096),
  user: z
    .string()
    .regex(/^[a-z_][a-z0-9_-]{0,31}$/)
    .optional(),
});
export const ListQuery = PathQuery.extend({ depth: z.coerce.number().int().min(1).max(10).default(1) });
export const EntrySchema = z
  .object({
    name: z.string(),
    path: z.string(),
    type: z.enum(["file", "dir", "symlink"]),
    size: z.number(),
    mode: z.number().int(),
    modifiedAt: z.string().nullable(),
    symlinkTarget: z.string().optional(),
  })
  .openapi("FileEntry");
export const EntryListSchema = z.object({ entries: z.array(EntrySchema) }).openapi("FileEntryList");
export const WrittenSchema = z.object({ path: z.string(), bytes: z.number().int() }).openapi("FileWritten");
export const MoveBody = z
  .object({ from: z.string().min(1).max(4096), to: z.string().min(1).max(4096) })
  .strict();
export const MkdirBody = z.object({ path: z.string().min(1).max(4096) }).strict();
export const UserQuery = z.object({
  user: z
    .string()
    .regex(/^[a-z_][a-z0-9_-]{0,31}$/)
    .optional(),
});

// Templates

export const TemplateBuildBody = z
  .union([
    z.object({ name: TemplateName }).strict(),
    z
      .object({
        spec: z.record(z.string(), z.unknown()).openapi({
          description:
            "A template spec (docs/ARCHITECTURE.md, Template builds) without files: files[] is refused over the API (write files with run steps)",
        }),
      })
      .strict(),
  ])
  .openapi("TemplateBuild");
export const TemplateSchema = z
  .object({
    name: z.string(),
    key: z.string(),
    builtAt: z.string(),
    imageBytes: z.number(),
    packages: z.array(z.string()),
    tenantId: z.string().nullable().openapi({
      description: "The tenant that owns it; null for an operator template (every tenant may use it)",
    }),
  })
  .openapi("Template");
export const TemplateListSchema = z.object({ templates: z.array(TemplateSchema) }).openapi("TemplateList");
export const BuildEventSchema = z
  .union([
    z.object({
      type: z.literal("progress"),
      step: z.string(),
      index: z.number().int(),
      total: z.number().int(),
      detail: z.string().optional(),
    }),
    z.object({ type: z.literal("done"), template: TemplateSchema }),
    z.object({ type: z.literal("error"), error: z.object({ code: z.string(), message: z.string() }) }),
  ])
  .openapi("TemplateBuildEvent");
export const TemplateNameParam = z.object({
  name: TemplateName.openapi({ param: { name: "name", in: "path" }, example: "base" }),
});

// Keys and tenants

const ScopeSchema = z.enum(SCOPES as [string, ...string[]]);
export const CreateKeyBody = z
  .object({
    name: z.string().min(1).max(100),
    scopes: z.array(ScopeSchema).min(1).max(3).optional().openapi({ description: 'Default ["sandboxes"]' }),
    tenantId: Id.optional().openapi({ description: "Admin only; default: the caller's tenant" }),
  })
  .strict();
export const KeySchema = z
  .object({
    id: z.string(),
    name: z.string(),
    tenantId: z.string(),
    scopes: z.array(ScopeSchema),
    createdAt: z.string(),
    revokedAt: z.string().nullable(),
    createdByKey: z.string().nullable().openapi({
      description:
        "The key that minted it (revoking that key revokes this one); null for keys made on the host",
    }),
  })
  .openapi("ApiKey");
export const CreatedKeySchema = KeySchema.extend({
  key: z.string().openapi({ description: "Shown once. Also usable as e2b_<same hex> by E2B SDKs." }),
}).openapi("CreatedApiKey");
export const KeyListSchema = z.object({ keys: z.array(KeySchema) }).openapi("ApiKeyList");
export const IdParam = z.object({
  id: z
    .string()
    .max(64)
    .openapi({ param: { name: "id", in: "path" } }),
});

export const LimitsSchema = z
  .object({
    maxSandboxes: z.number().int().min(0).max(100_000),
    maxVcpus: z.number().int().min(0).max(1_000_000),
    maxMemoryMib: z.number().int().min(0).max(1_000_000_000),
    requestsPerMinute: z.number().int().min(1).max(1_000_000),
    maxKeys: z
      .number()
      .int()
      .min(1)
      .max(100_000)
      .openapi({ description: "Unrevoked API keys the tenant may hold (default 100)" }),
    maxPausedMib: z.number().int().min(0).max(1_000_000_000).openapi({
      description: "Paused sandboxes' guest memory summed (their on-disk state), MiB (default 32768)",
    }),
  })
  .strict()
  .openapi("TenantLimits");
export const CreateTenantBody = z
  .object({
    name: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9 ._-]{0,63}$/),
    limits: LimitsSchema.partial().optional(),
  })
  .strict();
export const TenantSchema = z
  .object({ id: z.string(), name: z.string(), limits: LimitsSchema, createdAt: z.string() })
  .openapi("Tenant");
export const TenantListSchema = z.object({ tenants: z.array(TenantSchema) }).openapi("TenantList");

// Usage

export const UsageQuery = z.object({
  groupBy: z
    .string()
    .regex(/^(tenant|template|root|metadata\.[^\s]{1,64})$/, "tenant, template, root or metadata.<key>")
    .default("tenant"),
  from: z.iso.datetime({ offset: true }).optional(),
  to: z.iso.datetime({ offset: true }).optional(),
});
const Bytes = z.object({ tx: z.number().int(), rx: z.number().int() });
export const TrafficSchema = z
  .object({ internet: Bytes, private: Bytes, sandbox: Bytes, ingress: Bytes })
  .openapi("Traffic", {
    description:
      "Network bytes per destination class: tx from the guest, rx to it. private: allowed private ranges and bound services; sandbox: sandbox networks; ingress: connections into the sandbox through the ingress proxy. DNS and the platform's own agent traffic are not counted.",
  });
export const UsageGroupsSchema = z
  .object({
    groups: z.array(
      z.object({
        key: z.string().nullable(),
        sandboxes: z.number().int(),
        lifetimeSeconds: z.number(),
        cpuSeconds: z.number(),
        memoryGibSeconds: z.number(),
        peakMemoryMib: z.number(),
        traffic: TrafficSchema,
      }),
    ),
  })
  .openapi("UsageGroups");
export const UsageRecordsQuery = z.object({
  sandboxId: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
});
export const UsageRecordSchema = z
  .object({
    sandboxId: z.string(),
    tenantId: z.string(),
    template: z.string(),
    vcpus: z.number().int(),
    memoryMib: z.number().int(),
    createdAt: z.string(),
    readyAt: z.string().nullable(),
    endedAt: z.string().nullable(),
    lifetimeSeconds: z.number(),
    startPath: StartPathSchema.nullable(),
    cpuSeconds: z.number(),
    memoryPeakMib: z.number(),
    memoryGibSeconds: z.number(),
    endReason: z.string().nullable(),
    metadata: z.record(z.string(), z.string()),
    parentId: z.string().nullable(),
    rootId: z.string(),
    final: z.boolean(),
    traffic: TrafficSchema,
    chargedFrom: z.string().nullable().openapi({
      description:
        "When charging began: the hand-over (warm claim, restore or boot finished). CPU, memory and traffic are charged from then until endedAt; null when the sandbox never started.",
    }),
    account: z.literal("tenant").openapi({
      description: "Who pays: the tenant (the platform's own work is in GET /v1/usage/overhead).",
    }),
    overheadCpuSeconds: z.number().openapi({
      description:
        "CPU the sandbox's VM used before hand-over (restore, boot, its time in a warm pool): the platform's overhead, not charged.",
    }),
  })
  .openapi("UsageRecord");
export const UsageRecordsSchema = z.object({ records: z.array(UsageRecordSchema) }).openapi("UsageRecords");

// The platform's overhead account (admin)

export const OverheadQuery = z.object({
  from: z.iso.datetime({ offset: true }).optional(),
  to: z.iso.datetime({ offset: true }).optional(),
});
export const OverheadRecordsQuery = OverheadQuery.extend({
  limit: z.coerce.number().int().min(1).max(10_000).default(100),
});
export const OverheadReportSchema = z
  .object({
    from: z.string().nullable(),
    to: z.string().nullable(),
    groups: z.array(
      z.object({
        nodeId: z.string(),
        template: z.string(),
        records: z.number().int(),
        cpuSeconds: z.number(),
        wallSeconds: z.number(),
        cpuSecondsByKind: z.record(z.string(), z.number()),
        from: z.string(),
        to: z.string(),
      }),
    ),
    total: z.object({ records: z.number().int(), cpuSeconds: z.number(), wallSeconds: z.number() }),
  })
  .openapi("OverheadReport");
export const OverheadRecordSchema = z
  .object({
    id: z.string(),
    account: z.literal("platform"),
    nodeId: z.string(),
    kind: z.string().openapi({
      description:
        "What the CPU was spent on: warm_pool, restore, boot, resume, fork (before a hand-over), snapshot_prepare, template_build, failed_start.",
    }),
    template: z.string(),
    from: z.string().openapi({ description: "When the work began (at less wallSeconds)." }),
    at: z
      .string()
      .openapi({ description: "When the work ended (a sandbox's hand-over, a pool VM's claim or discard)." }),
    cpuSeconds: z.number(),
    wallSeconds: z.number(),
    memoryMib: z.number(),
    nodeSandboxId: z.string().nullable(),
    sandboxId: z
      .string()
      .nullable()
      .openapi({ description: "The sandbox the work was for, when it was for one." }),
  })
  .openapi("OverheadRecord");
export const OverheadRecordsSchema = z
  .object({ records: z.array(OverheadRecordSchema) })
  .openapi("OverheadRecords");

export const HealthSchema = z
  .object({
    ok: z.literal(true),
    accelerator: z.string(),
    node: z.object({
      id: z.string(),
      accelerator: z.string(),
      acceleratorReason: z.string(),
      capacity: z.object({ vcpus: z.number(), memoryMib: z.number(), sandboxes: z.number() }),
    }),
  })
  .openapi("Health");

// Nodes (admin) and joining

export const NodeIdParam = z.object({
  id: z
    .string()
    .regex(/^[a-z0-9-]{1,40}$/)
    .openapi({ param: { name: "id", in: "path" } }),
});
export const JoinTokenBody = z
  .object({
    ttlSeconds: z
      .number()
      .int()
      .min(60)
      .max(7 * 24 * 3600)
      .default(3600),
  })
  .strict()
  .openapi("CreateJoinToken");
export const JoinTokenSchema = z.object({ token: z.string(), expiresAt: z.string() }).openapi("JoinToken");
export const JoinBody = z
  .object({
    nodeId: z.string().regex(/^[a-z0-9-]{1,40}$/),
    // TLS-PSK listener of the node (or, on the control plane's own host, its unix socket).
    address: z.string().regex(/^(https:\/\/[a-zA-Z0-9.\-[\]:]{1,255}:\d{1,5}|unix:\/[\w./-]{1,200})$/),
    secret: z.string().regex(/^[0-9a-f]{64}$/),
  })
  .strict()
  .openapi("JoinNode");
export const NodeSchema = z
  .object({
    id: z.string(),
    address: z.string(),
    state: z.enum(["active", "draining", "lost"]),
    leaseUntil: z.string().nullable(),
    lastSeenAt: z.string().nullable(),
    joinedAt: z.string(),
    accelerator: z.string().optional(),
    vcpus: z.number().optional(),
    memoryMib: z.number().optional(),
    committedVcpus: z.number().optional(),
    committedMemoryMib: z.number().optional(),
    sandboxes: z.number().optional(),
    templates: z
      .array(
        z.object({
          name: z.string(),
          key: z.string(),
          snapshotShapes: z.array(z.string()),
          warm: z.record(z.string(), z.number()),
        }),
      )
      .optional(),
  })
  .openapi("Node");
export const NodeListSchema = z.object({ nodes: z.array(NodeSchema) }).openapi("NodeList");
export const DrainBody = z
  .object({ draining: z.boolean().default(true) })
  .strict()
  .openapi("DrainNode");
export const NodePoolBody = z
  .object({
    template: z.string().regex(/^[a-z0-9][a-z0-9-]{0,39}$/),
    size: z.number().int().min(0).max(256),
    vcpus: z.number().int().min(1).max(8).default(1),
    memoryMib: z.number().int().min(128).max(16_384).default(256),
  })
  .strict()
  .openapi("NodePool");

// ---------------------------------------------------------------- code interpreter

const CodeLanguage = z
  .string()
  .min(1)
  .max(32)
  .openapi({ description: "python (default), javascript or js, typescript or ts", example: "python" });
const ContextId = z.string().regex(/^[A-Za-z0-9-]{1,64}$/, "a context id from POST /code/contexts");
export const CodeExecuteBody = z
  .object({
    code: z.string().max(1_000_000),
    language: CodeLanguage.optional(),
    contextId: ContextId.optional(),
    envVars: EnvVars.optional().openapi({ description: "Set for this execution only." }),
    timeoutMs: z
      .number()
      .int()
      .min(1)
      .max(24 * 3600_000)
      .optional()
      .openapi({ description: "Interrupt the cell after this long (an error line, then end)." }),
  })
  .strict()
  .openapi("CodeExecute");
export const CodeEventSchema = z
  .object({
    type: z.enum([
      "stdout",
      "stderr",
      "result",
      "error",
      "number_of_executions",
      "keepalive",
      "end_of_execution",
    ]),
    text: z.string().optional().openapi({ description: "stdout/stderr text; a result's text/plain" }),
    timestamp: z.string().optional(),
    execution_count: z.number().int().optional(),
    is_main_result: z.boolean().optional(),
    html: z.string().optional(),
    markdown: z.string().optional(),
    svg: z.string().optional(),
    png: z.string().optional().openapi({ description: "base64" }),
    jpeg: z.string().optional().openapi({ description: "base64" }),
    pdf: z.string().optional(),
    latex: z.string().optional(),
    json: z.unknown().optional(),
    javascript: z.string().optional(),
    data: z.unknown().optional().openapi({ description: "a pandas DataFrame's columns" }),
    chart: z.unknown().optional().openapi({ description: "a matplotlib figure's chart data" }),
    extra: z.record(z.string(), z.unknown()).optional(),
    name: z.string().optional(),
    value: z.string().optional(),
    traceback: z.string().optional(),
  })
  .openapi("CodeEvent");
export const CodeContextBody = z
  .object({
    language: CodeLanguage.optional(),
    cwd: z.string().min(1).max(4096).optional().openapi({ description: "Default: the template's workdir" }),
  })
  .strict()
  .openapi("CreateCodeContext");
export const CodeContextSchema = z
  .object({ id: z.string(), language: z.string(), cwd: z.string() })
  .openapi("CodeContext");
export const CodeContextListSchema = z
  .object({ contexts: z.array(CodeContextSchema) })
  .openapi("CodeContextList");
export const CodeContextParams = z.object({
  id: z.string().openapi({ param: { name: "id", in: "path" } }),
  contextId: ContextId.openapi({ param: { name: "contextId", in: "path" } }),
});
