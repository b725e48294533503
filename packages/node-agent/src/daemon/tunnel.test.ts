// Tunnels to sandbox ports end with their sandbox. A guest that is gone sends
// no FIN and no RST, so a tunnel whose client half-closed (as the control
// plane's HTTP agent does when it is destroyed) would otherwise wait for the
// guest's end until TCP gives up. Here the "guest" is a loopback server that
// never ends its side; the daemon is the real one on a unix socket; the
// node service is real over a stub runtime.
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import type { Duplex } from "node:stream";
import { after, test } from "node:test";
import type { NodeRuntime } from "../sandbox/node-runtime.ts";
import { NodeService } from "./node-service.ts";
import { startDaemon, TUNNEL_PROTOCOL } from "./server.ts";

const SECRET = "ab".repeat(32);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-tunnel-"));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A guest that keeps every connection open: it never sends FIN, whatever the client does. */
async function silentGuest() {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
    s.resume();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: (server.address() as net.AddressInfo).port,
    sockets,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

function openTunnel(socketPath: string, id: string, port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      socketPath,
      path: `/sandboxes/${id}/ports/${port}`,
      headers: { authorization: `Bearer ${SECRET}`, connection: "Upgrade", upgrade: TUNNEL_PROTOCOL },
    });
    req.on("upgrade", (_res, socket) => resolve(socket));
    req.on("response", (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
    req.on("error", reject);
    req.end();
  });
}

const waitFor = async (what: string, ok: () => boolean) => {
  for (let i = 0; !ok(); i++) {
    assert.ok(i < 400, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test("a kill or a pause destroys the sandbox's half-closed tunnels; other sandboxes' stay open", async () => {
  const guest = await silentGuest();
  const running = (id: string) => ({
    id,
    state: "running",
    network: { sandboxAddress: "127.0.0.1" },
    accessToken: "t",
  });
  const killed: string[] = [];
  const runtime = {
    list: () => [],
    get: (id: string) => running(id),
    kill: async (id: string) => {
      killed.push(id);
    },
    pause: async () => {},
  } as unknown as NodeRuntime;
  const svc = new NodeService(runtime, "n1");
  const socketPath = path.join(dir, "node.sock");
  const daemon = await startDaemon({ service: svc, listen: { unix: socketPath }, secret: SECRET });
  try {
    const a = await openTunnel(socketPath, "sba", guest.port);
    const b = await openTunnel(socketPath, "sbb", guest.port);
    const c = await openTunnel(socketPath, "sbc", guest.port);
    await waitFor("three guest connections", () => guest.sockets.size === 3);
    const closed = new Set<string>();
    for (const [name, s] of Object.entries({ a, b, c })) {
      s.on("error", () => {});
      s.resume(); // read, so that the end of the tunnel is seen
      s.on("close", () => closed.add(name));
      s.end(); // the client is done sending; the guest never answers its FIN
    }
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(closed.size, 0, "half-closed tunnels wait for the guest");

    await svc.kill("sba", "test");
    assert.deepEqual(killed, ["sba"]);
    await waitFor("the killed sandbox's tunnel to close", () => closed.has("a"));
    await svc.pause("sbb");
    await waitFor("the paused sandbox's tunnel to close", () => closed.has("b"));
    assert.equal(closed.has("c"), false, "another sandbox's tunnel is left alone");
    c.destroy();
  } finally {
    await guest.close();
    await daemon.close();
  }
});
