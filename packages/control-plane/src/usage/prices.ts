// The operator's price sheet: what a CPU-second, a GiB-second of memory and a
// GB of traffic per class cost, with overrides per template and per tenant
// (a tenant's override wins over a template's, both over the defaults). Kept
// in the store (setting "prices"), so every replica prices alike; set with
// PUT /v1/prices (admin). Every price defaults to 0: an unpriced platform
// reports usage with zero cost.
import { z } from "zod";
import { TRAFFIC_CLASSES, type TrafficBytes } from "../node/node-client.ts";

const Rate = z.number().min(0).max(1e9);
const TrafficRates = z
  .object(
    Object.fromEntries(
      TRAFFIC_CLASSES.map((c) => [
        c,
        z.object({ tx: Rate.optional(), rx: Rate.optional() }).strict().optional(),
      ]),
    ) as Record<
      (typeof TRAFFIC_CLASSES)[number],
      z.ZodOptional<z.ZodObject<{ tx: z.ZodOptional<typeof Rate>; rx: z.ZodOptional<typeof Rate> }>>
    >,
  )
  .strict();

export const RatesSchema = z
  .object({
    /** Per CPU-second used (one vCPU busy for one second), after hand-over. */
    cpuSecond: Rate.optional(),
    /** Per GiB-second of memory (measured, integrated over time). */
    memoryGibSecond: Rate.optional(),
    /** Per GB (10^9 bytes) by traffic class and direction. */
    trafficGb: TrafficRates.optional(),
  })
  .strict();

export const PriceSheetSchema = z
  .object({
    /** ISO 4217 code or any short label. */
    currency: z
      .string()
      .regex(/^[A-Za-z]{1,8}$/, "a currency code such as USD")
      .default("USD"),
    defaults: RatesSchema.default({}),
    /** Template name -> rates that replace the defaults' (field by field). */
    templates: z.record(z.string().max(64), RatesSchema).default({}),
    /** Tenant id -> rates that replace the template's and the defaults' (field by field). */
    tenants: z.record(z.string().max(128), RatesSchema).default({}),
  })
  .strict();

export type Rates = z.infer<typeof RatesSchema>;
export type PriceSheet = z.infer<typeof PriceSheetSchema>;

export const EMPTY_PRICES: PriceSheet = { currency: "USD", defaults: {}, templates: {}, tenants: {} };

/** Rates in force for one sandbox: tenant override, else template override, else the defaults. */
export interface EffectiveRates {
  cpuSecond: number;
  memoryGibSecond: number;
  trafficGb: TrafficBytes;
}

function merge(into: EffectiveRates, r: Rates | undefined): void {
  if (!r) return;
  if (r.cpuSecond !== undefined) into.cpuSecond = r.cpuSecond;
  if (r.memoryGibSecond !== undefined) into.memoryGibSecond = r.memoryGibSecond;
  for (const c of TRAFFIC_CLASSES) {
    const t = r.trafficGb?.[c];
    if (t?.tx !== undefined) into.trafficGb[c].tx = t.tx;
    if (t?.rx !== undefined) into.trafficGb[c].rx = t.rx;
  }
}

export function ratesFor(sheet: PriceSheet, tenantId: string, template: string): EffectiveRates {
  const out: EffectiveRates = {
    cpuSecond: 0,
    memoryGibSecond: 0,
    trafficGb: Object.fromEntries(TRAFFIC_CLASSES.map((c) => [c, { tx: 0, rx: 0 }])) as TrafficBytes,
  };
  merge(out, sheet.defaults);
  merge(out, sheet.templates[template]);
  merge(out, sheet.tenants[tenantId]);
  return out;
}

export interface Cost {
  cpu: number;
  memory: number;
  traffic: number;
  total: number;
}

/** Money, rounded to millionths (reports sum unrounded figures and round once). */
export function roundMoney(n: number): number {
  return Math.round(n * 1e6) / 1e6;
}

export function costOf(
  usage: { cpuSeconds: number; memoryGibSeconds: number; traffic: TrafficBytes },
  rates: EffectiveRates,
): Cost {
  const cpu = usage.cpuSeconds * rates.cpuSecond;
  const memory = usage.memoryGibSeconds * rates.memoryGibSecond;
  let traffic = 0;
  for (const c of TRAFFIC_CLASSES) {
    traffic += (usage.traffic[c].tx / 1e9) * rates.trafficGb[c].tx;
    traffic += (usage.traffic[c].rx / 1e9) * rates.trafficGb[c].rx;
  }
  return { cpu, memory, traffic, total: cpu + memory + traffic };
}

export function addCost(a: Cost, b: Cost): Cost {
  return {
    cpu: a.cpu + b.cpu,
    memory: a.memory + b.memory,
    traffic: a.traffic + b.traffic,
    total: a.total + b.total,
  };
}

export const ZERO_COST: Cost = Object.freeze({ cpu: 0, memory: 0, traffic: 0, total: 0 });

export function roundCost(c: Cost): Cost {
  return {
    cpu: roundMoney(c.cpu),
    memory: roundMoney(c.memory),
    traffic: roundMoney(c.traffic),
    total: roundMoney(c.total),
  };
}

/** The price sheet in force (the store's setting, or every price 0). */
export async function loadPrices(store: { getSetting(key: string): Promise<unknown> }): Promise<PriceSheet> {
  const raw = await store.getSetting("prices");
  if (raw === undefined) return EMPTY_PRICES;
  const parsed = PriceSheetSchema.safeParse(raw);
  return parsed.success ? parsed.data : EMPTY_PRICES;
}
