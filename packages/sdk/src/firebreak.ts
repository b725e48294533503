// Firebreak: the server-wide namespaces (templates, keys, tenants, usage)
// that are not about one sandbox.
import { type ConnectionOptions, resolveConnection } from "./connection.ts";
import { apiError, FirebreakApiError, NotFoundError } from "./errors.ts";
import { HttpClient } from "./http.ts";
import { Jobs } from "./jobs.ts";
import type {
  ApiKeyInfo,
  BuildProgress,
  CreatedApiKey,
  KeyScope,
  PrivateService,
  TemplateInfo,
  UsageGroup,
  UsageRecord,
} from "./types.ts";
import { Webhooks } from "./webhooks.ts";

/** A template spec, as in a template.json file (see the README). */
export interface TemplateSpec {
  name: string;
  debian?: { release?: string; packages?: string[] };
  files?: { src: string; dest: string; mode?: string }[];
  run?: string[];
  env?: Record<string, string>;
  user?: string;
  workdir?: string;
  start?: string;
  ready?: string;
  diskMib?: number;
  [key: string]: unknown;
}

export interface TemplateBuildOptions {
  /** Called for every progress line of the build. */
  onProgress?: (p: BuildProgress) => void;
  signal?: AbortSignal;
}

type BuildEvent =
  | ({ type: "progress" } & BuildProgress)
  | { type: "done"; template: TemplateInfo & Record<string, unknown> }
  | { type: "error"; error: { code: string; message: string; requestId?: string } };

export class Templates {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /**
   * Builds a template from a built-in name (e.g. "base") or a spec, streaming
   * progress; resolves with the built template (a cache hit when unchanged).
   * Needs the admin scope.
   */
  async build(
    nameOrSpec: string | TemplateSpec,
    opts: TemplateBuildOptions = {},
  ): Promise<TemplateInfo & Record<string, unknown>> {
    const json = typeof nameOrSpec === "string" ? { name: nameOrSpec } : { spec: nameOrSpec };
    for await (const ev of this.#http.stream<BuildEvent>("POST", "/v1/templates", {
      json,
      ...(opts.signal ? { signal: opts.signal } : {}),
    })) {
      if (ev.type === "progress") {
        const { type: _, ...p } = ev;
        opts.onProgress?.(p);
      } else if (ev.type === "done") return ev.template;
      else if (ev.type === "error") {
        throw apiError({
          code: ev.error?.code ?? "INTERNAL",
          message: ev.error?.message ?? "the template build failed",
          ...(ev.error?.requestId ? { requestId: ev.error.requestId } : {}),
        });
      }
    }
    throw new FirebreakApiError({
      code: "CONNECTION_FAILED",
      message:
        "the build's progress stream ended before the build did; see `firebreak template list` and the server's log",
    });
  }

  async list(): Promise<TemplateInfo[]> {
    return (await this.#http.json<{ templates: TemplateInfo[] }>("GET", "/v1/templates")).templates;
  }

  /** Deletes a template; false when there is none by that name. Needs the admin scope. */
  async delete(name: string): Promise<boolean> {
    try {
      await this.#http.empty("DELETE", `/v1/templates/${encodeURIComponent(name)}`);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }
}

export interface KeyCreateOptions {
  /** @default ["sandboxes"] (the server's default) */
  scopes?: KeyScope[];
  /** Tenant the key belongs to (admin only). @default the caller's tenant */
  tenantId?: string;
}

export class Keys {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /** Creates a key; the secret (`key`) is returned only here. */
  create(name: string, opts: KeyCreateOptions = {}): Promise<CreatedApiKey> {
    return this.#http.json<CreatedApiKey>("POST", "/v1/keys", { json: { name, ...opts } });
  }

  async list(): Promise<ApiKeyInfo[]> {
    return (await this.#http.json<{ keys: ApiKeyInfo[] }>("GET", "/v1/keys")).keys;
  }

  /** Revokes a key; false when there is no such key. */
  async revoke(id: string): Promise<boolean> {
    try {
      await this.#http.empty("DELETE", `/v1/keys/${encodeURIComponent(id)}`);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }
}

export interface TenantLimits {
  maxSandboxes?: number;
  maxVcpus?: number;
  maxMemoryMib?: number;
  requestsPerMinute?: number;
  /** Unrevoked API keys the tenant may hold. @default 100 */
  maxKeys?: number;
  /** Paused sandboxes' guest memory summed, in MiB. @default 32768 */
  maxPausedMib?: number;
}

export interface TenantInfo {
  id: string;
  name: string;
  limits?: TenantLimits;
  createdAt?: string;
  [key: string]: unknown;
}

export class Tenants {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /** Creates a tenant (admin scope). */
  create(name: string, opts: { limits?: TenantLimits } = {}): Promise<TenantInfo> {
    return this.#http.json<TenantInfo>("POST", "/v1/tenants", { json: { name, ...opts } });
  }

  async list(): Promise<TenantInfo[]> {
    return (await this.#http.json<{ tenants: TenantInfo[] }>("GET", "/v1/tenants")).tenants;
  }
}

export type UsageGroupBy = "tenant" | "template" | "root" | `metadata.${string}`;

export interface UsageQueryOptions {
  /** @default "tenant" (the server's default) */
  groupBy?: UsageGroupBy;
  from?: Date | string;
  to?: Date | string;
}

export class Usage {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /** Usage totals grouped by tenant, template, root sandbox or a metadata key. */
  async query(opts: UsageQueryOptions = {}): Promise<UsageGroup[]> {
    const iso = (d: Date | string | undefined) => (d instanceof Date ? d.toISOString() : d);
    const r = await this.#http.json<{ groups: UsageGroup[] }>("GET", "/v1/usage", {
      query: { groupBy: opts.groupBy, from: iso(opts.from), to: iso(opts.to) },
    });
    return r.groups;
  }

  /** Per-sandbox usage records (interim ones have `final: false`). */
  async records(opts: { sandboxId?: string; limit?: number } = {}): Promise<UsageRecord[]> {
    const r = await this.#http.json<{ records: UsageRecord[] }>("GET", "/v1/usage/records", {
      query: { sandboxId: opts.sandboxId, limit: opts.limit },
    });
    return r.records;
  }
}

/** Private services sandboxes bind by name in their egress policy. */
export class Services {
  readonly #http: HttpClient;
  /** @internal */
  constructor(http: HttpClient) {
    this.#http = http;
  }

  /** Declares or replaces a service (admin scope). */
  create(service: PrivateService): Promise<PrivateService> {
    return this.#http.json<PrivateService>("POST", "/v1/services", { json: service });
  }

  /** Admin keys: every service. Others: the ones their tenant may bind, credentials redacted. */
  async list(): Promise<PrivateService[]> {
    return (await this.#http.json<{ services: PrivateService[] }>("GET", "/v1/services")).services;
  }

  /** Removes a service (admin scope); false when there is no such service. */
  async delete(name: string): Promise<boolean> {
    try {
      await this.#http.empty("DELETE", `/v1/services/${encodeURIComponent(name)}`);
      return true;
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }
}

export interface HealthInfo {
  ok: boolean;
  accelerator: "tcg" | "kvm";
  node: Record<string, unknown>;
}

/** Server-wide operations: templates, API keys, tenants, usage, private services, jobs. */
export class Firebreak {
  readonly templates: Templates;
  /** Batch jobs: run a command to completion over many inputs, each task in its own sandbox. */
  readonly jobs: Jobs;
  readonly keys: Keys;
  readonly tenants: Tenants;
  readonly usage: Usage;
  readonly services: Services;
  /** Webhook subscriptions: sandbox events and final usage records POSTed to a URL, signed. */
  readonly webhooks: Webhooks;
  readonly #http: HttpClient;

  constructor(opts: ConnectionOptions = {}) {
    this.#http = new HttpClient(resolveConnection(opts));
    this.templates = new Templates(this.#http);
    this.keys = new Keys(this.#http);
    this.tenants = new Tenants(this.#http);
    this.usage = new Usage(this.#http);
    this.services = new Services(this.#http);
    this.jobs = new Jobs(this.#http);
    this.webhooks = new Webhooks(this.#http);
  }

  /** The server's health and accelerator. */
  health(): Promise<HealthInfo> {
    return this.#http.json<HealthInfo>("GET", "/v1/health");
  }
}
