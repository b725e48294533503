// The CLI end to end: ./bin/firebreak spawned as a user would run it, against
// the test state dir. Bad input must give a clear error that says how to fix
// it, a non-zero exit code, and leave nothing behind.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { run } from "../../node-agent/src/host/exec.ts";
import { paths } from "../../node-agent/src/index.ts";
import {
  assertNoLeaks,
  assertNoLeftovers,
  CLI,
  config,
  listDir,
  ownerRecords,
  qemuProcesses,
  REPO_ROOT,
  runCli,
  STATE_DIR,
  skipUnlessRoot,
  template,
  waitFor,
} from "../../node-agent/test/helpers.ts";

let scratch: string;

/** A small tmpfs, unmounted (and its mount point removed) after the test. */
async function smallTmpfs(t: { after: (fn: () => Promise<void>) => void }, size: string): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-tmpfs-"));
  await run("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir]);
  t.after(async () => {
    const u = await run("umount", [dir], { allowFailure: true });
    if (u.exitCode !== 0) await run("umount", ["-l", dir], { allowFailure: true });
    await fs.rmdir(dir).catch(() => {});
  });
  return dir;
}

describe("firebreak CLI", { skip: skipUnlessRoot }, () => {
  before(async () => {
    scratch = await fs.mkdtemp(path.join(os.tmpdir(), "fb-cli-"));
    // scripts/test.sh builds base first; build it here otherwise (a cache hit normally).
    await template("base");
  });
  after(async () => {
    await fs.rm(scratch, { recursive: true, force: true });
    await assertNoLeaks();
  });

  test("firebreak run -- python3 -c 'print(6*7)' prints 42", async () => {
    const r = await runCli(["run", "--", "python3", "-c", "print(6*7)"]);
    assert.equal(r.stdout, "42\n", r.stderr);
    assert.equal(r.code, 0, r.stderr);
    await assertNoLeaks();
  });

  test("firebreak run -- sh -c 'exit 7' exits 7", async () => {
    const r = await runCli(["run", "--", "sh", "-c", "exit 7"]);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, "");
    await assertNoLeaks();
  });

  test("stdin is piped in, stderr stays stderr, -e env reaches the command", async () => {
    const r = await runCli(
      [
        "run",
        "-e",
        "FB_FROM_CLI=yes it is",
        "--",
        "sh",
        "-c",
        'read x; echo "got $x|$FB_FROM_CLI|$(id -un)|$HOME"; echo oops >&2',
      ],
      { input: "hello\n" },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "got hello|yes it is|user|/home/user\n");
    assert.match(r.stderr, /^oops$/m);
  });

  test("-u root runs the command as root", async () => {
    const r = await runCli(["run", "-u", "root", "--", "sh", "-c", 'echo "$(id -un) $(id -u) $HOME"']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "root 0 /root\n");
  });

  test("Ctrl-C during a run stops the sandbox, exits 130 and leaves nothing", async () => {
    const child = spawn(CLI, ["run", "--", "sh", "-c", "echo started; sleep 600"], {
      cwd: REPO_ROOT,
      env: { ...process.env, FIREBREAK_STATE_DIR: STATE_DIR },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
    });
    child.stderr.on("data", (b: Buffer) => {
      err += b.toString();
    });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    try {
      await waitFor(
        "the command's first line",
        () => out.includes("started\n") || err.includes("error"),
        120_000,
      );
      assert.equal(out, "started\n", err);
      child.kill("SIGINT");
      assert.equal(await exited, 130, err);
    } finally {
      child.kill("SIGKILL");
    }
    await assertNoLeaks();
  });

  test("an unknown template: error names it and says how to build one; nothing is left", async () => {
    const r = await runCli(["run", "--template", "nope", "--", "true"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /TEMPLATE_NOT_FOUND/);
    assert.match(r.stderr, /\bnope\b/);
    assert.match(r.stderr, /firebreak template build/);
    assert.equal(r.stdout, "");
    assert.ok(!existsSync(path.join(paths.templatesDir(config), "nope.json")));
    // The CLI has exited: anything it made would now have a dead owner.
    await assertNoLeaks();
  });

  test("Ctrl-C while the sandbox is still starting exits 130 and leaves nothing", async () => {
    const child = spawn(CLI, ["run", "--", "echo", "should not run"], {
      cwd: REPO_ROOT,
      env: { ...process.env, FIREBREAK_STATE_DIR: STATE_DIR },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => {
      out += b.toString();
    });
    child.stderr.on("data", (b: Buffer) => {
      err += b.toString();
    });
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    let id: string | undefined;
    try {
      // The moment its QEMU process exists, the create is in flight.
      id = await waitFor(
        "the CLI's sandbox to have a QEMU process",
        async () => {
          for (const [qid] of await qemuProcesses()) {
            const rec = (await ownerRecords()).get(qid);
            if (rec?.ownerPid === child.pid) return qid;
          }
          return undefined;
        },
        120_000,
      );
      child.kill("SIGINT");
      const code = await exited;
      // The create may win the race (the command then runs first); either way
      // the CLI ends by the signal or normally, and leaves nothing.
      if (out === "") assert.equal(code, 130, err);
      else assert.ok(code === 130 || code === 0, `exit ${code}: ${err}`);
    } finally {
      child.kill("SIGKILL");
    }
    await assertNoLeftovers([id]);
    await assertNoLeaks();
  });

  test("a spec that is not JSON: TEMPLATE_SPEC_INVALID naming the file, usage exit code", async () => {
    const file = path.join(scratch, "broken.json");
    await fs.writeFile(file, '{ "name": "broken", ');
    const r = await runCli(["template", "build", file]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /TEMPLATE_SPEC_INVALID/);
    assert.ok(r.stderr.includes(file), r.stderr);
    assert.match(r.stderr, /not valid JSON/);
  });

  test("a spec with invalid fields: each field is named with its fix", async () => {
    const file = path.join(scratch, "invalid.json");
    await fs.writeFile(file, JSON.stringify({ name: "Bad Name!", diskMib: 10, pakages: ["python3"] }));
    const r = await runCli(["template", "build", file]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /TEMPLATE_SPEC_INVALID/);
    assert.match(r.stderr, /- name: use 1-40 lowercase letters/);
    assert.match(r.stderr, /- diskMib: .*512/);
    assert.match(r.stderr, /pakages/);
    await assertNoLeaks();
  });

  test("a spec file that does not exist: TEMPLATE_NOT_FOUND naming the path", async () => {
    const file = path.join(scratch, "missing.json");
    const r = await runCli(["template", "build", file]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /TEMPLATE_NOT_FOUND/);
    assert.ok(r.stderr.includes(file), r.stderr);
  });

  test("not root: NOT_ROOT with a clear message", async () => {
    const r = await runCli(["run", "--", "true"], {
      prefix: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /NOT_ROOT/);
    assert.match(r.stderr, /needs root.*Run it as root/s);
    assert.equal(r.stdout, "");
  });

  test("template build base again is a cache hit", async () => {
    // Built (or found) once, then the same build again must be a hit. Two CLI
    // calls, so files edited meanwhile in a shared checkout cannot fool it.
    const build = async () => {
      const r = await runCli(["template", "build", "base", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { name: string; cached: boolean; key: string };
    };
    const first = await build();
    const again = await build();
    assert.equal(again.name, "base");
    assert.equal(again.cached, true);
    assert.equal(again.key, first.key);
  });

  interface DoctorReport {
    ok: boolean;
    checks: { name: string; status: string; detail: string; fix?: string }[];
    accelerator?: string;
    acceleratorReason?: string;
    stateDir: string;
  }

  test("doctor --json: every host requirement checked and met here, the accelerator (kvm or tcg) with a reason", async () => {
    const r = await runCli(["doctor", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as DoctorReport;
    assert.equal(report.ok, true, JSON.stringify(report.checks));
    const names = report.checks.map((c) => c.name);
    for (const name of [
      "root",
      "host tools",
      "qemu",
      "disk",
      "tun",
      "netns",
      "nftables",
      "cgroups",
      "guest kernel",
      "accelerator",
      "service",
    ]) {
      assert.ok(names.includes(name), `no ${name} check: ${names.join(", ")}`);
    }
    for (const c of report.checks) {
      assert.notEqual(c.status, "fail", `${c.name}: ${c.detail}`);
      if (c.status === "warn") assert.ok(c.fix, `${c.name} warns without a fix`);
    }
    assert.ok(["kvm", "tcg"].includes(report.accelerator ?? ""), report.accelerator);
    assert.ok((report.acceleratorReason ?? "").length > 5, report.acceleratorReason);
    assert.equal(report.stateDir, STATE_DIR);
  });

  test("doctor: a hard requirement missing (too little disk for a build) is a FAIL with its fix, exit 1", async () => {
    const r = await runCli(["doctor"], { env: { FIREBREAK_MIN_FREE_MIB: String(2 ** 40) } });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, /^FAIL +disk +.*MiB free, template builds need \d+ MiB/m);
    assert.match(r.stdout, /^ +fix: free space .*FIREBREAK_STATE_DIR/m);
    assert.match(r.stdout, /^ok +tun /m);
    assert.match(r.stdout, /1 hard requirement\(s\) missing/);
  });

  test("no space (state dir on a 32 MiB tmpfs): NO_SPACE before building, nothing left", async (t) => {
    const dir = await smallTmpfs(t, "32m");
    const r = await runCli(["template", "build", "base"], { env: { FIREBREAK_STATE_DIR: dir } });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /NO_SPACE/);
    assert.ok(r.stderr.includes(dir), r.stderr);
    assert.match(r.stderr, /FIREBREAK_STATE_DIR|free/i);
    assert.deepEqual(await listDir(path.join(dir, "images")), []);
    assert.deepEqual(await listDir(path.join(dir, "templates")), []);
  });

  test("no space while debootstrap runs (the free-space check lowered): NO_SPACE, nothing left", async (t) => {
    const dir = await smallTmpfs(t, "32m");
    const r = await runCli(["template", "build", "base"], {
      env: { FIREBREAK_STATE_DIR: dir, FIREBREAK_MIN_FREE_MIB: "1" },
    });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /NO_SPACE/, r.stderr);
    assert.ok(r.stderr.includes(dir), r.stderr);
    assert.deepEqual(await listDir(path.join(dir, "images")), []);
    assert.deepEqual(await listDir(path.join(dir, "templates")), []);
  });

  test("the kernel cannot be prepared (no room to download it): KERNEL_MISSING, nothing left", async (t) => {
    const dir = await smallTmpfs(t, "512k");
    const r = await runCli(["doctor", "--json"], { env: { FIREBREAK_STATE_DIR: dir } });
    assert.equal(r.code, 1, r.stderr);
    const report = JSON.parse(r.stdout) as DoctorReport;
    assert.equal(report.ok, false);
    const kernel = report.checks.find((c) => c.name === "guest kernel");
    assert.equal(kernel?.status, "fail", JSON.stringify(report.checks));
    assert.match(kernel.detail, /KERNEL_MISSING/);
    assert.match(kernel.detail, /linux-image-\S+-cloud-amd64/);
    assert.ok(kernel.fix);
    assert.equal(report.checks.find((c) => c.name === "disk")?.status, "fail");
    // No half-prepared kernel.
    assert.deepEqual(await listDir(path.join(dir, "kernel")), []);
  });
});
