// E2B's network settings (`allow_internet_access`, `network.allowOut`,
// `network.denyOut`) as a Firebreak egress policy. The walls do not move: the
// policy is a tenant's, so private ranges stay closed whatever E2B's lists say
// (normalizePolicy refuses them), and "all traffic" means the public internet.
import { isIP } from "node:net";
import { ApiError } from "../errors.ts";
import type { EgressPolicy, NormalizedPolicy } from "../node/node-client.ts";

/** E2B's "all traffic" selector (`({allTraffic}) => [allTraffic]` in the SDK). */
export const ALL_TRAFFIC = "0.0.0.0/0";

export interface E2bEgress {
  allowInternetAccess?: boolean | undefined;
  allowOut?: string[] | undefined;
  denyOut?: string[] | undefined;
}

const isCidr = (s: string) => {
  const [addr, bits, ...rest] = s.split("/");
  if (rest.length || !addr || isIP(addr) !== 4) return false;
  return bits === undefined || (/^\d{1,2}$/.test(bits) && Number(bits) <= 32);
};

/**
 * The egress policy for E2B settings. E2B allows all egress unless told
 * otherwise; `internetDefault` (server setting) is what "nothing said" means.
 * Allowed entries win over denied ones, as in E2B. Denying single addresses
 * while the rest of the internet stays open has no Firebreak policy yet: 501.
 */
export function e2bEgressPolicy(e: E2bEgress, internetDefault: boolean, field = "network"): EgressPolicy {
  const deny = e.denyOut ?? [];
  for (const [i, d] of deny.entries()) {
    if (!isCidr(d)) {
      throw new ApiError(
        "VALIDATION_FAILED",
        `${field}.denyOut.${i}: ${JSON.stringify(d)} is not an IPv4 address or CIDR (domain names cannot be denied)`,
      );
    }
  }
  const denyAll = deny.includes(ALL_TRAFFIC);
  let internet = e.allowInternetAccess ?? internetDefault;
  if (denyAll) internet = false;
  const specificDeny = deny.filter((d) => d !== ALL_TRAFFIC);
  if (specificDeny.length && internet) {
    throw new ApiError(
      "NOT_IMPLEMENTED",
      `${field}.denyOut: denying single addresses (${specificDeny.slice(0, 3).join(", ")}) while the rest of the internet stays open is not served by Firebreak; deny all traffic (${ALL_TRAFFIC}) and list what to allow in allowOut instead`,
    );
  }
  const allow: NonNullable<EgressPolicy["allow"]> = [];
  const allowDomains: string[] = [];
  for (const a of e.allowOut ?? []) {
    if (isCidr(a)) {
      if (a !== ALL_TRAFFIC) allow.push({ cidr: a });
      else internet = true;
    } else allowDomains.push(a);
  }
  return {
    internet,
    ...(internet ? {} : { allow }),
    ...(allowDomains.length ? { allowDomains } : {}),
  };
}

/** E2B's view of a policy (getInfo's network and allowInternetAccess). */
export function e2bNetworkView(p: NormalizedPolicy | null): {
  allowInternetAccess: boolean;
  allowOut: string[];
  denyOut: string[];
} {
  if (!p) return { allowInternetAccess: false, allowOut: [], denyOut: [ALL_TRAFFIC] };
  const allowOut = [...p.allow.map((r) => r.cidr), ...p.allowDomains];
  return { allowInternetAccess: p.internet, allowOut, denyOut: p.internet ? [] : [ALL_TRAFFIC] };
}
