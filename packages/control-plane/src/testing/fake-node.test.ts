// The fake node the control-plane tests use, held to the NodeClient contract
// (node-client.contract.ts) that the real node daemon passes too
// (test/node-contract.test.ts): the two cannot drift.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { FakeNode } from "./fake-node.ts";
import { nodeClientContract } from "./node-client.contract.ts";

nodeClientContract("FakeNode", {
  async open() {
    const node = new FakeNode("fake-contract");
    // A stand-in guest agent on loopback: /health answers as the real agent's does.
    const agent = http.createServer((req, res) => {
      if (req.url === "/health") res.writeHead(204).end();
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => agent.listen(0, "127.0.0.1", () => r()));
    node.guest = { address: "127.0.0.1", envdPort: (agent.address() as AddressInfo).port };
    return {
      node,
      readEnv: async (id, name) => node.envOf(id)?.[name],
      stopAnswering: async () => {
        node.down = true;
      },
      close: async () => {
        await node.close();
        await new Promise<void>((r) => agent.close(() => r()));
      },
    };
  },
});
