// The platform grant (policy `platform: true`, off by default): a sandbox
// reaches the Firebreak API from inside, as itself, to create, use and kill
// its own descendants within its tenant's quota, so a fan-out builds its
// tree (and its cost report) without the caller passing keys around.
//
// How: the node binds `platform.firebreak.internal` in the sandbox's
// namespace to a proxy that forwards to this control plane and adds the
// sandbox's platform credential (header x-firebreak-platform-token). The
// credential is derived (HMAC of the sandbox id with the ingress secret,
// label "platform"), never stored, and never given to the guest.
//
// SECURITY: what a sandbox caller may do is narrower than any API key:
// - only /v1/sandboxes routes (api/app.ts refuses the rest with FORBIDDEN);
// - only sandboxes it descends from itself (another one answers NOT_FOUND,
//   as another tenant's would);
// - creates are its children (parent and root recorded), within its tenant's
//   quota, with an egress policy no wider than its own (policyWithin), never
//   an admin's;
// - only while it runs: an ended or paused sandbox's credential is refused.
import { timingSafeEqual } from "node:crypto";
import type { NormalizedPolicy } from "@firebreak/node-agent";
import type { IngressTokens } from "../ingress/ingress-token.ts";
import type { SandboxRecord, Store } from "../store/store.ts";

const TOKEN_RE = /^fbp_([a-z0-9]{1,64})_([0-9a-f]{64})$/;
/** How far up a lineage the descendant check walks (deeper trees are refused). */
export const MAX_TREE_DEPTH = 64;

export class PlatformTokens {
  readonly #tokens: IngressTokens;

  constructor(tokens: IngressTokens) {
    this.#tokens = tokens;
  }

  /** The platform credential of a sandbox: `fbp_<id>_<64 hex>`. */
  tokenFor(sandboxId: string): string {
    return `fbp_${sandboxId}_${this.#tokens.derive("platform", sandboxId)}`;
  }

  /** The sandbox id a presented credential is valid for (constant time in its content), or undefined. */
  verify(token: string | undefined): string | undefined {
    const m = token ? TOKEN_RE.exec(token) : null;
    if (!m) return undefined;
    const want = Buffer.from(this.tokenFor(m[1]!));
    const got = Buffer.from(token!);
    return got.length === want.length && timingSafeEqual(got, want) ? m[1] : undefined;
  }
}

/** Whether `rec` descends from `ancestorId` (its parent, its parent's parent, ...; not itself). */
export async function isDescendant(store: Store, ancestorId: string, rec: SandboxRecord): Promise<boolean> {
  let cur: SandboxRecord | undefined = rec;
  for (let depth = 0; cur?.parentId && depth < MAX_TREE_DEPTH; depth++) {
    if (cur.parentId === ancestorId) return true;
    cur = await store.getSandbox(cur.parentId);
  }
  return false;
}

/**
 * Why `child` would reach more than `parent` (undefined: it does not). A
 * sandbox creating a child through the platform grant cannot widen its own
 * egress: every allow rule, domain, service and network of the child must be
 * one the parent has; internet, platform and bandwidth no more than its own.
 */
export function policyWithin(child: NormalizedPolicy, parent: NormalizedPolicy): string | undefined {
  if (child.grantedBy === "admin") return "an admin's policy";
  if (child.internet && !parent.internet) return "internet: true (the creating sandbox has no internet)";
  if (child.platform && !parent.platform) return "platform: true";
  const rule = (r: NormalizedPolicy["allow"][number]) => JSON.stringify([r.cidr, r.ports, r.protocol]);
  const parentRules = new Set(parent.allow.map(rule));
  for (const r of child.allow) if (!parentRules.has(rule(r))) return `allow ${r.cidr}`;
  for (const d of child.allowDomains) if (!parent.allowDomains.includes(d)) return `allowDomains ${d}`;
  for (const s of child.services) if (!parent.services.includes(s)) return `services ${s}`;
  for (const n of child.networks) if (!parent.networks.includes(n)) return `networks ${n}`;
  if (parent.bandwidthKBps !== undefined && (child.bandwidthKBps ?? Infinity) > parent.bandwidthKBps) {
    return `bandwidthKBps above ${parent.bandwidthKBps}`;
  }
  return undefined;
}
