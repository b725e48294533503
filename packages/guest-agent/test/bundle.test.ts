import assert from "node:assert/strict";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { buildAgentBundle } from "../src/bundle.ts";
import { type Agent, startAgent } from "./harness.ts";

describe("agent bundle", () => {
  let out: string;
  let files: string[];
  before(async () => {
    // Outside the repository: no node_modules above it to fall back on.
    out = await mkdtemp(join(tmpdir(), "fb-agent-bundle-"));
    ({ files } = await buildAgentBundle(join(out, "agent")));
  });
  after(() => rm(out, { recursive: true, force: true }));

  test("is one agent.mjs plus the PTY library with its native addon", async () => {
    assert.ok(files.includes("agent.mjs"));
    assert.ok(files.includes(`node_modules/@lydell/node-pty-linux-${process.arch}/pty.node`));
    assert.ok(files.includes("node_modules/@lydell/node-pty/index.js"));
    const size = (await stat(join(out, "agent", "agent.mjs"))).size;
    assert.ok(size < 1_000_000, `agent.mjs is ${size} bytes`);
  });

  test("runs standalone: commands and PTYs work from the bundle", async (t) => {
    let agent: Agent | undefined;
    try {
      agent = await startAgent({ entry: join(out, "agent", "agent.mjs") });
      t.diagnostic(`bundle startup (spawn to listening): ${agent.startupMs.toFixed(0)} ms`);
      assert.equal((await agent.init()).type, "ack");
      let piped = "";
      for await (const r of agent
        .process()
        .start({ process: { cmd: "/bin/echo", args: ["bundled"], envs: {} } })) {
        if (r.event?.event.case === "data")
          piped += Buffer.from(r.event.event.value.output.value!).toString();
      }
      assert.equal(piped, "bundled\n");
      let pty = "";
      for await (const r of agent.process().start({
        process: { cmd: "/bin/bash", args: ["-c", "stty size"], envs: {} },
        pty: { size: { cols: 77, rows: 22 } },
      })) {
        if (r.event?.event.case === "data") pty += Buffer.from(r.event.event.value.output.value!).toString();
      }
      assert.match(pty, /22 77/);
    } finally {
      await agent?.stop();
    }
  });
});
