import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { processPb } from "@firebreak/protocol";
import { type Agent, startAgent, USER_UID } from "./harness.ts";

type Ev = processPb.ProcessEvent["event"];

function text(ev: Ev): string {
  if (ev.case !== "data") return "";
  return Buffer.from(ev.value.output.value ?? new Uint8Array()).toString("utf8");
}

/** Runs a bash command to completion and collects stdout, stderr and the end event. */
async function run(
  agent: Agent,
  cmd: string,
  extra: { process?: { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string } } = {},
  user?: string,
) {
  let stdout = "";
  let stderr = "";
  let end: processPb.ProcessEvent_EndEvent | undefined;
  const events: Ev[] = [];
  const req = {
    process: { cmd: "/bin/bash", args: ["-c", cmd], envs: {} },
    ...extra,
  };
  for await (const res of agent.process({ user }).start(req)) {
    const ev = res.event!.event;
    events.push(ev);
    if (ev.case === "data" && ev.value.output.case === "stdout") stdout += text(ev);
    if (ev.case === "data" && ev.value.output.case === "stderr") stderr += text(ev);
    if (ev.case === "end") end = ev.value;
  }
  return { stdout, stderr, end: end!, events };
}

describe("process service", () => {
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
    assert.equal((await agent.init()).type, "ack");
  });
  after(() => agent.stop());

  test("start streams start, data, end with the exit code", async () => {
    const r = await run(agent, "echo out; echo err >&2; exit 7");
    assert.equal(r.events[0]!.case, "start");
    assert.ok(r.events[0]!.case === "start" && r.events[0]!.value.pid > 0);
    assert.equal(r.events.at(-1)!.case, "end");
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(r.end.exitCode, 7);
    assert.equal(r.end.exited, true);
    assert.equal(r.end.status, "exit status 7");
  });

  test("output streams live: each line arrives as its own event before the command ends", async () => {
    const r = await run(agent, "for i in 1 2 3; do echo line$i; sleep 0.3; done");
    const dataEvents = r.events.filter((e) => e.case === "data").map(text);
    assert.deepEqual(dataEvents, ["line1\n", "line2\n", "line3\n"]);
  });

  test("the first chunk is delivered while the command still runs (it waits for our reply)", async () => {
    const stream = agent.process().start({
      process: { cmd: "/bin/bash", args: ["-c", "echo ready; read answer; echo got:$answer"], envs: {} },
      stdin: true,
    });
    let pid = 0;
    let out = "";
    let end: processPb.ProcessEvent_EndEvent | undefined;
    for await (const res of stream) {
      const ev = res.event!.event;
      if (ev.case === "start") pid = ev.value.pid;
      if (ev.case === "data") {
        out += text(ev);
        // The command cannot exit before it reads this: seeing "ready" here proves streaming is live.
        if (out === "ready\n") {
          await agent.process().sendInput({
            process: { selector: { case: "pid", value: pid } },
            input: { input: { case: "stdin", value: Buffer.from("42\n") } },
          });
        }
      }
      if (ev.case === "end") end = ev.value;
    }
    assert.equal(out, "ready\ngot:42\n");
    assert.equal(end?.exitCode, 0);
  });

  test("commands run as the default user unless root is named", async () => {
    const asUser = await run(agent, "id -u; echo $HOME; echo $USER; pwd");
    assert.equal(asUser.stdout, `${USER_UID}\n${agent.home}\nuser\n${agent.home}\n`);
    const asRoot = await run(agent, "id -u; echo $USER", {}, "root");
    assert.equal(asRoot.stdout, "0\nroot\n");
  });

  test("env: request envs override sandbox envs from init; cwd is honoured", async () => {
    const r = await run(agent, 'echo "$FB_SANDBOX_VAR $FOO"; pwd', {
      process: {
        cmd: "/bin/bash",
        args: ["-c", 'echo "$FB_SANDBOX_VAR $FOO"; pwd'],
        envs: { FOO: "bar" },
        cwd: "/tmp",
      },
    });
    assert.equal(r.stdout, "from-init bar\n/tmp\n");
    const over = await run(agent, "", {
      process: { cmd: "/bin/bash", args: ["-c", "echo $FB_SANDBOX_VAR"], envs: { FB_SANDBOX_VAR: "mine" } },
    });
    assert.equal(over.stdout, "mine\n");
  });

  test("a missing cwd or executable is an error, not a hang", async () => {
    await assert.rejects(
      run(agent, "", { process: { cmd: "/bin/true", args: [], envs: {}, cwd: "/nope/x" } }),
      (e) => {
        assert.ok(e instanceof ConnectError);
        assert.equal(e.code, Code.InvalidArgument);
        assert.match(e.message, /nope/);
        return true;
      },
    );
    await assert.rejects(
      run(agent, "", { process: { cmd: "/no/such/binary", args: [], envs: {} } }),
      /no\/such\/binary/,
    );
  });

  test("stdin is /dev/null unless requested; closeStdin delivers EOF", async () => {
    const noStdin = await run(agent, "cat; echo done");
    assert.equal(noStdin.stdout, "done\n");

    const stream = agent
      .process()
      .start({
        process: { cmd: "/bin/bash", args: ["-c", "wc -c"], envs: {} },
        stdin: true,
      })
      [Symbol.asyncIterator]();
    const first = await stream.next();
    const pid = first.value.event.event.value.pid as number;
    const sel = { selector: { case: "pid" as const, value: pid } };
    await agent
      .process()
      .sendInput({ process: sel, input: { input: { case: "stdin", value: Buffer.from("abcde") } } });
    await agent.process().closeStdin({ process: sel });
    let out = "";
    for (let r = await stream.next(); !r.done; r = await stream.next()) out += text(r.value.event!.event);
    assert.equal(out.trim(), "5");
  });

  test("streamInput sends ordered input to a process selected by tag", async () => {
    const it = agent
      .process()
      .start({
        process: { cmd: "/bin/bash", args: ["-c", "head -c 6"], envs: {} },
        stdin: true,
        tag: "tagged-cat",
      })
      [Symbol.asyncIterator]();
    await it.next();
    async function* input() {
      yield {
        event: {
          case: "start" as const,
          value: { process: { selector: { case: "tag" as const, value: "tagged-cat" } } },
        },
      };
      for (const s of ["ab", "cd", "ef"]) {
        yield {
          event: {
            case: "data" as const,
            value: { input: { input: { case: "stdin" as const, value: Buffer.from(s) } } },
          },
        };
      }
    }
    await agent.process().streamInput(input());
    let out = "";
    for (let r = await it.next(); !r.done; r = await it.next()) out += text(r.value.event!.event);
    assert.equal(out, "abcdef");
  });

  test("list, connect and sendSignal: SIGTERM and SIGKILL stop the command", async () => {
    for (const [signal, status] of [
      [processPb.Signal.SIGTERM, "signal: terminated"],
      [processPb.Signal.SIGKILL, "signal: killed"],
    ] as const) {
      const it = agent
        .process()
        .start({
          process: { cmd: "/bin/sleep", args: ["30"], envs: {} },
          tag: `sleeper-${signal}`,
        })
        [Symbol.asyncIterator]();
      const pid = (await it.next()).value.event.event.value as { pid: number };
      const listed = await agent.process().list({});
      const info = listed.processes.find((p) => p.pid === pid.pid);
      assert.equal(info?.tag, `sleeper-${signal}`);
      assert.equal(info?.config?.cmd, "/bin/sleep");

      // A second client attaches with Connect and sees the same end.
      const attached = agent.process().connect({ process: { selector: { case: "pid", value: pid.pid } } });
      const attachedEvents: string[] = [];
      const attachedDone = (async () => {
        for await (const r of attached) attachedEvents.push(r.event!.event.case!);
      })();
      await new Promise((r) => setTimeout(r, 100));

      await agent.process().sendSignal({ process: { selector: { case: "pid", value: pid.pid } }, signal });
      let end: processPb.ProcessEvent_EndEvent | undefined;
      for (let r = await it.next(); !r.done; r = await it.next()) {
        if (r.value.event!.event.case === "end") end = r.value.event!.event.value;
      }
      await attachedDone;
      assert.equal(end?.status, status);
      assert.equal(end?.exited, false);
      assert.equal(end?.exitCode, -1);
      assert.deepEqual([attachedEvents[0], attachedEvents.at(-1)], ["start", "end"]);
      const after = await agent.process().list({});
      assert.ok(!after.processes.some((p) => p.pid === pid.pid));
    }
  });

  test("binary protobuf encoding works too", async () => {
    let out = "";
    for await (const r of agent.process({ binary: true }).start({
      process: { cmd: "/bin/echo", args: ["proto"], envs: {} },
    })) {
      out += text(r.event!.event);
    }
    assert.equal(out, "proto\n");
  });

  test("unknown pid answers not_found", async () => {
    await assert.rejects(
      agent.process().sendSignal({
        process: { selector: { case: "pid", value: 999_999 } },
        signal: processPb.Signal.SIGKILL,
      }),
      (e) => e instanceof ConnectError && e.code === Code.NotFound,
    );
  });

  test("keepalives are sent at the interval the client asks for", async () => {
    const transportHeaders = { "Keepalive-Ping-Interval": "1" };
    const cases: string[] = [];
    for await (const res of agent
      .process()
      .start({ process: { cmd: "/bin/sleep", args: ["2.5"], envs: {} } }, { headers: transportHeaders })) {
      cases.push(res.event!.event.case!);
    }
    assert.ok(cases.filter((c) => c === "keepalive").length >= 1, cases.join(","));
    assert.equal(cases.at(-1), "end");
  });

  test("Connect-Timeout-Ms ends the stream with deadline_exceeded", async () => {
    await assert.rejects(
      (async () => {
        for await (const _ of agent
          .process()
          .start({ process: { cmd: "/bin/sleep", args: ["5"], envs: {} } }, { timeoutMs: 500 })) {
          // drain
        }
      })(),
      (e) => e instanceof ConnectError && e.code === Code.DeadlineExceeded,
    );
  });

  test("pty: output comes through the terminal and resize reaches it", async () => {
    const it = agent
      .process()
      .start({
        process: {
          cmd: "/bin/bash",
          args: ["-c", "stty size; read x; stty size; tty >/dev/null && echo is-a-tty"],
          envs: {},
        },
        pty: { size: { cols: 100, rows: 30 } },
      })
      [Symbol.asyncIterator]();
    const pid = ((await it.next()).value.event.event.value as { pid: number }).pid;
    let out = "";
    const sel = { selector: { case: "pid" as const, value: pid } };
    let resized = false;
    let exit: number | undefined;
    for (let r = await it.next(); !r.done; r = await it.next()) {
      const ev = r.value.event!.event;
      if (ev.case === "data") {
        assert.equal(ev.value.output.case, "pty");
        out += text(ev);
        if (!resized && out.includes("30 100")) {
          resized = true;
          await agent.process().update({ process: sel, pty: { size: { cols: 120, rows: 40 } } });
          await agent
            .process()
            .sendInput({ process: sel, input: { input: { case: "pty", value: Buffer.from("\n") } } });
        }
      }
      if (ev.case === "end") exit = ev.value.exitCode;
    }
    assert.match(out, /30 100/);
    assert.match(out, /40 120/);
    assert.match(out, /is-a-tty/);
    assert.equal(exit, 0);
  });
});
