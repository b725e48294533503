import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { AGENT_VERSION } from "@firebreak/protocol";
import { fileSignature } from "../src/identity/auth.ts";
import { type Agent, newId, startAgent } from "./harness.ts";

describe("auth and control channel", () => {
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
  });
  after(() => agent.stop());

  test("before init: /health answers 204, everything else is refused", async () => {
    assert.equal((await fetch(`${agent.baseUrl}/health`)).status, 204);
    const files = await fetch(`${agent.baseUrl}/files?path=/etc/hostname`, {
      headers: { "X-Access-Token": "x" },
    });
    assert.equal(files.status, 503);
    // With a control channel configured, HTTP /init cannot claim the sandbox first.
    const init = await fetch(`${agent.baseUrl}/init`, {
      method: "POST",
      body: JSON.stringify({ accessToken: "mine" }),
    });
    assert.equal(init.status, 503);
    await assert.rejects(
      agent.process().list({}),
      (e) => e instanceof ConnectError && e.code === Code.Unavailable,
    );
  });

  test("ping/pong and ready carry the protocol fields", async () => {
    const id = newId();
    assert.deepEqual(await agent.control.request({ type: "ping", id }), { type: "pong", id });
    agent.control.sendRaw("not json\n");
    const err = await agent.control.waitFor((m) => m.type === "error");
    assert.equal(err.type === "error" && err.id, 0);
    assert.equal(AGENT_VERSION, "0.1.0");
  });

  test("init is acked; requests then need the exact token", async () => {
    const reply = await agent.init();
    assert.equal(reply.type, "ack");
    assert.equal((await agent.process().list({})).processes.length, 0);
    await assert.rejects(
      agent.process({ token: null }).list({}),
      (e) => e instanceof ConnectError && e.code === Code.Unauthenticated && /missing/.test(e.message),
    );
    await assert.rejects(
      agent.process({ token: `${agent.token}x` }).list({}),
      (e) => e instanceof ConnectError && e.code === Code.Unauthenticated && /invalid/.test(e.message),
    );
    const noToken = await fetch(`${agent.baseUrl}/files?path=/etc/hostname`);
    assert.equal(noToken.status, 401);
    const wrong = await fetch(`${agent.baseUrl}/files?path=/etc/hostname`, {
      headers: { "X-Access-Token": "nope" },
    });
    assert.equal(wrong.status, 401);
    const ok = await fetch(`${agent.baseUrl}/files?path=/etc/hostname`, {
      headers: { "X-Access-Token": agent.token },
    });
    assert.equal(ok.status, 200);
  });

  test("signed file URLs work without the token and only while unexpired", async () => {
    const path = "/etc/hostname";
    const exp = Math.floor(Date.now() / 1000) + 60;
    const sig = fileSignature(path, "read", "root", agent.token, exp);
    const url = `${agent.baseUrl}/files?path=${path}&username=root&signature=${encodeURIComponent(sig)}&signature_expiration=${exp}`;
    assert.equal((await fetch(url)).status, 200);
    const old = Math.floor(Date.now() / 1000) - 1;
    const oldSig = fileSignature(path, "read", "root", agent.token, old);
    const expired = `${agent.baseUrl}/files?path=${path}&username=root&signature=${encodeURIComponent(oldSig)}&signature_expiration=${old}`;
    assert.equal((await fetch(expired)).status, 401);
  });

  test("a second init replaces the identity: the old token stops working", async () => {
    const oldToken = agent.token;
    const reply = await agent.init({ accessToken: "second-token", envVars: { ONLY_NEW: "1" } });
    assert.equal(reply.type, "ack");
    await assert.rejects(
      agent.process({ token: oldToken }).list({}),
      (e) => e instanceof ConnectError && e.code === Code.Unauthenticated,
    );
    let out = "";
    for await (const r of agent.process({ token: "second-token" }).start({
      process: {
        cmd: "/bin/bash",
        args: ["-c", 'echo "$(printenv FB_SANDBOX_VAR || echo unset) $ONLY_NEW"'],
        envs: {},
      },
    })) {
      if (r.event?.event.case === "data") out += Buffer.from(r.event.event.value.output.value!).toString();
    }
    assert.equal(out, "unset 1\n");
    // HTTP /init with the current token is accepted and merges env vars.
    const res = await fetch(`${agent.baseUrl}/init`, {
      method: "POST",
      headers: { "X-Access-Token": "second-token" },
      body: JSON.stringify({ accessToken: "third-token", envVars: { MORE: "2" } }),
    });
    assert.equal(res.status, 204);
    const envs = await fetch(`${agent.baseUrl}/envs`, { headers: { "X-Access-Token": "third-token" } });
    assert.deepEqual(await envs.json(), { ONLY_NEW: "1", MORE: "2" });
    // Back to the harness token for the remaining tests.
    assert.equal((await agent.init()).type, "ack");
  });

  test("init sets the clock only when it is off by more than 50 ms", async () => {
    assert.equal((await agent.init({ wallClockMs: Date.now() })).type, "ack");
    await assert.rejects(readFile(agent.dateLog, "utf8"), /ENOENT/);
    const target = Date.now() + 3_600_000;
    assert.equal((await agent.init({ wallClockMs: target })).type, "ack");
    const args = (await readFile(agent.dateLog, "utf8")).trim().split(" ");
    assert.deepEqual(args.slice(0, 2), ["-u", "-s"]);
    const seconds = Number(args[2]!.slice(1));
    assert.ok(Math.abs(seconds * 1000 - target) < 1000, args.join(" "));
  });

  test("a malformed init is refused with an error and keeps the current identity", async () => {
    const id = newId();
    agent.control.sendRaw(JSON.stringify({ type: "init", id, accessToken: "" }) + "\n");
    const reply = await agent.control.waitFor((m) => "id" in m && m.id === id);
    assert.equal(reply.type, "error");
    assert.equal((await agent.process().list({})).processes.length, 0);
  });
});

describe("standalone agent (no control channel)", () => {
  let agent: Agent;
  before(async () => {
    agent = await startAgent({ noControl: true });
  });
  after(() => agent.stop());

  test("the first HTTP /init claims it; later ones need the token", async () => {
    const first = await fetch(`${agent.baseUrl}/init`, {
      method: "POST",
      body: JSON.stringify({ accessToken: agent.token, defaultUser: "root" }),
    });
    assert.equal(first.status, 204);
    const hijack = await fetch(`${agent.baseUrl}/init`, {
      method: "POST",
      body: JSON.stringify({ accessToken: "attacker" }),
    });
    assert.equal(hijack.status, 401);
    let out = "";
    for await (const r of agent
      .process()
      .start({ process: { cmd: "/usr/bin/id", args: ["-u"], envs: {} } })) {
      if (r.event?.event.case === "data") out += Buffer.from(r.event.event.value.output.value!).toString();
    }
    assert.equal(out, "0\n");
  });
});
