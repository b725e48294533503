import assert from "node:assert/strict";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { buildAgentBundle } from "../src/bundle.ts";
import { type Agent, fileWorkerPids, startAgent, USER_UID } from "./harness.ts";

describe("agent bundle", () => {
  let out: string;
  let files: string[];
  before(async () => {
    // Outside the repository: no node_modules above it to fall back on.
    out = await mkdtemp(join(tmpdir(), "fb-agent-bundle-"));
    ({ files } = await buildAgentBundle(join(out, "agent")));
  });
  after(() => rm(out, { recursive: true, force: true }));

  test("is agent.mjs and fs-worker.mjs plus the PTY and xattr libraries with their native addons", async () => {
    assert.ok(files.includes("agent.mjs"));
    assert.ok(files.includes("fs-worker.mjs"));
    assert.ok(
      files.includes(
        `node_modules/@napi-rs/xattr-linux-${process.arch}-gnu/xattr.linux-${process.arch}-gnu.node`,
      ),
    );
    assert.ok(files.includes("node_modules/@napi-rs/xattr/index.js"));
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

      // File operations of "user" run in the bundled worker, as the user, with metadata.
      const [worker] = await fileWorkerPids(agent);
      assert.ok(worker, "the default user's file worker is running");
      const up = await fetch(`${agent.baseUrl}/files?path=bundled.txt`, {
        method: "POST",
        headers: {
          "X-Access-Token": agent.token,
          "content-type": "application/octet-stream",
          "X-Metadata-Origin": "bundle",
        },
        body: "from the bundle",
      });
      assert.equal(up.status, 200);
      assert.deepEqual(((await up.json()) as Array<{ metadata?: unknown }>)[0]?.metadata, {
        origin: "bundle",
      });
      assert.equal((await stat(join(agent.home, "bundled.txt"))).uid, USER_UID);
    } finally {
      await agent?.stop();
    }
  });
});
