// Fake hosts for the egress tests, all inside one namespace this file creates
// ("the world"), attached to the root namespace by a veth:
// - a fake internet on 11.77.<r>.0/24: public address space, so the egress
//   policy treats it as the internet (every special-purpose range is private
//   to it). SECURITY of the test host: it is routed to the world only for
//   packets from the sandbox host pool (a policy routing rule), never for the
//   host's own traffic;
// - an internal network (10.77.<r>.0/24, routed from the root namespace) with
//   the DNS server the node's resolver asks, an HTTP API, a database-like TCP
//   service and a forbidden service.
// Traffic only ever goes to these addresses, loopback or namespaces the tests made.
import type { ChildProcess } from "node:child_process";
import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadConfig, paths } from "../../config.ts";
import { run, start } from "../../host/exec.ts";
import { createSandboxNetwork, destroySandboxNetwork, type SandboxNetwork } from "../../network/index.ts";
import { processStartTime } from "../../sandbox/reconciler.ts";
import type { AttachOptions, EgressManager } from "../egress-manager.ts";
import type { DnsZone } from "./world-servers.ts";

const WORLD = fileURLToPath(new URL("./world-servers.ts", import.meta.url));
const PROBE = fileURLToPath(new URL("./guest-probe.ts", import.meta.url));

export interface FakeWorld {
  ns: string;
  /** Root-namespace end of the world's veth: a host interface address. */
  hostSide: string;
  internet: {
    good: string;
    bad: string;
    sub: string;
    hostAlias: string /** /24 of the fake internet */;
    net: string;
  };
  internal: {
    api: string;
    apiPort: number;
    db: string;
    dbPort: number;
    forbidden: string;
    forbiddenPort: number;
    /** Sends `sourceBytes` to each client (throughput); also on the internet's "good" host (2 MiB). */
    sourcePort: number;
    sourceBytes: number;
  };
  upstream: { host: string; port: number };
  /** Lines the world servers printed (DNS queries, HTTP requests). */
  log: string[];
  close(): Promise<void>;
}

function rnd(): number {
  return 1 + Math.floor(Math.random() * 250);
}

export interface FakeWorldOptions {
  /** More DNS names (with special behaviours for hostile-upstream tests), merged into the zone. */
  zone?: (w: FakeWorld) => DnsZone;
}

export async function createFakeWorld(id: string, opts: FakeWorldOptions = {}): Promise<FakeWorld> {
  // Another test process may have a world too: take a /24 nobody routes.
  const routes = `${(await run("ip", ["-4", "route", "show", "table", "all"])).stdout}${(await run("ip", ["-4", "rule"])).stdout}`;
  let r = rnd();
  while (routes.includes(`11.77.${r}.`) || routes.includes(`10.77.${r}.`) || routes.includes(`10.255.${r}.`))
    r = rnd();
  const ns = `fbt-w${id}`;
  const link = `fbtw${id}`.slice(0, 15);
  const hostSide = `10.255.${r}.0`;
  const worldSide = `10.255.${r}.1`;
  const inet = `11.77.${r}`;
  const intl = `10.77.${r}`;
  // Policy routing for the fake internet: only packets from the host pool (sandboxes) go there.
  const table = String(20_000 + r);
  const pool = loadConfig().hostPool;
  const rule = ["from", pool, "to", `${inet}.0/24`, "lookup", table, "priority", table];
  const world: FakeWorld = {
    ns,
    hostSide,
    internet: {
      net: `${inet}.0/24`,
      good: `${inet}.10`,
      bad: `${inet}.11`,
      sub: `${inet}.12`,
      hostAlias: hostSide,
    },
    internal: {
      api: `${intl}.5`,
      apiPort: 8080,
      db: `${intl}.6`,
      dbPort: 5432,
      forbidden: `${intl}.7`,
      forbiddenPort: 7001,
      sourcePort: 9000,
      sourceBytes: 64 * 1024 * 1024,
    },
    upstream: { host: `${intl}.53`, port: 53 },
    log: [],
    close: async () => {},
  };
  let child: ChildProcess | undefined;
  world.close = async () => {
    if (child && child.exitCode === null) child.kill("SIGKILL");
    await run("ip", ["rule", "del", ...rule], { allowFailure: true });
    await run("ip", ["route", "flush", "table", table], { allowFailure: true });
    await run("ip", ["link", "del", link], { allowFailure: true });
    await run("ip", ["netns", "del", ns], { allowFailure: true });
  };
  try {
    await run("ip", ["netns", "add", ns]);
    await run("ip", ["-batch", "-"], {
      input: [
        `link add ${link} type veth peer name up0 netns ${ns}`,
        `addr add ${hostSide}/31 dev ${link}`,
        `link set ${link} up`,
        "",
      ].join("\n"),
    });
    const lo = [world.internet.good, world.internet.bad, world.internet.sub];
    const lo2 = [world.upstream.host, world.internal.api, world.internal.db, world.internal.forbidden];
    await run("ip", ["-n", ns, "-batch", "-"], {
      input: [
        "link set lo up",
        `addr add ${worldSide}/31 dev up0`,
        "link set up0 up",
        `route add default via ${hostSide}`,
        ...[...lo, ...lo2].map((a) => `addr add ${a}/32 dev lo`),
        "",
      ].join("\n"),
    });
    await run("ip", ["-batch", "-"], {
      input: `route add ${intl}.0/24 via ${worldSide}\nroute add ${inet}.0/24 via ${worldSide} table ${table}\nrule add ${rule.join(" ")}\n`,
    });
    // Replies to sandboxes come in here: forwarding on this link only.
    await writeFile(`/proc/sys/net/ipv4/conf/${link}/forwarding`, "1");
    const spec = {
      echo: [
        { host: world.internet.good, port: 443, name: "good" },
        { host: world.internet.bad, port: 443, name: "bad" },
        { host: world.internet.sub, port: 443, name: "sub" },
        { host: world.internal.db, port: world.internal.dbPort, name: "db" },
        { host: world.internal.forbidden, port: world.internal.forbiddenPort, name: "forbidden" },
      ],
      dns: {
        host: world.upstream.host,
        port: 53,
        zone: {
          "api.good.test": { a: [world.internet.good], ttl: 30 },
          "short.good.test": { a: [world.internet.good], ttl: 2 },
          "api.bad.test": { a: [world.internet.bad], ttl: 30 },
          "a.sub.example.test": { a: [world.internet.sub], ttl: 30 },
          "host.good.test": { a: [hostSide], ttl: 30 },
          "loop.good.test": { a: ["127.0.0.1"], ttl: 30 },
          "db.good.test": { a: [world.internal.db], ttl: 30 },
          ...opts.zone?.(world),
        },
      },
      http: [{ host: world.internal.api, port: world.internal.apiPort, name: "api" }],
      source: [
        { host: world.internal.db, port: world.internal.sourcePort, bytes: world.internal.sourceBytes },
        { host: world.internet.good, port: world.internal.sourcePort, bytes: 2 * 1024 * 1024 },
      ],
    };
    child = start("nsenter", [`--net=/run/netns/${ns}`, process.execPath, WORLD, JSON.stringify(spec)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    await new Promise<void>((resolve, reject) => {
      let err = "";
      const timer = setTimeout(() => reject(new Error(`fake world did not start: ${err}`)), 10_000);
      child!.stderr?.on("data", (d: Buffer) => {
        err += d;
      });
      child!.stdout?.on("data", (d: Buffer) => {
        for (const l of d.toString().split("\n")) if (l) world.log.push(l);
        if (d.toString().includes("ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
      child!.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`fake world exited (${code}): ${err}`));
      });
    });
  } catch (e) {
    await world.close();
    throw e;
  }
  return world;
}

export interface StandIn {
  id: string;
  guestNs: string;
  net: SandboxNetwork;
  close(): Promise<void>;
}

/** A sandbox network with a stand-in guest namespace (no VM), attached to the egress manager. */
export async function createStandIn(
  egress: EgressManager,
  id: string,
  slot: number,
  opts: AttachOptions = {},
): Promise<StandIn> {
  const guestNs = `fbt-g${id}`;
  // An owner record (this process), so reconcilers of other Firebreak processes
  // on the host leave this stand-in's fb-* namespace and veth alone.
  const config = loadConfig();
  const ownerFile = path.join(paths.ownersDir(config), `${id}.json`);
  await mkdir(paths.ownersDir(config), { recursive: true });
  await writeFile(
    ownerFile,
    JSON.stringify({
      id,
      ownerPid: process.pid,
      ownerStartTime: await processStartTime(process.pid),
      stateDir: "/nonexistent/firebreak-egress-stand-ins",
      createdAt: new Date().toISOString(),
      template: "stand-in",
      slot,
    }),
  );
  await run("ip", ["netns", "add", guestNs]);
  let net: SandboxNetwork | undefined;
  const close = async () => {
    await egress.detach(id);
    if (net) await destroySandboxNetwork(net);
    await run("ip", ["netns", "del", guestNs], { allowFailure: true });
    await rm(ownerFile, { force: true });
  };
  try {
    net = await createSandboxNetwork({
      sandboxId: id,
      slot,
      tapUid: 0,
      tapGid: 0,
      guestLink: "veth-for-tests",
      testGuestNetns: guestNs,
    });
    await egress.attach(net, opts);
  } catch (e) {
    await close();
    throw e;
  }
  return { id, guestNs, net, close };
}

export interface ProbeSpec {
  dns?: { server: string; names: string[] };
  dnsRaw?: { server: string; queries: { name: string; type: string; tcp?: boolean }[] };
  dnsFlood?: { server: string; name: string; count: number };
  connect?: { host: string; port: number }[];
  http?: { url: string; headers?: Record<string, string> }[];
  download?: { host: string; port: number }[];
  timeoutMs?: number;
}
export interface ProbeResult {
  dns: Record<string, string[] | string>;
  connect: string[];
  http: string[];
  download: { bytes: number; ms: number; error?: string }[];
  dnsRaw: (
    | { rcode: string; tc: boolean; answers: { type: string; name: string; data: unknown }[] }
    | string
  )[];
  dnsFlood?: { sent: number; answered: number };
}

/** Lines of `nft list set ... dns_allowed` in a sandbox namespace: the addresses the resolver admitted. */
export async function dnsAllowed(netnsName: string): Promise<string[]> {
  const r = await run("nsenter", [
    `--net=/run/netns/${netnsName}`,
    "nft",
    "-j",
    "list",
    "set",
    "inet",
    "firebreak",
    "dns_allowed",
  ]);
  const set = (JSON.parse(r.stdout) as { nftables: { set?: { elem?: unknown[] } }[] }).nftables.find(
    (e) => e.set,
  )?.set;
  return (set?.elem ?? []).map((e) =>
    typeof e === "string" ? e : String((e as { elem?: { val?: string } }).elem?.val ?? JSON.stringify(e)),
  );
}

/** Runs DNS lookups, TCP connects and HTTP requests from inside a namespace. */
export async function probe(ns: string, spec: ProbeSpec): Promise<ProbeResult> {
  const res = await run("nsenter", [`--net=/run/netns/${ns}`, process.execPath, PROBE, JSON.stringify(spec)]);
  return JSON.parse(res.stdout) as ProbeResult;
}
