// The real node held to the NodeClient contract (src/testing/node-client.contract.ts)
// that the fake node passes too (src/testing/fake-node.test.ts): RemoteNode over
// a node daemon on its private unix socket, as `firebreak up` runs its own
// node (node/in-process-node.ts), with real VMs. The suite walks one pool VM
// and one fork child through their lives, so it boots few VMs.
import { describe } from "node:test";
import { runNodeDaemon } from "@firebreak/node-agent";
import { assertNoLeftovers, config, skipUnlessRoot } from "../../node-agent/test/helpers.ts";
import { RemoteNode } from "../src/node/remote-node.ts";
import { nodeClientContract } from "../src/testing/node-client.contract.ts";

describe("real node daemon", { skip: skipUnlessRoot }, () => {
  nodeClientContract("RemoteNode over a node daemon", {
    async open() {
      // The base template is built in the test state dir (`firebreak template build base`).
      const daemon = await runNodeDaemon({
        config,
        privateSocket: true,
        nodeId: `contract-${process.pid}`,
        log: (l) => {
          if (process.env["FIREBREAK_TEST_LOG"]) process.stderr.write(`node: ${l}\n`);
        },
      });
      const address = daemon.addresses.find((a) => a.startsWith("unix:"))!;
      const node = new RemoteNode(daemon.identity.nodeId, { address, secret: daemon.identity.secret });
      // Every sandbox the daemon made (pool VMs included), for the leak check.
      const ids = new Set<string>();
      const remember = () => {
        for (const sb of daemon.service.runtime.list()) ids.add(sb.id);
        for (const sb of daemon.service.runtime.pools.members()) ids.add(sb.id);
      };
      const timer = setInterval(remember, 200);
      let closed = false;
      const stop = async () => {
        if (closed) return;
        closed = true;
        remember();
        clearInterval(timer);
        await daemon.close();
      };
      return {
        node,
        async readEnv(id, name) {
          let out = "";
          for await (const r of node.envd(id, "user").process.start({
            process: { cmd: "/usr/bin/printenv", args: [name], envs: {} },
          })) {
            const ev = r.event?.event;
            if (ev?.case === "data" && ev.value.output.case === "stdout")
              out += Buffer.from(ev.value.output.value).toString();
          }
          return out ? out.replace(/\n$/, "") : undefined;
        },
        stopAnswering: stop,
        async close() {
          await stop();
          await node.close();
          await assertNoLeftovers(ids);
        },
      };
    },
  });
});
