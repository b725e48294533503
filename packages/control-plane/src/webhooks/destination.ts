// Where a webhook may send: an http(s) URL whose host is a public address.
// SECURITY: a webhook is a request the control plane makes on a tenant's
// behalf, from inside the operator's network. Without this check a tenant
// could aim it at loopback (the API itself, the node daemon), link-local
// (cloud metadata), private networks or the host's own addresses (SSRF).
// The check runs at create (a clear error early) and again at every delivery
// on the addresses the connection is then made to (a name that resolved to a
// public address at create may resolve to 127.0.0.1 later: DNS rebinding).
import dns from "node:dns";
import net from "node:net";
import os from "node:os";
import { SPECIAL_PURPOSE_RANGES } from "@firebreak/node-agent";

/** Longest webhook URL accepted. */
export const MAX_WEBHOOK_URL_CHARS = 2048;

/** How long a create waits for the URL's host to resolve. */
const CREATE_LOOKUP_TIMEOUT_MS = 2_000;

/** IPv6 ranges that are not the public internet (IPv4-embedding forms are checked as IPv4). */
const V6_RANGES: readonly { prefix: string; bits: number; name: string }[] = [
  { prefix: "::", bits: 128, name: "unspecified" },
  { prefix: "::1", bits: 128, name: "loopback" },
  { prefix: "100::", bits: 64, name: "discard-only, RFC 6666" },
  { prefix: "2001:db8::", bits: 32, name: "documentation, RFC 3849" },
  { prefix: "2001::", bits: 23, name: "IETF protocol assignments, RFC 2928" },
  { prefix: "fc00::", bits: 7, name: "unique local, RFC 4193" },
  { prefix: "fe80::", bits: 10, name: "link-local, RFC 4291" },
  { prefix: "fec0::", bits: 10, name: "site-local (deprecated), RFC 3879" },
  { prefix: "ff00::", bits: 8, name: "multicast, RFC 4291" },
];

const blocked = new net.BlockList();
for (const r of SPECIAL_PURPOSE_RANGES) {
  const [addr, bits] = r.cidr.split("/");
  blocked.addSubnet(addr!, Number(bits), "ipv4");
}
for (const r of V6_RANGES) blocked.addSubnet(r.prefix, r.bits, "ipv6");

/** The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any. */
function embeddedV4(v6: string): string | undefined {
  const groups = expandV6(v6.toLowerCase());
  if (!groups) return undefined;
  const v4 = (hi: number, lo: number) => `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
  if (groups.slice(0, 5).every((g) => g === 0) && (groups[5] === 0xffff || groups[5] === 0))
    return v4(groups[6]!, groups[7]!);
  // 64:ff9b::a.b.c.d and 64:ff9b:1::/48 (NAT64, RFC 6052 / 8215)
  if (groups[0] === 0x64 && groups[1] === 0xff9b) return v4(groups[6]!, groups[7]!);
  // 2002:AABB:CCDD::/48 (6to4)
  if (groups[0] === 0x2002) return v4(groups[1]!, groups[2]!);
  return undefined;
}

function expandV6(a: string): number[] | undefined {
  let s = a;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (dotted) {
    const p = dotted[1]!.split(".").map(Number);
    s = `${s.slice(0, -dotted[1]!.length)}${((p[0]! << 8) | p[1]!).toString(16)}:${((p[2]! << 8) | p[3]!).toString(16)}`;
  }
  const [head, tail] = s.split("::");
  const h = head ? head.split(":") : [];
  const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const fill = s.includes("::") ? 8 - h.length - t.length : 0;
  const all = [...h, ...Array<string>(fill).fill("0"), ...t].map((g) => Number.parseInt(g, 16));
  return all.length === 8 && all.every((n) => Number.isInteger(n) && n >= 0 && n <= 0xffff) ? all : undefined;
}

/** The host's own addresses (every interface), read at each check: they may change. */
function ownAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(os.networkInterfaces())) {
    for (const i of list ?? []) out.add(i.address.toLowerCase().replace(/%.*$/, ""));
  }
  return out;
}

/**
 * Why `ip` is not an allowed destination, or undefined when it is a public
 * address (not special-purpose, not one of this host's).
 */
export function forbiddenAddress(ip: string): string | undefined {
  const bare = ip.replace(/^\[|\]$/g, "").replace(/%.*$/, "");
  const family = net.isIP(bare);
  if (family === 0) return `${ip} is not an IP address`;
  if (ownAddresses().has(bare.toLowerCase())) return `${bare} is an address of this host`;
  if (family === 4) {
    if (blocked.check(bare, "ipv4")) {
      const r = SPECIAL_PURPOSE_RANGES.find((x) => inV4(bare, x.cidr));
      return `${bare} is ${r ? r.name : "a special-purpose address"}`;
    }
    return undefined;
  }
  const v4 = embeddedV4(bare);
  if (v4 !== undefined) {
    const why = forbiddenAddress(v4);
    return why ? `${bare} embeds ${why}` : undefined;
  }
  if (blocked.check(bare, "ipv6")) return `${bare} is a special-purpose IPv6 address`;
  return undefined;
}

function inV4(ip: string, cidr: string): boolean {
  const one = new net.BlockList();
  const [a, b] = cidr.split("/");
  one.addSubnet(a!, Number(b), "ipv4");
  return one.check(ip, "ipv4");
}

export type UrlCheck = { ok: true; url: URL } | { ok: false; code: "invalid" | "forbidden"; message: string };

/** The URL's syntax: http or https, a host, no credentials, at most MAX_WEBHOOK_URL_CHARS. */
export function parseWebhookUrl(raw: string): UrlCheck {
  if (raw.length > MAX_WEBHOOK_URL_CHARS)
    return { ok: false, code: "invalid", message: `url is longer than ${MAX_WEBHOOK_URL_CHARS} characters` };
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return { ok: false, code: "invalid", message: "url is not an absolute URL (https://host/path)" };
  }
  if (url.protocol !== "https:" && url.protocol !== "http:")
    return { ok: false, code: "invalid", message: `url must be http:// or https://, not ${url.protocol}//` };
  if (!url.hostname) return { ok: false, code: "invalid", message: "url has no host" };
  if (url.username || url.password)
    return {
      ok: false,
      code: "invalid",
      message: "url must not carry credentials (user:password@); verify the webhook-signature header instead",
    };
  if (url.hash) return { ok: false, code: "invalid", message: "url must not have a #fragment" };
  return { ok: true, url };
}

/** The host of a URL without IPv6 brackets. */
export function urlHost(url: URL): string {
  return url.hostname.replace(/^\[|\]$/g, "");
}

/**
 * Checks a webhook URL at create: its syntax, and (unless private
 * destinations are allowed) the addresses its host has now. A name that does
 * not resolve now is accepted: delivery checks again and retries.
 */
export async function checkWebhookUrl(raw: string, allowPrivate: boolean): Promise<UrlCheck> {
  const parsed = parseWebhookUrl(raw);
  if (!parsed.ok || allowPrivate) return parsed;
  const host = urlHost(parsed.url);
  let addresses: string[];
  if (net.isIP(host)) addresses = [host];
  else if (/(^|\.)localhost\.?$/i.test(host)) addresses = ["127.0.0.1"];
  else {
    // A slow resolver does not hold the request: unresolved now, checked at delivery.
    let timer: NodeJS.Timeout | undefined;
    const found = await Promise.race([
      dns.promises.lookup(host, { all: true, verbatim: true }).then(
        (list) => list.map((a) => a.address),
        () => undefined,
      ),
      new Promise<undefined>((r) => {
        timer = setTimeout(() => r(undefined), CREATE_LOOKUP_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    if (!found) return parsed;
    addresses = found;
  }
  for (const a of addresses) {
    const why = forbiddenAddress(a);
    if (why) return { ok: false, code: "forbidden", message: forbiddenMessage(host, why) };
  }
  return parsed;
}

export function forbiddenMessage(host: string, why: string): string {
  return `webhook destination ${host} is not allowed: ${why}; webhooks go to public addresses only (an operator allows private ones with FIREBREAK_WEBHOOK_ALLOW_PRIVATE=1)`;
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | dns.LookupAddress[],
  family?: number,
) => void;

/**
 * A `lookup` for http.request that resolves the name and hands the socket
 * only addresses that pass `forbiddenAddress` (all of them when private
 * destinations are allowed).
 * SECURITY: the connection is made to the address checked here, so a name
 * that rebinds between check and connect cannot slip through.
 */
export function guardedLookup(allowPrivate: boolean) {
  return (hostname: string, options: dns.LookupOptions, cb: LookupCallback): void => {
    dns.lookup(hostname, { ...options, all: true }, (err, addrs) => {
      if (err) return cb(err, options.all ? [] : "", 0);
      const list = addrs as dns.LookupAddress[];
      const ok = allowPrivate ? list : list.filter((a) => forbiddenAddress(a.address) === undefined);
      if (ok.length === 0) {
        const why = list.length ? forbiddenAddress(list[0]!.address)! : "no address";
        const e = Object.assign(new Error(forbiddenMessage(hostname, why)), { code: "EWEBHOOKFORBIDDEN" });
        return cb(e, options.all ? [] : "", 0);
      }
      if (options.all) return cb(null, ok);
      return cb(null, ok[0]!.address, ok[0]!.family);
    });
  };
}
