// Job settings and their environment variables (defaults are what
// startServer uses; tests override them).

export interface JobsConfig {
  /** How often the dispatcher looks for work (on the `jobs` lease holder). @default 250 */
  dispatchIntervalMs: number;
  /** Task sandboxes this control plane runs at once, over every job. @default FIREBREAK_JOB_MAX_CONCURRENT_TASKS or 32 */
  maxConcurrentTasks: number;
  /** A task whose sandbox cannot be had yet (quota, capacity) is tried again after this. @default 2000 */
  deferMs: number;
  /** Attempts the platform may interrupt (restart, shutdown) before the task fails as infrastructure. @default 3 */
  maxInterruptions: number;
  /** A task sandbox's own timeout beyond the task timeout (a backstop if no dispatcher is left to kill it). @default 300_000 */
  sandboxGraceMs: number;
  /** Largest uploaded file (PUT /v1/jobs/files). @default FIREBREAK_JOB_MAX_FILE_BYTES or 256 MiB */
  maxUploadBytes: number;
  /** Largest single artifact collected from a task. @default FIREBREAK_JOB_MAX_ARTIFACT_BYTES or 256 MiB */
  maxArtifactBytes: number;
  /** All artifacts of one attempt together. @default 4 * maxArtifactBytes */
  maxArtifactBytesPerTask: number;
  /** Files collected from one attempt. @default 1000 */
  maxArtifactFiles: number;
  /** Output kept after the head limit is reached (the end of the output). @default 64 KiB */
  logTailBytes: number;
  /** Output buffered before it is written to the store (a slow store slows the guest's reads). @default 64 KiB */
  logFlushBytes: number;
  /** ... or after this long. @default 200 */
  logFlushMs: number;
  /** Tasks one job may have. @default 10_000 */
  maxTasks: number;
}

function positive(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0)
    throw new Error(`${name} must be a positive whole number, got ${JSON.stringify(raw)}`);
  return n;
}

export function defaultJobsConfig(env: NodeJS.ProcessEnv = process.env): JobsConfig {
  const maxArtifactBytes = positive(env, "FIREBREAK_JOB_MAX_ARTIFACT_BYTES", 256 * 2 ** 20);
  return {
    dispatchIntervalMs: 250,
    maxConcurrentTasks: positive(env, "FIREBREAK_JOB_MAX_CONCURRENT_TASKS", 32),
    deferMs: 2_000,
    maxInterruptions: 3,
    sandboxGraceMs: 300_000,
    maxUploadBytes: positive(env, "FIREBREAK_JOB_MAX_FILE_BYTES", 256 * 2 ** 20),
    maxArtifactBytes,
    maxArtifactBytesPerTask: 4 * maxArtifactBytes,
    maxArtifactFiles: 1000,
    logTailBytes: 64 * 1024,
    logFlushBytes: 64 * 1024,
    logFlushMs: 200,
    maxTasks: 10_000,
  };
}
