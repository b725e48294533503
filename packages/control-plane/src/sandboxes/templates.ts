// Who may boot, build and delete which template.
//
// Template names are one name space on a node (the node keeps one image tag
// per name), so ownership is a record per name in the store:
// - a name with no record, or a record without a tenant, is an operator
//   template (built by root with the local CLI, built-in, or built by an admin
//   key): every tenant may boot it; only admin keys rebuild or delete it;
// - a name with a tenant is that tenant's: only it (and admin keys) may see,
//   boot, rebuild or delete it. To every other tenant it does not exist:
//   booting or deleting it answers TEMPLATE_NOT_FOUND, exactly like a name
//   nobody has. Building it answers CONFLICT (the name is taken): names are
//   shared, so that one fact is visible.
// Built-in template names (templates/<name>/ in the checkout) are reserved
// for the operator even before they are built.
import { builtinTemplates } from "@firebreak/node-agent";
import { ApiError } from "../errors.ts";
import type { NodeClient, TemplateInfo } from "../node/node-client.ts";

/** Where templates live: one node, or every node of the control plane. */
export type TemplateSource = Pick<NodeClient, "hasTemplate" | "listTemplates">;

import type { Store, TemplateOwner } from "../store/store.ts";

export interface TemplateCaller {
  keyId: string;
  tenant: { id: string };
  admin?: boolean;
}

export interface TemplateBuild {
  run<T>(build: () => Promise<T>): Promise<T>;
}

/** A template as the API shows it: the node's facts and its owner (null: operator). */
export type OwnedTemplate = TemplateInfo & { tenantId: string | null };

const notFound = (name: string) =>
  new ApiError(
    "TEMPLATE_NOT_FOUND",
    `no built template named ${name}; list them with GET /v1/templates or build it with POST /v1/templates`,
  );

export class TemplateAccess {
  readonly #store: Store;
  readonly #node: TemplateSource;
  /** Names with a build in flight in this process (one build per name at a time). */
  readonly #building = new Set<string>();

  constructor(store: Store, node: TemplateSource) {
    this.#store = store;
    this.#node = node;
  }

  /** The owning tenant, or null for an operator template (no record, or a record without a tenant). */
  async #owner(name: string): Promise<string | null> {
    return (await this.#store.getTemplateOwner(name))?.tenantId ?? null;
  }

  #sees(owner: string | null, caller: TemplateCaller): boolean {
    return owner === null || owner === caller.tenant.id || caller.admin === true;
  }

  /** INVARIANT: true only for a built template that is the operator's, the caller's tenant's, or any for admins. */
  async readable(name: string, caller: TemplateCaller): Promise<boolean> {
    if (!this.#sees(await this.#owner(name), caller)) return false;
    return this.#node.hasTemplate(name);
  }

  /**
   * The shape a create of `name` gets when it names none: the template's own
   * (by its name or an alias), else 1 vCPU and 256 MiB.
   */
  async defaultShape(name: string): Promise<{ vcpus: number; memoryMib: number }> {
    const t = (await this.#node.listTemplates()).find((x) => x.name === name || x.aliases?.includes(name));
    return t?.shape ?? { vcpus: 1, memoryMib: 256 };
  }

  /** Templates the caller may boot, with their owner. */
  async list(caller: TemplateCaller): Promise<OwnedTemplate[]> {
    const owners = new Map((await this.#store.listTemplateOwners()).map((o) => [o.name, o.tenantId]));
    return (await this.#node.listTemplates())
      .map((t) => ({ ...t, tenantId: owners.get(t.name) ?? null }))
      .filter((t) => this.#sees(t.tenantId, caller));
  }

  /**
   * Starts a build of `name` for the caller, or refuses it (before anything
   * is built, so the refusal is an HTTP error): a non-admin key builds into
   * its tenant's name (new, or its own); an admin key builds operator
   * templates (or rebuilds a tenant's, which stays that tenant's). The name is
   * claimed now; `run` builds, and releases a new claim if the build fails.
   * Call `run` exactly once.
   */
  async beginBuild(name: string, caller: TemplateCaller): Promise<TemplateBuild> {
    const builtin = (await builtinTemplates()).includes(name);
    if (!caller.admin && builtin) {
      throw new ApiError(
        "FORBIDDEN",
        `${name} is a built-in (operator) template; only admin keys build it. Choose another name for your own template`,
      );
    }
    if (this.#building.has(name)) {
      throw new ApiError("CONFLICT", `a build of template ${name} is already running; wait for it to finish`);
    }
    this.#building.add(name);
    let claimed: boolean;
    try {
      claimed = await this.#claim(name, caller);
    } catch (e) {
      this.#building.delete(name);
      throw e;
    }
    return {
      run: async (build) => {
        try {
          return await build();
        } catch (e) {
          if (claimed && !(await this.#node.hasTemplate(name))) await this.#store.removeTemplateOwner(name);
          throw e;
        } finally {
          this.#building.delete(name);
        }
      },
    };
  }

  /** Records who owns `name` for this build; true when the record is new. */
  async #claim(name: string, caller: TemplateCaller): Promise<boolean> {
    const record = await this.#store.getTemplateOwner(name);
    const exists = await this.#node.hasTemplate(name);
    if (caller.admin) {
      if (record) return false;
      return (await this.#store.claimTemplate(this.#record(name, null, caller.keyId))).created;
    }
    if (!record) {
      if (exists) throw operatorOnly(name); // on the node without an owner: the operator's
    } else if (record.tenantId === null) {
      throw operatorOnly(name);
    } else if (record.tenantId !== caller.tenant.id) {
      if (exists) {
        throw new ApiError(
          "CONFLICT",
          `the template name ${name} is taken (names are shared by all tenants); choose another name`,
        );
      }
      // A stale claim of another tenant (its template is gone, no build runs): taken over.
      await this.#store.removeTemplateOwner(name);
    }
    const claim = await this.#store.claimTemplate(this.#record(name, caller.tenant.id, caller.keyId));
    if (claim.owner.tenantId !== caller.tenant.id) {
      throw new ApiError("CONFLICT", `the template name ${name} is taken; choose another name`);
    }
    return claim.created;
  }

  /**
   * Checks that the caller may delete `name`, then deletes it with `remove`
   * and forgets its owner. Another tenant's template is TEMPLATE_NOT_FOUND;
   * an operator template is FORBIDDEN for non-admin keys.
   */
  async delete(name: string, caller: TemplateCaller, remove: () => Promise<void>): Promise<void> {
    const owner = await this.#owner(name);
    if (!this.#sees(owner, caller) || !(await this.#node.hasTemplate(name))) throw notFound(name);
    if (owner === null && !caller.admin) throw operatorOnly(name);
    if (this.#building.has(name)) {
      throw new ApiError("CONFLICT", `a build of template ${name} is running; delete it when it is done`);
    }
    await remove();
    await this.#store.removeTemplateOwner(name);
  }

  #record(name: string, tenantId: string | null, keyId: string): TemplateOwner {
    return { name, tenantId, createdAt: new Date().toISOString(), createdByKey: keyId };
  }
}

function operatorOnly(name: string): ApiError {
  return new ApiError(
    "FORBIDDEN",
    `${name} is an operator template: every tenant may use it, only admin keys rebuild or delete it. Choose another name for your own template`,
  );
}
