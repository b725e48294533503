// The README's two commands are what a new user runs: they exist, are
// executable, need no sudo, and CI (.ci/run) runs the second one exactly as
// written. scripts/fresh-root/inside.sh runs the first one the same way.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const read = (f: string) => fs.readFileSync(path.join(REPO, f), "utf8");

/** The commands of the sh block under "## Two commands", comments stripped. */
function twoCommands(): string[] {
  const section = /^## Two commands\n([\s\S]*?)^## /m.exec(read("README.md"))?.[1] ?? "";
  const block = /^```sh\n([\s\S]*?)^```$/m.exec(section)?.[1] ?? "";
  return block
    .split("\n")
    .map((l) => l.replace(/\s*#.*$/, "").trim())
    .filter(Boolean);
}

test("the README's two commands are the quickstart and the test suite, run as root without sudo", () => {
  const cmds = twoCommands();
  assert.deepEqual(cmds, ["./scripts/quickstart.sh", "./scripts/test.sh"]);
  for (const c of cmds) {
    const st = fs.statSync(path.join(REPO, c));
    assert.ok(st.mode & 0o100, `${c} is not executable`);
  }
});

test(".ci/run runs the README's test command exactly", () => {
  const run = read(".ci/run");
  const execs = run.split("\n").filter((l) => /^\s*exec\s/.test(l));
  assert.deepEqual(execs, [`exec ${twoCommands()[1]}`]);
});

test("no sudo in the set-up scripts or the docs that describe set-up (minimal hosts have none)", () => {
  for (const f of [
    "README.md",
    "docs/ARCHITECTURE.md",
    "docs/ERRORS.md",
    "docs/BENCHMARKS.md",
    "scripts/setup.sh",
    "scripts/quickstart.sh",
    "scripts/test.sh",
  ]) {
    const hits = read(f)
      .split("\n")
      .filter((l) => /\bsudo\s+\S/.test(l) && !/no `?sudo`?/i.test(l));
    assert.deepEqual(hits, [], `${f} tells the user to use sudo`);
  }
});
