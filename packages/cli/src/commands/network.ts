// firebreak sandbox create's network flags, `sandbox network get|set` and
// `services create|list|delete`: the egress policy and private services of the API.
import fs from "node:fs/promises";
import type { EgressPolicy, PrivateService } from "@firebreak/sdk";
import { InvalidArgumentError } from "commander";
import { printJson } from "../output.ts";
import { client, connect, printTable } from "./api-client.ts";

export interface PolicyFlags {
  policyFile?: string;
  allowDomain?: string[];
  allowCidr?: string[];
  internet?: boolean;
  service?: string[];
  network?: string[];
}

/** `--allow-cidr CIDR[:PORT[,PORT...]]`, e.g. 10.0.0.0/8:5432 or 192.0.2.7. */
export function allowCidr(v: string, prev: string[] = []): string[] {
  if (!/^\d{1,3}(\.\d{1,3}){3}(\/\d{1,2})?(:\d{1,5}(,\d{1,5})*)?$/.test(v)) {
    throw new InvalidArgumentError(`expected CIDR[:PORT[,PORT...]] such as 10.0.0.0/8:5432, got ${v}`);
  }
  return [...prev, v];
}

async function readPolicyFile(file: string): Promise<EgressPolicy> {
  const text = await fs.readFile(file, "utf8");
  try {
    const o = JSON.parse(text) as { policy?: EgressPolicy } & EgressPolicy;
    // Either the policy itself or what `sandbox network get --json` prints ({ policy }).
    return o.policy && typeof o.policy === "object" ? o.policy : o;
  } catch (e) {
    throw new InvalidArgumentError(`${file} is not JSON: ${(e as Error).message}`);
  }
}

/** The policy the flags describe (flags add to --policy-file's); undefined when none is given. */
export async function policyFromFlags(f: PolicyFlags): Promise<EgressPolicy | undefined> {
  const given =
    f.policyFile ||
    f.allowDomain?.length ||
    f.allowCidr?.length ||
    f.internet ||
    f.service?.length ||
    f.network?.length;
  if (!given) return undefined;
  const p: EgressPolicy = f.policyFile ? await readPolicyFile(f.policyFile) : {};
  if (f.internet) p.internet = true;
  if (f.allowDomain?.length) p.allowDomains = [...(p.allowDomains ?? []), ...f.allowDomain];
  if (f.service?.length) p.services = [...(p.services ?? []), ...f.service];
  if (f.network?.length) p.networks = [...(p.networks ?? []), ...f.network];
  for (const c of f.allowCidr ?? []) {
    const [cidr, ports] = c.split(":") as [string, string | undefined];
    p.allow = [...(p.allow ?? []), { cidr, ...(ports ? { ports: ports.split(",").map(Number) } : {}) }];
  }
  return p;
}

function printPolicy(p: Awaited<ReturnType<Awaited<ReturnType<typeof connect>>["network"]["get"]>>): void {
  const lines = [
    `internet:     ${p.internet ? "allowed" : "denied"}`,
    `domains:      ${p.allowDomains.join(", ") || "-"}`,
    `allow:        ${
      p.allow
        .map(
          (r) =>
            `${r.cidr}${r.ports === "any" ? "" : `:${r.ports.join(",")}`}${r.protocol === "any" ? "" : `/${r.protocol}`}`,
        )
        .join(", ") || "-"
    }`,
    `services:     ${p.services.join(", ") || "-"}`,
    `networks:     ${p.networks.join(", ") || "-"}`,
    `bandwidth:    ${p.bandwidthKBps ? `${p.bandwidthKBps} KB/s each way` : "unlimited"}`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

export async function sandboxNetworkGet(id: string, opts: { json?: boolean }): Promise<void> {
  const p = await (await connect(id)).network.get();
  if (opts.json) printJson({ policy: p });
  else printPolicy(p);
}

export async function sandboxNetworkSet(id: string, opts: PolicyFlags & { json?: boolean }): Promise<void> {
  const policy = await policyFromFlags(opts);
  if (!policy) {
    throw new InvalidArgumentError(
      "give the new policy: --policy-file FILE and/or --allow-domain, --allow-cidr, --internet, --service, --network (it replaces the old one)",
    );
  }
  const p = await (await connect(id)).network.update(policy);
  if (opts.json) printJson({ policy: p });
  else printPolicy(p);
}

export async function servicesCreate(
  name: string,
  opts: {
    address: string;
    port: number;
    protocol?: "tcp" | "http";
    tenant?: string[];
    injectHeader?: string;
    injectValueEnv?: string;
    json?: boolean;
  },
): Promise<void> {
  let inject: PrivateService["inject"];
  if (opts.injectHeader || opts.injectValueEnv) {
    const value = opts.injectValueEnv ? process.env[opts.injectValueEnv] : undefined;
    if (!opts.injectHeader || value === undefined) {
      throw new InvalidArgumentError(
        "--inject-header NAME needs --inject-value-env VAR naming a set environment variable (the credential stays out of the command line)",
      );
    }
    inject = { header: opts.injectHeader, value };
  }
  const s = await client().services.create({
    name,
    address: opts.address,
    port: opts.port,
    protocol: opts.protocol ?? (inject ? "http" : "tcp"),
    ...(opts.tenant?.length ? { tenants: opts.tenant } : {}),
    ...(inject ? { inject } : {}),
  });
  if (opts.json) return printJson({ ...s, ...(s.inject ? { inject: { ...s.inject, value: "***" } } : {}) });
  process.stdout.write(`service ${s.name} -> ${s.address}:${s.port} (${s.protocol})\n`);
}

export async function servicesList(opts: { json?: boolean }): Promise<void> {
  const list = await client().services.list();
  if (opts.json) return printJson(list);
  if (list.length === 0) {
    process.stdout.write("no private services; an admin declares them with: firebreak services create\n");
    return;
  }
  printTable(
    ["NAME", "ADDRESS", "PROTOCOL", "TENANTS", "INJECT"],
    list.map((s) => [
      s.name,
      `${s.address}:${s.port}`,
      s.protocol,
      s.tenants?.join(",") ?? "all",
      s.inject ? `${s.inject.header}: ***` : "",
    ]),
  );
}

export async function servicesDelete(name: string, opts: { json?: boolean }): Promise<void> {
  const deleted = await client().services.delete(name);
  if (opts.json) printJson({ name, deleted });
  else if (deleted) process.stdout.write(`deleted service ${name}\n`);
  if (!deleted) {
    if (!opts.json) process.stderr.write(`no service ${name}; see: firebreak services list\n`);
    process.exitCode = 1;
  }
}
