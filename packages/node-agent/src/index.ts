export { loadConfig, type NodeConfig, paths } from "./config.ts";
export {
  EgressError,
  type EgressErrorCode,
  type EgressPolicy,
  EgressPolicySchema,
  type NormalizedPolicy,
  normalizePolicy,
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
export { readTemplateSpec, type TemplateSpec } from "./image/template-spec.ts";
export {
  BUILTIN_TEMPLATES_DIR,
  builtinTemplates,
  deleteTemplate,
  getTemplate,
  listTemplates,
  resolveSpecFile,
} from "./image/template-store.ts";
export {
  type ExecOptions,
  NodeRuntime,
  Sandbox,
  type Shape,
  type StartTimings,
  shapeFor,
  type TemplateImage,
} from "./sandbox/node-runtime.ts";
export { BASE_CMDLINE, qemuArgs } from "./vmm/qemu-vm.ts";
