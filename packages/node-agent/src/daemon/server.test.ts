// The node daemon's tunnel (server.ts `tunnel`) over a stand-in node service:
// a loopback TCP server plays the sandbox's port. No VMs, no root.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { NodeDaemonClient } from "./client.ts";
import type { NodeService } from "./node-service.ts";
import { type RunningDaemon, startDaemon } from "./server.ts";

const SECRET = "ab".repeat(32);
let dir: string;
let daemon: RunningDaemon;
let client: NodeDaemonClient;
let guest: net.Server;
let guestPort: number;
/** The guest's side of each connection, as it is accepted. */
const accepted: net.Socket[] = [];
/** The stand-in runtime's state listeners (the daemon registers one). */
const stateListeners = new Set<(id: string, state: string) => void>();
/** The idle freezer's hooks: who holds a sandbox open, and who was used. */
const busyChecks = new Set<(id: string) => boolean>();
const touched: string[] = [];

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-tunnel-"));
  // A guest that never closes a connection itself, not even after the peer's FIN
  // (a killed VM cannot, a hostile guest would not).
  guest = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on("error", () => {});
    accepted.push(s);
  });
  await new Promise<void>((r) => guest.listen(0, "127.0.0.1", r));
  guestPort = (guest.address() as net.AddressInfo).port;
  const service = {
    endpoint: (id: string) => ({ host: "127.0.0.1", accessToken: `token-of-${id}` }),
    runtime: { stateListeners, busyChecks, touch: (id: string) => touched.push(id) },
  } as unknown as NodeService;
  daemon = await startDaemon({ service, listen: { unix: path.join(dir, "node.sock") }, secret: SECRET });
  client = new NodeDaemonClient({ address: daemon.address, secret: SECRET });
});

after(async () => {
  client.close();
  for (const s of accepted) s.destroy();
  await daemon.close();
  await new Promise((r) => guest.close(r));
  await fs.rm(dir, { recursive: true, force: true });
});

const until = async (ok: () => boolean) => {
  while (!ok()) await new Promise((r) => setTimeout(r, 10));
};
/** TCP sockets open in this process: the guest's sides and the node's connections to the guest. */
const tcpSockets = () => process.getActiveResourcesInfo().filter((r) => r === "TCPSocketWrap").length;

test("bytes cross a tunnel both ways, unread by the node", async () => {
  const t = await client.openTunnel("sb1", guestPort);
  await until(() => accepted.length === 1);
  const g = accepted[0]!;
  // The sandbox is in use while the tunnel is open (the idle freezer leaves it alone, and thaws it).
  assert.ok(touched.includes("sb1"));
  assert.ok([...busyChecks].some((busy) => busy("sb1")));
  assert.ok(![...busyChecks].some((busy) => busy("sb-other")));
  t.write("GET / HTTP/1.1\r\n\r\n");
  const got = await new Promise<string>((r) => g.once("data", (b) => r(String(b))));
  assert.equal(got, "GET / HTTP/1.1\r\n\r\n", "nothing added, the agent's token included");
  g.write("pong");
  assert.equal(String(await new Promise<Buffer>((r) => t.once("data", r))), "pong");
  t.destroy();
  g.resume();
  await new Promise((r) => g.once("end", r));
  g.destroy();
  await until(() => ![...busyChecks].some((busy) => busy("sb1")));
});

test("closing a sandbox's tunnels closes the node's connection to the guest, even when the guest never closes", async () => {
  await until(() => tcpSockets() === 0);
  const t = await client.openTunnel("sb2", guestPort);
  await until(() => accepted.length === 2);
  const g = accepted[1]!;
  assert.equal(tcpSockets(), 2, "the node's connection and the guest's side");
  // What RemoteNode does at kill and pause.
  client.closeSandbox("sb2");
  assert.ok(t.destroyed, "the client's end is closed at once");
  g.resume();
  await new Promise((r) => g.once("end", r));
  // The node's connection is gone, not half-closed waiting for the guest's FIN
  // (which this guest, like a killed VM, never sends).
  await until(() => tcpSockets() === 1);
  g.destroy();
});

test("a sandbox leaving the running state ends its tunnels at the node, whatever its client does", async () => {
  await until(() => tcpSockets() === 0);
  assert.equal(stateListeners.size, 1, "the daemon listens to the runtime's states");
  const mine = await client.openTunnel("sb3", guestPort);
  const other = await client.openTunnel("sb4", guestPort);
  await until(() => accepted.length === 4);
  const closed = new Promise<void>((r) => mine.once("close", () => r()));
  mine.on("error", () => {});
  // The sandbox stops (killed, paused, crashed): the runtime tells its listeners.
  for (const l of stateListeners) l("sb3", "stopped");
  await closed;
  assert.equal(other.destroyed, false, "another sandbox's tunnel stays open");
  other.write("still here");
  const g = accepted[3]!;
  assert.equal(String(await new Promise<Buffer>((r) => g.once("data", r))), "still here");
  other.destroy();
  for (const s of accepted) s.destroy();
});
