// Commands in a real microVM: live output, stdout/stderr separation, stdin,
// signals, environment and users. One sandbox serves the whole file.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { processPb } from "@firebreak/protocol";
import type { Sandbox } from "../src/index.ts";
import {
  assertNoLeaks,
  assertNoLeftovers,
  exec,
  killSandbox,
  newSandbox,
  runtime,
  skipUnlessRoot,
  waitFor,
} from "./helpers.ts";

type StartStream = AsyncIterable<processPb.StartResponse>;

/** Reads a Start stream into events, calling `onEvent` (awaited) for each one as it arrives. */
async function consume(
  stream: StartStream,
  onEvent: (ev: NonNullable<processPb.ProcessEvent["event"]>) => Promise<void> | void = () => {},
): Promise<processPb.ProcessEvent_EndEvent> {
  for await (const res of stream) {
    const ev = res.event?.event;
    if (!ev || ev.case === undefined || ev.case === "keepalive") continue;
    await onEvent(ev);
    if (ev.case === "end") return ev.value;
  }
  throw new Error("stream closed without an end event");
}

const text = (b: Uint8Array) => Buffer.from(b).toString();

describe("commands in a microVM", { skip: skipUnlessRoot }, () => {
  let sb: Sandbox;
  before(async () => {
    sb = await newSandbox({
      envVars: { FB_GREETING: "hello from the host", FB_SPACES: "a  b\tc" },
    });
  });
  after(async () => {
    await killSandbox(sb);
    if (sb) await assertNoLeftovers([sb.id]);
    await assertNoLeaks();
  });

  test("output is streamed line by line while the command is still running", async () => {
    const client = sb.envd();
    const script = 'for i in 1 2 3 4 5; do echo "line $i"; sleep 0.3; done';
    const stream = client.process.start({ process: { cmd: "/bin/bash", args: ["-c", script], envs: {} } });
    let pid = -1;
    const chunks: string[] = [];
    let runningAtFirstLine: boolean | undefined;
    const end = await consume(stream, async (ev) => {
      if (ev.case === "start") pid = ev.value.pid;
      if (ev.case === "data" && ev.value.output.case === "stdout") {
        chunks.push(text(ev.value.output.value));
        if (runningAtFirstLine === undefined) {
          // Evidence that line 1 was delivered before the command finished:
          // the guest still lists the process when we hold line 1.
          const { processes } = await client.process.list({});
          runningAtFirstLine = processes.some((p) => p.pid === pid);
        }
      }
    });
    assert.equal(end.exited, true);
    assert.equal(end.exitCode, 0);
    assert.equal(runningAtFirstLine, true, "the command had already exited when its first line arrived");
    assert.equal(chunks.join(""), "line 1\nline 2\nline 3\nline 4\nline 5\n");
    // One chunk per line (printed 300 ms apart), not one batch at exit.
    assert.deepEqual(chunks, ["line 1\n", "line 2\n", "line 3\n", "line 4\n", "line 5\n"]);
  });

  test("stdin reaches an interactive command, and its answers arrive before the next input", async () => {
    const client = sb.envd();
    const stream = client.process.start({
      process: {
        cmd: "/bin/bash",
        args: ["-c", 'echo ready; read a; echo "first:$a"; read b; echo "second:$b"; cat; echo done'],
        envs: {},
      },
      stdin: true,
    });
    const selector = (pid: number) => ({ selector: { case: "pid" as const, value: pid } });
    const stdin = (pid: number, s: string) =>
      client.process.sendInput({
        process: selector(pid),
        input: { input: { case: "stdin", value: Buffer.from(s) } },
      });
    let pid = -1;
    let out = "";
    const sent: string[] = [];
    const end = await consume(stream, async (ev) => {
      if (ev.case === "start") pid = ev.value.pid;
      if (ev.case !== "data" || ev.value.output.case !== "stdout") return;
      out += text(ev.value.output.value);
      // Each input is sent only after the output it depends on has arrived, so
      // the command cannot finish unless both directions stream.
      if (out.includes("ready\n") && !sent.includes("a")) {
        sent.push("a");
        await stdin(pid, "alpha\n");
      }
      if (out.includes("first:alpha\n") && !sent.includes("b")) {
        sent.push("b");
        await stdin(pid, "beta\n");
      }
      if (out.includes("second:beta\n") && !sent.includes("rest")) {
        sent.push("rest");
        await stdin(pid, "tail line\n");
        await client.process.closeStdin({ process: selector(pid) });
      }
    });
    assert.equal(end.exitCode, 0);
    assert.equal(out, "ready\nfirst:alpha\nsecond:beta\ntail line\ndone\n");
  });

  test("stdin data (256 KiB in chunks) arrives intact", async () => {
    const data = randomBytes(256 * 1024);
    async function* chunks() {
      for (let i = 0; i < data.length; i += 64 * 1024) yield data.subarray(i, i + 64 * 1024);
    }
    const r = await exec(sb, ["sha256sum"], { stdin: chunks() });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout.split(" ")[0], createHash("sha256").update(data).digest("hex"));
  });

  test("stderr stays stderr and stdout stays stdout", async () => {
    const r = await exec(sb, [
      "/bin/bash",
      "-c",
      "echo out-1; echo err-1 >&2; python3 -c 'import sys; sys.stderr.write(\"err-2\\n\")'; echo out-2",
    ]);
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "out-1\nout-2\n");
    assert.equal(r.stderr, "err-1\nerr-2\n");
  });

  test("exit codes come back as they are", async () => {
    assert.equal((await exec(sb, ["/bin/sh", "-c", "exit 7"])).exitCode, 7);
    assert.equal((await exec(sb, ["true"])).exitCode, 0);
    assert.equal((await exec(sb, ["python3", "-c", "print(6*7)"])).stdout, "42\n");
  });

  test("SIGTERM reaches the command (its trap runs)", async () => {
    const client = sb.envd();
    const stream = client.process.start({
      process: {
        cmd: "/bin/bash",
        args: ["-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"],
        envs: {},
      },
    });
    let pid = -1;
    let out = "";
    const end = await consume(stream, async (ev) => {
      if (ev.case === "start") pid = ev.value.pid;
      if (ev.case === "data" && ev.value.output.case === "stdout") {
        const before = out;
        out += text(ev.value.output.value);
        if (!before.includes("ready") && out.includes("ready")) {
          await client.process.sendSignal({
            process: { selector: { case: "pid", value: pid } },
            signal: processPb.Signal.SIGTERM,
          });
        }
      }
    });
    assert.equal(out, "ready\ngot-term\n");
    assert.equal(end.exited, true);
    assert.equal(end.exitCode, 3);
  });

  test("SIGTERM and SIGKILL stop a command that does not handle them", async () => {
    for (const [signal, name, code] of [
      [processPb.Signal.SIGTERM, "terminated", 143],
      [processPb.Signal.SIGKILL, "killed", 137],
    ] as const) {
      const client = sb.envd();
      const ran = sb.exec(["sleep", "600"], {});
      // The process table shows the sleep once it runs; signal it from outside the stream.
      const pid = await waitFor(`sleep 600 to start (${name})`, async () => {
        const { processes } = await client.process.list({});
        return processes.find((p) => p.config?.cmd === "sleep" && p.config.args[0] === "600")?.pid;
      });
      await client.process.sendSignal({ process: { selector: { case: "pid", value: pid } }, signal });
      const { exitCode } = await ran;
      assert.equal(exitCode, code, `after ${name}`);
    }
    // And a signalled command leaves no process behind in the guest.
    const ps = await exec(sb, ["pgrep", "-x", "sleep"]);
    assert.equal(ps.stdout, "");
  });

  test("an aborted exec does not leave the guest or the host hanging", async () => {
    const ac = new AbortController();
    const ran = sb.exec(["sleep", "600"], { signal: ac.signal });
    await waitFor("sleep to start", async () => {
      const { processes } = await sb.envd().process.list({});
      return processes.some((p) => p.config?.cmd === "sleep");
    });
    ac.abort();
    await assert.rejects(ran);
    // The stream is gone; the process is stopped explicitly, as the agent's README says.
    const { processes } = await sb.envd().process.list({});
    for (const p of processes.filter((p) => p.config?.cmd === "sleep")) {
      await sb.envd().process.sendSignal({
        process: { selector: { case: "pid", value: p.pid } },
        signal: processPb.Signal.SIGKILL,
      });
    }
    await waitFor("sleep to be gone", async () => {
      const { processes } = await sb.envd().process.list({});
      return !processes.some((p) => p.config?.cmd === "sleep");
    });
  });

  test("env vars given at create reach commands; per-command env overrides them", async () => {
    const r = await exec(sb, ["/bin/bash", "-c", 'printf "%s|%s|%s" "$FB_GREETING" "$FB_SPACES" "$LANG"']);
    assert.equal(r.stdout, "hello from the host|a  b\tc|C.UTF-8");
    const o = await exec(sb, ["printenv", "FB_GREETING"], { env: { FB_GREETING: "overridden" } });
    assert.equal(o.stdout, "overridden\n");
    // Env reaches commands of every user, root included.
    const root = await exec(sb, ["printenv", "FB_GREETING"], { user: "root" });
    assert.equal(root.stdout, "hello from the host\n");
  });

  test("the default user is `user` with home /home/user", async () => {
    const r = await exec(sb, ["/bin/bash", "-c", 'id -un; id -u; echo "$HOME"; pwd; echo "$USER"']);
    assert.equal(r.exitCode, 0);
    const [name, uid, home, cwd, user] = r.stdout.trim().split("\n");
    assert.equal(name, "user");
    assert.notEqual(uid, "0");
    assert.equal(home, "/home/user");
    assert.equal(cwd, "/home/user");
    assert.equal(user, "user");
    // The home directory belongs to the user.
    const owner = await exec(sb, ["stat", "-c", "%U", "/home/user"]);
    assert.equal(owner.stdout.trim(), "user");
    // And the user cannot write where only root can.
    const denied = await exec(sb, ["/bin/sh", "-c", "echo x > /etc/should-not-exist"]);
    assert.notEqual(denied.exitCode, 0);
    assert.match(denied.stderr, /Permission denied/);
  });

  test("root can be requested", async () => {
    const r = await exec(sb, ["/bin/bash", "-c", 'id -un; id -u; echo "$HOME"'], { user: "root" });
    assert.equal(r.stdout, "root\n0\n/root\n");
    // Through a client that acts as root too.
    const { processes } = await sb.envd("root").process.list({});
    assert.ok(Array.isArray(processes));
    const w = await exec(
      sb,
      ["/bin/sh", "-c", "echo ok > /etc/written-by-root && cat /etc/written-by-root"],
      {
        user: "root",
      },
    );
    assert.equal(w.stdout, "ok\n");
  });

  test("an unknown user is refused with a clear error", async () => {
    await assert.rejects(exec(sb, ["true"], { user: "nobody-here" }), /nobody-here/);
  });

  test("the guest runs with its idle wake-ups trimmed (no lockup watchdog, no proactive compaction, slow vmstat)", async () => {
    const r = await exec(sb, [
      "cat",
      "/proc/sys/kernel/watchdog",
      "/proc/sys/vm/compaction_proactiveness",
      "/proc/sys/vm/stat_interval",
    ]);
    assert.equal(r.stdout, "0\n0\n60\n", `kernel settings: ${r.stdout}${r.stderr}`);
  });

  test("the sandbox is still healthy after everything above", async () => {
    const rt = await runtime();
    assert.equal(rt.get(sb.id).state, "running");
    assert.equal((await exec(sb, ["echo", "still here"])).stdout, "still here\n");
  });
});
