// Private services an operator declares (`postgres.internal` -> 10.1.2.3:5432),
// kept in one root-only file in the state dir. Sandboxes bind them by name
// through their egress policy; nothing else on that network becomes reachable.
import fs from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { formatIpv4, parseIpv4 } from "../network/address-pool.ts";
import { EgressError } from "./errors.ts";
import { DOMAIN_RE } from "./policy.ts";

export interface PrivateService {
  /** DNS name sandboxes use, e.g. "postgres.internal". */
  name: string;
  /** IPv4 address the host reaches the service at. */
  address: string;
  port: number;
  /** "tcp": plain DNAT. "http": through the node's HTTP proxy (needed for `inject`). */
  protocol: "tcp" | "http";
  /** Tenants allowed to bind it; absent: every tenant. */
  tenants?: string[];
  /**
   * A header the host-side proxy adds to every request (replacing any the
   * guest sent). SECURITY: the value never enters the guest. Only with "http".
   */
  inject?: { header: string; value: string };
}

const schema = z
  .object({
    name: z
      .string()
      .max(253)
      .refine((n) => DOMAIN_RE.test(n), {
        message: 'must be a lowercase DNS name such as "postgres.internal"',
      }),
    address: z.string().refine(
      (a) => {
        try {
          return formatIpv4(parseIpv4(a)) === a;
        } catch {
          return false;
        }
      },
      { message: "must be an IPv4 address" },
    ),
    port: z.number().int().min(1).max(65_535),
    protocol: z.enum(["tcp", "http"]),
    tenants: z.array(z.string().min(1).max(128)).max(1000).optional(),
    inject: z
      .object({
        header: z.string().regex(/^[A-Za-z0-9-]{1,64}$/, "must be an HTTP header name"),
        value: z
          .string()
          .max(8192)
          .regex(/^[^\r\n\0]*$/, "must not contain line breaks"),
      })
      .strict()
      .optional(),
  })
  .strict()
  .refine((s) => !s.inject || s.protocol === "http", {
    message: 'inject needs protocol "http" (the proxy adds the header)',
  });

export const SERVICES_FILE = "services.json";

/** The operator's service registry. One per node; the file is rewritten atomically (mode 0600). */
export class ServiceRegistry {
  readonly file: string | undefined;
  readonly #services = new Map<string, PrivateService>();

  private constructor(file: string | undefined) {
    this.file = file;
  }

  /** Loads `<stateDir>/services.json` (missing: empty). Without a state dir, the registry lives in memory. */
  static async open(stateDir?: string): Promise<ServiceRegistry> {
    const reg = new ServiceRegistry(stateDir ? path.join(stateDir, SERVICES_FILE) : undefined);
    if (reg.file) {
      let text: string | undefined;
      try {
        text = await fs.readFile(reg.file, "utf8");
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
      }
      if (text) {
        const list = JSON.parse(text) as { services?: unknown[] };
        for (const s of list.services ?? []) {
          const v = ServiceRegistry.validate(s);
          reg.#services.set(v.name, v);
        }
      }
    }
    return reg;
  }

  static validate(input: unknown): PrivateService {
    const r = schema.safeParse(input);
    if (!r.success) {
      const issue = r.error.issues[0]!;
      throw new EgressError(
        "EGRESS_SERVICE_INVALID",
        `private service: ${issue.path.join(".") || "(root)"} ${issue.message}`,
      );
    }
    return r.data as PrivateService;
  }

  list(): PrivateService[] {
    return [...this.#services.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): PrivateService | undefined {
    return this.#services.get(name.toLowerCase());
  }

  /** Adds or replaces a service. Sandboxes already bound keep the old definition until their policy is updated. */
  async put(input: PrivateService): Promise<PrivateService> {
    const s = ServiceRegistry.validate(input);
    this.#services.set(s.name, s);
    await this.#save();
    return s;
  }

  /** Returns false when there was no such service (expected outcome). */
  async remove(name: string): Promise<boolean> {
    const had = this.#services.delete(name.toLowerCase());
    if (had) await this.#save();
    return had;
  }

  /** The service a sandbox of `tenant` may bind, or an EgressError saying why not. */
  resolveBinding(name: string, tenant: string | undefined): PrivateService {
    const s = this.get(name);
    if (!s) {
      throw new EgressError(
        "EGRESS_SERVICE_UNKNOWN",
        `no private service named ${JSON.stringify(name)}; the operator declares services in the registry`,
      );
    }
    if (s.tenants && !(tenant !== undefined && s.tenants.includes(tenant))) {
      throw new EgressError(
        "EGRESS_SERVICE_FORBIDDEN",
        `tenant ${JSON.stringify(tenant ?? "(none)")} may not bind service ${s.name}; ask the operator to add it to the service's tenants`,
      );
    }
    return s;
  }

  async #save(): Promise<void> {
    if (!this.file) return;
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    // SECURITY: injected credentials live here: root-only.
    await fs.writeFile(tmp, `${JSON.stringify({ services: this.list() }, null, 2)}\n`, { mode: 0o600 });
    await fs.rename(tmp, this.file);
  }
}
