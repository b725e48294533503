// deploy/firebreak.service, the unit set-up installs: systemd accepts it, and
// it says what the README promises (runs `firebreak up` as root, restarts on
// failure, a stop signals `up` alone so it can kill and bill running
// sandboxes and keep paused ones, logs to the journal).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const UNIT = fileURLToPath(new URL("../../../deploy/firebreak.service", import.meta.url));

function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const s = /^\[(\w+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    const key = `${section}.${line.slice(0, eq)}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

test("the unit runs firebreak up as root, restarts on failure, stops up alone, logs to the journal", () => {
  const d = directives(fs.readFileSync(UNIT, "utf8"));
  assert.deepEqual(d.get("Service.ExecStart"), ["/usr/local/bin/firebreak up --listen 127.0.0.1:3000"]);
  assert.deepEqual(d.get("Service.Environment"), ["FIREBREAK_STATE_DIR=/var/lib/firebreak"]);
  assert.equal(d.get("Service.User"), undefined, "the node needs root");
  assert.deepEqual(d.get("Service.Restart"), ["on-failure"]);
  assert.deepEqual(d.get("Service.KillMode"), ["mixed"]);
  assert.deepEqual(d.get("Service.KillSignal"), ["SIGTERM"]);
  assert.ok(Number(d.get("Service.TimeoutStopSec")?.[0]) >= 60);
  assert.equal(d.get("Service.StandardOutput"), undefined, "output goes to the journal (the default)");
  assert.deepEqual(d.get("Install.WantedBy"), ["multi-user.target"]);
});

test("systemd-analyze verify accepts the unit", {
  skip: fs.existsSync("/usr/bin/systemd-analyze") ? false : "systemd-analyze is not installed",
}, () => {
  const r = spawnSync("systemd-analyze", ["verify", UNIT], { encoding: "utf8" });
  const problems = `${r.stdout}${r.stderr}`.split("\n").filter((l) => l.includes(path.basename(UNIT)));
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  assert.deepEqual(problems, []);
});
