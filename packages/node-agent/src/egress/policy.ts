// The egress policy object: one per sandbox, set at create time and editable
// while it runs. See README.md for the semantics and the hard walls.
import { z } from "zod";
import { formatIpv4, parseIpv4 } from "../network/address-pool.ts";
import { cidrBounds, specialRangesOverlapping, wallHolding } from "../network/walls.ts";
import { EgressError } from "./errors.ts";

/**
 * Who made a policy. A tenant's policy reaches public addresses only; an
 * admin's may also open private and special-purpose ranges (never a hard wall).
 */
export type PolicyGrant = "tenant" | "admin";

export interface AllowRule {
  /** IPv4 CIDR ("10.0.0.0/8") or address ("192.0.2.7"). */
  cidr: string;
  /** Destination ports; "any" (default) for every port. */
  ports?: number[] | "any";
  /** Omitted or "any": both TCP and UDP (and, with ports "any", every protocol). */
  protocol?: "tcp" | "udp" | "any";
}

export interface EgressPolicy {
  /** Public internet (everything outside the private ranges and the walls). @default false */
  internet?: boolean;
  /** CIDR/port rules; they may open private ranges, never a wall. @default [] */
  allow?: AllowRule[];
  /** Names the platform resolver answers: "api.example.com", or "*.example.com" for its subdomains. @default [] */
  allowDomains?: string[];
  /** Names of private services (operator registry) bound to this sandbox. @default [] */
  services?: string[];
  /** Optional cap on each direction, in kilobytes per second. @default unlimited */
  bandwidthKBps?: number;
  /**
   * Sandbox networks (per tenant) this sandbox joins: members reach each other
   * at `<sandboxId>.<network>.fb` on every port but the guest agent's. @default []
   */
  networks?: string[];
  /**
   * Who made the policy. SECURITY: only the node's own callers decide this; the
   * control plane sets it from the API key (admin scope) and refuses "admin"
   * from anyone else. @default "tenant"
   */
  grantedBy?: PolicyGrant;
  /**
   * The platform grant: the sandbox reaches the Firebreak API at
   * `platform.firebreak.internal` (through the node's proxy, which adds the
   * sandbox's own credential) to create, use and kill its own descendants.
   * Only where the node is given a platform target at create. @default false
   */
  platform?: boolean;
}

/** A validated policy with every default filled and every CIDR canonical. */
export interface NormalizedPolicy {
  internet: boolean;
  allow: { cidr: string; ports: number[] | "any"; protocol: "tcp" | "udp" | "any" }[];
  allowDomains: string[];
  services: string[];
  bandwidthKBps: number | undefined;
  networks: string[];
  /** "admin" when an admin made it; absent (undefined) for a tenant's policy. */
  grantedBy: "admin" | undefined;
  /** The platform grant; present (true) only when granted. */
  platform?: true;
}

export const DEFAULT_POLICY: NormalizedPolicy = Object.freeze({
  internet: false,
  allow: [],
  allowDomains: [],
  services: [],
  bandwidthKBps: undefined,
  networks: [],
  grantedBy: undefined,
});

const LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
export const DOMAIN_RE = new RegExp(`^${LABEL}(?:\\.${LABEL})+$`);
const DOMAIN_PATTERN_RE = new RegExp(`^(?:\\*\\.)?${LABEL}(?:\\.${LABEL})+$`);

const port = z.number().int().min(1).max(65_535);
/** The policy's wire schema (also used by the control plane's API); CIDRs are checked by normalizePolicy. */
export const EgressPolicySchema = z
  .object({
    internet: z.boolean().optional(),
    allow: z
      .array(
        z
          .object({
            cidr: z.string().max(18),
            ports: z.union([z.literal("any"), z.array(port).min(1).max(64)]).optional(),
            protocol: z.enum(["tcp", "udp", "any"]).optional(),
          })
          .strict(),
      )
      .max(256)
      .optional(),
    allowDomains: z
      .array(
        z
          .string()
          .max(253)
          .transform((d) => d.toLowerCase().replace(/\.$/, ""))
          .refine((d) => DOMAIN_PATTERN_RE.test(d), {
            message: 'must be a domain name such as "api.example.com" or "*.example.com"',
          }),
      )
      .max(256)
      .optional(),
    services: z
      .array(
        z
          .string()
          .max(253)
          .transform((d) => d.toLowerCase()),
      )
      .max(64)
      .optional(),
    bandwidthKBps: z.number().int().min(1).max(10_000_000).optional(),
    networks: z
      .array(
        z
          .string()
          .regex(
            /^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$/,
            "must be 1-32 lowercase letters, digits or dashes",
          ),
      )
      .max(8)
      .optional(),
    grantedBy: z.enum(["tenant", "admin"]).optional(),
    platform: z.boolean().optional(),
  })
  .strict();

/** Canonical "a.b.c.d/len" with host bits cleared; throws EGRESS_POLICY_INVALID. */
export function canonicalCidr(text: string): string {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(text);
  const len = m ? Number(m[2] ?? "32") : Number.NaN;
  let addr: number;
  try {
    addr = m && len <= 32 ? parseIpv4(m[1]!) : Number.NaN;
  } catch {
    addr = Number.NaN;
  }
  if (Number.isNaN(addr)) {
    throw new EgressError(
      "EGRESS_POLICY_INVALID",
      `allow: ${JSON.stringify(text)} is not an IPv4 CIDR such as "10.0.0.0/8" or "192.0.2.7"`,
    );
  }
  const size = 2 ** (32 - len);
  return `${formatIpv4(addr - (addr % size))}/${len}`;
}

/** Validates a policy from a caller (API, SDK); fills defaults. Throws EgressError. */
export function normalizePolicy(input: unknown): NormalizedPolicy {
  const parsed = EgressPolicySchema.safeParse(input ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new EgressError(
      "EGRESS_POLICY_INVALID",
      `egress policy: ${issue.path.join(".") || "(root)"} ${issue.message}`,
    );
  }
  const p = parsed.data;
  const grantedBy = p.grantedBy === "admin" ? "admin" : undefined;
  const allow = (p.allow ?? []).map((r, i) => {
    const cidr = canonicalCidr(r.cidr);
    checkReach(cidr, `allow.${i}.cidr`, grantedBy ?? "tenant");
    return {
      cidr,
      ports: r.ports === undefined || r.ports === "any" ? "any" : [...new Set(r.ports)].sort((a, b) => a - b),
      protocol: r.protocol ?? "any",
    } as const;
  });
  return {
    internet: p.internet ?? false,
    allow,
    allowDomains: [...new Set(p.allowDomains ?? [])],
    services: [...new Set(p.services ?? [])],
    bandwidthKBps: p.bandwidthKBps,
    networks: [...new Set(p.networks ?? [])],
    grantedBy,
    ...(p.platform ? { platform: true as const } : {}),
  };
}

/**
 * SECURITY: a tenant's rule may not touch any special-purpose range (private,
 * CGNAT, link-local, metadata, loopback, documentation, ...); an admin's may,
 * but a rule that lies wholly inside a hard wall is refused too (it could never
 * take effect). Walls hold in the namespace's table whatever passes here.
 */
function checkReach(cidr: string, field: string, grant: PolicyGrant): void {
  const wall = wallHolding(cidr);
  if (wall) {
    throw new EgressError(
      "EGRESS_CIDR_RESERVED",
      `egress policy: ${field} ${cidr} is inside ${wall.cidr} (${wall.name}), a hard wall no policy can open`,
    );
  }
  if (grant === "admin") return;
  const hits = specialRangesOverlapping(cidr);
  const hit = hits.find((h) => !h.wall) ?? hits[0];
  if (hit) {
    throw new EgressError(
      "EGRESS_CIDR_RESERVED",
      `egress policy: ${field} ${cidr} overlaps ${hit.cidr} (${hit.name}); a tenant's policy reaches public addresses only (use "internet": true for all of them)${
        hit.wall
          ? `, and ${hit.cidr} is a hard wall no policy opens`
          : "; an admin can grant private ranges (a policy made with an admin key, or a private service)"
      }`,
    );
  }
}

/** Does one of the policy's allow rules contain `addr`? */
export function allowCovers(policy: NormalizedPolicy, addr: number): boolean {
  return policy.allow.some((r) => {
    const [first, last] = cidrBounds(r.cidr);
    return addr >= first && addr <= last;
  });
}

/** Does `name` match one of the allowed patterns? "*.x.y" matches "a.x.y" and "a.b.x.y", not "x.y". */
export function domainAllowed(patterns: readonly string[], name: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, "");
  for (const p of patterns) {
    if (p.startsWith("*.")) {
      if (n.endsWith(p.slice(1)) && n.length > p.length - 1) return true;
    } else if (p === n) return true;
  }
  return false;
}
