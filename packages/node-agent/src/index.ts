export { loadConfig, type NodeConfig, paths } from "./config.ts";
export { type EnvdThroughNode, type NodeAddress, NodeDaemonClient } from "./daemon/client.ts";
export { defaultSocket, loadIdentity, type NodeIdentity, saveIdentity } from "./daemon/identity.ts";
export type {
  CreateSpec,
  NodeReport,
  SandboxStatus,
  StartedInfo,
  TemplateInfo as NodeTemplateInfo,
  TemplateReport,
  Usage,
} from "./daemon/node-service.ts";
export { NODE_VERSION, NodeService, type ResumedInfo } from "./daemon/node-service.ts";
export { type OverheadKind, OverheadLedger, type OverheadRecord } from "./daemon/overhead.ts";
export { type NodeDaemon, type NodeDaemonOptions, runNodeDaemon } from "./daemon/run.ts";
export { type DaemonListen, startDaemon } from "./daemon/server.ts";
export {
  EgressError,
  type EgressErrorCode,
  type EgressPolicy,
  EgressPolicySchema,
  type NormalizedPolicy,
  normalizePolicy,
  PLATFORM_HEADER,
  PLATFORM_SERVICE_NAME,
  type PlatformTarget,
  type PrivateService,
  type SandboxTraffic,
  ServiceRegistry,
} from "./egress/index.ts";
export { ERROR_CODES, type ErrorCode, FirebreakError } from "./errors.ts";
export {
  activeBuildDirs,
  type BuildProgress,
  type BuiltTemplate,
  buildTemplate,
  type TemplateManifest,
} from "./image/builder.ts";
export { ensureInitramfs } from "./image/initramfs.ts";
export { ensureKernel, type KernelManifest } from "./image/kernel.ts";
export {
  isTemplateName,
  parseTemplateSpec,
  readTemplateSpec,
  TEMPLATE_NAME_RE,
  type TemplateSpec,
} from "./image/template-spec.ts";
export {
  BUILTIN_TEMPLATES_DIR,
  builtinTemplates,
  deleteTemplate,
  getTemplate,
  listTemplates,
  resolveSpecFile,
} from "./image/template-store.ts";
export { SPECIAL_PURPOSE_RANGES, type SpecialRange } from "./network/walls.ts";
export {
  type EnvdClient,
  type EnvdClientOptions,
  envdClient,
  MAX_ENVD_MESSAGE_BYTES,
} from "./sandbox/envd-client.ts";
export {
  type ExecOptions,
  NodeRuntime,
  Sandbox,
  type Shape,
  type StartTimings,
  shapeFor,
  type TemplateImage,
  validateShape,
} from "./sandbox/node-runtime.ts";
export { LOG_SOURCES, type LogSource } from "./sandbox/sandbox-logs.ts";
export { type LogSink, lineLogger, type NodeLogger, toNodeLogger } from "./telemetry/log.ts";
export { NodeMetrics, START_BUCKETS_S } from "./telemetry/node-metrics.ts";
export { assembleTrace, RecentTraces, spanToJson } from "./telemetry/recent-traces.ts";
export {
  ATTR,
  activeTraceId,
  contextFromHeaders,
  flushTraces,
  initTracing,
  inSpan,
  otlpConfigured,
  PhaseClock,
  recentTraces,
  recordPhases,
  type SpanJson,
  type TraceJson,
  traceHeaders,
  tracer,
} from "./telemetry/tracing.ts";
export { type BareTemplateResult, bareTemplatedRestore } from "./vmm/bare-template.ts";
export { MIN_QEMU_MAJOR, type QemuInstall, qemuInstall } from "./vmm/qemu-install.ts";
export { BASE_CMDLINE, qemuArgs } from "./vmm/qemu-vm.ts";
