// Test support: the whole API in-process over a FakeNode and a temporary SQLite file.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { initTracing } from "@firebreak/node-agent";
import pino from "pino";
import { createApp } from "../api/app.ts";
import { newApiKey } from "../auth/keys.ts";
import { type ControlPlaneConfig, defaultConfig } from "../config.ts";
import { IngressTokens } from "../ingress/ingress-token.ts";
import { FileArtifactStore } from "../jobs/artifact-store.ts";
import { defaultJobsConfig, type JobsConfig } from "../jobs/config.ts";
import { JobService } from "../jobs/job-service.ts";
import { StaticNodes } from "../node/directory.ts";
import { PlatformTokens } from "../sandboxes/platform.ts";
import { SandboxService } from "../sandboxes/service.ts";
import { SqliteStore } from "../store/sqlite-store.ts";
import type { Scope, TenantLimits } from "../store/store.ts";
import { ControlPlaneMetrics } from "../telemetry/metrics.ts";
import { TraceReader } from "../telemetry/traces.ts";
import { WebhookWorker } from "../webhooks/worker.ts";
import { ApiClient } from "./api-client.ts";
import { FakeNode } from "./fake-node.ts";

export async function inProcess<N extends FakeNode = FakeNode>(
  config: Partial<ControlPlaneConfig> = {},
  opts: { node?: N; jobs?: Partial<JobsConfig> } = {},
) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-cp-"));
  const dbFile = path.join(dir, "cp.db");
  const store = new SqliteStore(dbFile);
  const node = opts.node ?? (new FakeNode() as N);
  const nodes = new StaticNodes([node], { intervalMs: 200 });
  await nodes.poll();
  nodes.start();
  const cfg = { ...defaultConfig({}), ...config };
  const log = pino({ level: process.env["FIREBREAK_TEST_LOG"] ? "debug" : "silent" });
  const sandboxes = new SandboxService(store, nodes, cfg, log);
  const ingressTokens = IngressTokens.open(path.join(dir, "ingress-secret"));
  // The platform grant: the fake node takes the target as given.
  sandboxes.setPlatform(new PlatformTokens(ingressTokens), { address: "127.0.0.1", port: 3000 });
  // Jobs are served; their dispatcher runs only when a test starts it (jobs.start()).
  const jobs = new JobService({
    store,
    sandboxes,
    artifacts: new FileArtifactStore(path.join(dir, "artifacts")),
    config: { ...defaultJobsConfig({}), ...opts.jobs },
    controlPlane: cfg,
    log,
  });
  const metrics = new ControlPlaneMetrics(store, nodes);
  sandboxes.observe(metrics.observer());
  const traces = new TraceReader(initTracing(), nodes, store);
  const app = createApp({
    store,
    node: sandboxes.nodes,
    sandboxes,
    config: cfg,
    log,
    ingressTokens,
    metrics,
    traces,
    jobs,
  });
  // Webhook deliveries run only when a test starts them (webhooks.start()).
  const webhooks = new WebhookWorker({
    store,
    config: cfg.webhooks,
    log,
    onAttempt: (outcome) => metrics.webhookDeliveries.inc({ outcome }),
  });
  const api = await new ApiClient("http://in-process", (url, init) =>
    Promise.resolve(app.fetch(new Request(url, init))),
  ).init();

  let n = 0;
  /** A tenant with its own key (scopes default: sandboxes). */
  async function tenant(limits: Partial<TenantLimits> = {}, scopes: Scope[] = ["sandboxes"]) {
    const id = `t${++n}`;
    await store.createTenant({
      id,
      name: id,
      limits: { ...cfg.defaultLimits, ...limits },
      createdAt: new Date().toISOString(),
    });
    const { key, hash } = newApiKey();
    await store.createKey({
      id: `k${n}`,
      tenantId: id,
      name: id,
      hash,
      scopes,
      createdAt: new Date().toISOString(),
      revokedAt: null,
      createdByKey: null,
    });
    return { id, key, keyId: `k${n}`, api: api.withKey(key) };
  }

  return {
    app,
    api,
    store,
    dbFile,
    node,
    /** The node directory (poll() after changing the fake node's capacity or warm slots). */
    nodes,
    sandboxes,
    jobs,
    webhooks,
    ingressTokens,
    metrics,
    config: cfg,
    tenant,
    async close() {
      await webhooks.close();
      await jobs.close();
      await sandboxes.close({ endOn: [node.id] });
      await nodes.close();
      store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
