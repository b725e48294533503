// @firebreak/sdk: the TypeScript SDK for the Firebreak REST API v1.
export {
  Code,
  type CodeContext,
  type CodeError,
  type CodeLanguage,
  type CodeResult,
  type Execution,
  type RunCodeOptions,
} from "./code.ts";
export {
  CommandHandle,
  type CommandOptions,
  type CommandResult,
  type CommandRunOptions,
  Commands,
  type Signal,
} from "./commands.ts";
export type { ConnectionOptions } from "./connection.ts";
export {
  API_ERROR_CODES,
  type ApiErrorCode,
  AuthenticationError,
  CLIENT_ERROR_CODES,
  type ClientErrorCode,
  ConflictError,
  FirebreakApiError,
  type FirebreakErrorCode,
  isFirebreakApiError,
  LimitError,
  NotFoundError,
  PermissionError,
  ServerError,
  TemplateBuildError,
  ValidationError,
} from "./errors.ts";
export { Files, type ReadFormat, type WriteInfo } from "./files.ts";
export {
  Firebreak,
  type HealthInfo,
  type KeyCreateOptions,
  Keys,
  Services,
  type TemplateBuildOptions,
  type TemplateSpec,
  Templates,
  type TenantInfo,
  type TenantLimits,
  Tenants,
  Usage,
  type UsageGroupBy,
  type UsageQueryOptions,
} from "./firebreak.ts";
export {
  type ArtifactRef,
  type AttemptInfo,
  type FailureKind,
  type JobCreateOptions,
  type JobFileInput,
  type JobInfo,
  type JobInputFile,
  type JobLogEvent,
  type JobState,
  Jobs,
  type JobUsage,
  type RetryPolicy,
  type TaskDetail,
  type TaskInfo,
  type TaskInput,
  type TaskState,
  type UsageTotals,
} from "./jobs.ts";
export { ndjson } from "./ndjson.ts";
export { Paginator } from "./paginator.ts";
export {
  Sandbox,
  type SandboxCreateOptions,
  type SandboxListOptions,
  SandboxNetwork,
} from "./sandbox.ts";
export type * from "./types.ts";
export {
  type CreatedWebhook,
  type VerifyOptions,
  type VerifyResult,
  verifyWebhook,
  type WebhookDelivery,
  type WebhookEvent,
  type WebhookEventFilter,
  type WebhookInfo,
  Webhooks,
} from "./webhooks.ts";
