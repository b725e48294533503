// What every route handler can reach: the request's id and caller, and the services.
import type { Logger } from "pino";
import type { ControlPlaneConfig } from "../config.ts";
import type { IngressTokens } from "../ingress/ingress-token.ts";
import type { JobService } from "../jobs/job-service.ts";
import type { NodesFacade } from "../node/directory.ts";
import type { SandboxService } from "../sandboxes/service.ts";
import type { SandboxRecord, Scope, Store, Tenant } from "../store/store.ts";
import type { ControlPlaneMetrics } from "../telemetry/metrics.ts";
import type { TraceReader } from "../telemetry/traces.ts";

export interface AuthedCaller {
  keyId: string;
  tenant: Tenant;
  scopes: Scope[];
  /**
   * A sandbox calling through its platform grant (sandboxes/platform.ts): it
   * acts on its own descendants only, and what it creates is its child.
   */
  sandbox?: SandboxRecord;
}

export interface AppEnv {
  Variables: {
    requestId: string;
    log: Logger;
    caller: AuthedCaller;
  };
}

export interface Deps {
  store: Store;
  /** The nodes as a whole (health, capacity, services, template builds): `sandboxes.nodes`. */
  node: NodesFacade;
  sandboxes: SandboxService;
  config: ControlPlaneConfig;
  log: Logger;
  /** The sandboxes' ingress tokens (ingress/ingress-token.ts). */
  ingressTokens: IngressTokens;
  /** Jobs (src/jobs); without it the /v1/jobs routes are not served. */
  jobs?: JobService;
  /** Prometheus metrics (GET /metrics); absent: no /metrics route. */
  metrics?: ControlPlaneMetrics;
  /** Traces kept here and on the nodes (GET /v1/traces/{id}); absent: no trace routes and no request spans. */
  traces?: TraceReader;
}
