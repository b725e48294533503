// firebreak keys create|list|revoke: API keys of the caller's tenant.
import type { KeyScope } from "@firebreak/sdk";
import { printJson } from "../output.ts";
import { client, printTable } from "./api-client.ts";

export async function keysCreate(
  name: string,
  opts: { scope?: string[]; tenant?: string; json?: boolean },
): Promise<void> {
  const k = await client().keys.create(name, {
    ...(opts.scope?.length ? { scopes: opts.scope as KeyScope[] } : {}),
    ...(opts.tenant ? { tenantId: opts.tenant } : {}),
  });
  if (opts.json) return printJson(k);
  process.stdout.write(
    `created key ${k.id} "${k.name}" (tenant ${k.tenantId}, scopes ${k.scopes.join(",")})\n` + `${k.key}\n`,
  );
  process.stderr.write("this is the only time the key is shown; store it now (FIREBREAK_API_KEY)\n");
}

export async function keysList(opts: { json?: boolean }): Promise<void> {
  const keys = await client().keys.list();
  if (opts.json) return printJson(keys);
  if (keys.length === 0) {
    process.stdout.write("no keys; create one with: firebreak keys create NAME\n");
    return;
  }
  printTable(
    ["ID", "NAME", "TENANT", "SCOPES", "CREATED", "REVOKED"],
    keys.map((k) => [k.id, k.name, k.tenantId, k.scopes.join(","), k.createdAt, k.revokedAt ?? ""]),
  );
}

export async function keysRevoke(id: string, opts: { json?: boolean }): Promise<void> {
  const revoked = await client().keys.revoke(id);
  if (opts.json) printJson({ id, revoked });
  else if (revoked) process.stdout.write(`revoked key ${id}\n`);
  if (!revoked) {
    if (!opts.json) process.stderr.write(`no key ${id}; see: firebreak keys list\n`);
    process.exitCode = 1;
  }
}
