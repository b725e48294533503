// firebreak usage: usage totals grouped by tenant, template, root sandbox or
// a metadata key; --records for the per-sandbox ledger.
import type { UsageGroupBy } from "@firebreak/sdk";
import { InvalidArgumentError } from "commander";
import { printJson } from "../output.ts";
import { client, printTable } from "./api-client.ts";

export function groupBy(v: string): UsageGroupBy {
  if (/^(tenant|template|root|metadata\.\S{1,64})$/.test(v)) return v as UsageGroupBy;
  throw new InvalidArgumentError("expected tenant, template, root or metadata.KEY");
}

export function isoTime(v: string): string {
  const d = new Date(v);
  if (Number.isNaN(d.getTime()))
    throw new InvalidArgumentError(`not a date/time: ${v} (try 2025-01-31T00:00:00Z)`);
  return d.toISOString();
}

const n = (x: number, digits = 1) => x.toFixed(digits);

export async function usageCommand(opts: {
  groupBy?: UsageGroupBy;
  from?: string;
  to?: string;
  records?: boolean;
  sandbox?: string;
  limit?: number;
  json?: boolean;
}): Promise<void> {
  const fb = client();
  if (opts.records) {
    const records = await fb.usage.records({
      ...(opts.sandbox ? { sandboxId: opts.sandbox } : {}),
      ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
    });
    if (opts.json) return printJson(records);
    if (records.length === 0) {
      process.stdout.write("no usage records\n");
      return;
    }
    printTable(
      ["SANDBOX", "TEMPLATE", "SHAPE", "PATH", "LIFETIME", "CPU", "MEM GiB·s", "PEAK", "FINAL", "END"],
      records.map((r) => [
        r.sandboxId,
        r.template,
        `${r.vcpus}x${r.memoryMib}MiB`,
        r.startPath ?? "",
        `${n(r.lifetimeSeconds)} s`,
        `${n(r.cpuSeconds, 2)} s`,
        n(r.memoryGibSeconds, 2),
        `${r.memoryPeakMib} MiB`,
        r.final ? "yes" : "no",
        r.endReason ?? "",
      ]),
    );
    return;
  }
  const groups = await fb.usage.query({
    ...(opts.groupBy ? { groupBy: opts.groupBy } : {}),
    ...(opts.from ? { from: opts.from } : {}),
    ...(opts.to ? { to: opts.to } : {}),
  });
  if (opts.json) return printJson(groups);
  if (groups.length === 0) {
    process.stdout.write("no usage in that range\n");
    return;
  }
  printTable(
    [(opts.groupBy ?? "tenant").toUpperCase(), "SANDBOXES", "LIFETIME", "CPU", "MEM GiB·s", "PEAK MEM"],
    groups.map((g) => [
      g.key ?? "(none)",
      String(g.sandboxes),
      `${n(g.lifetimeSeconds)} s`,
      `${n(g.cpuSeconds, 2)} s`,
      n(g.memoryGibSeconds, 2),
      `${g.peakMemoryMib} MiB`,
    ]),
  );
}
