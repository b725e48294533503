// Quota and admission verdicts shared by both stores: each store counts in its
// own transaction, these decide and word the refusal, so the two cannot drift.
import type { KeyInsertResult, NodeBudget, QuotaResult, TenantLimits } from "./store.ts";

/** A tenant's live sandboxes, and the vCPUs and memory of those holding them. */
export interface TenantUse {
  live: number;
  vcpus: number;
  memoryMib: number;
}

/** Sandboxes holding CPU and memory on a node (every tenant), and their vCPUs and memory. */
export interface NodeUse {
  sandboxes: number;
  vcpus: number;
  memoryMib: number;
}

type Shape = { vcpus: number; memoryMib: number };

export function tenantVerdict(use: TenantUse, shape: Shape, count: number, l: TenantLimits): QuotaResult {
  if (use.live + count > l.maxSandboxes) {
    return {
      ok: false,
      limit: "maxSandboxes",
      message: `quota exceeded: maxSandboxes is ${l.maxSandboxes} and this tenant has ${use.live} live sandboxes (paused ones count); kill one or ask for a higher limit`,
    };
  }
  if (use.vcpus + shape.vcpus * count > l.maxVcpus) {
    return {
      ok: false,
      limit: "maxVcpus",
      message: `quota exceeded: maxVcpus is ${l.maxVcpus}, ${use.vcpus} in use, ${shape.vcpus * count} requested; use fewer vCPUs or kill a sandbox`,
    };
  }
  if (use.memoryMib + shape.memoryMib * count > l.maxMemoryMib) {
    return {
      ok: false,
      limit: "maxMemoryMib",
      message: `quota exceeded: maxMemoryMib is ${l.maxMemoryMib}, ${use.memoryMib} MiB in use, ${shape.memoryMib * count} MiB requested; use less memory or kill a sandbox`,
    };
  }
  return { ok: true };
}

export function nodeVerdict(use: NodeUse, shape: Shape, count: number, node: NodeBudget): QuotaResult {
  const wantVcpus = shape.vcpus * count;
  if (use.vcpus + wantVcpus > node.vcpus) {
    return {
      ok: false,
      limit: "nodeVcpus",
      message: `node ${node.nodeId} is full: ${use.vcpus} vCPUs committed of ${Math.floor(node.vcpus)} it may commit, ${wantVcpus} requested; retry later or use fewer vCPUs`,
    };
  }
  const committedMib = use.memoryMib + use.sandboxes * node.overheadMib;
  const wantMib = (shape.memoryMib + node.overheadMib) * count;
  if (committedMib + wantMib > node.memoryMib) {
    return {
      ok: false,
      limit: "nodeMemoryMib",
      message: `node ${node.nodeId} is full: ${committedMib} MiB committed of ${Math.floor(node.memoryMib)} MiB it may commit, ${wantMib} MiB requested (guest memory + ${node.overheadMib} MiB each); retry later or use less memory`,
    };
  }
  return { ok: true };
}

/** createKeyWithinLimit's refusals (null: the key may be inserted). */
export function keyVerdict(
  minterRevoked: boolean | undefined,
  minterId: string | null,
  held: number,
  maxKeys: number,
  tenantId: string,
): Exclude<KeyInsertResult, { ok: true }> | null {
  // minterRevoked undefined: the minter does not exist (treated as revoked).
  if (minterId !== null && minterRevoked !== false) {
    return {
      ok: false,
      reason: "minter_revoked",
      message: `API key ${minterId} was revoked; use another key`,
    };
  }
  if (held >= maxKeys) {
    return {
      ok: false,
      reason: "maxKeys",
      message: `quota exceeded: maxKeys is ${maxKeys} and tenant ${tenantId} holds ${held} unrevoked keys; revoke one (DELETE /v1/keys/{id}) or ask for a higher limit`,
    };
  }
  return null;
}
