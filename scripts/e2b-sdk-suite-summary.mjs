// Summarizes a vitest JSON report of E2B's SDK suite (scripts/e2b-sdk-suite.sh):
// counts, then each failing test with the first line of its error.
import fs from "node:fs";

const report = JSON.parse(fs.readFileSync(process.argv[2] ?? "report.json", "utf8"));
const counts = { passed: 0, failed: 0, skipped: 0 };
const failures = [];
for (const file of report.testResults ?? []) {
  const name = file.name.replace(/^.*?\/tests\//, "");
  if (!file.assertionResults?.length && file.status === "failed") {
    failures.push(`${name} (whole file): ${String(file.message).split("\n")[0]}`);
  }
  for (const t of file.assertionResults ?? []) {
    if (t.status === "passed") counts.passed++;
    else if (t.status === "failed") {
      counts.failed++;
      const first = (t.failureMessages?.[0] ?? "").split("\n")[0].slice(0, 240);
      failures.push(`${name} > ${t.fullName}: ${first}`);
    } else counts.skipped++;
  }
}
const ran = counts.passed + counts.failed;
console.log(
  `\nE2B SDK suite: ${counts.passed} of ${ran} passed, ${counts.failed} failed, ${counts.skipped} skipped`,
);
for (const f of failures) console.log(`  FAIL ${f}`);
