// For scripts/e2b-sdk-suite.sh: which of E2B's test files can run against the
// published package. The tests import the SDK's sources (../src/...); the
// runner points every such path at the package (`export * from 'e2b'`). A file
// runs when every name it takes from those paths at run time is one the
// package exports (names used only as types are erased by the TypeScript
// transform); files that reach into modules the package does not expose (its
// internals, mocks of them) are listed as not runnable.
//   node e2b-suite-imports.mjs <tests dir> <module dir with node_modules/e2b>
// Prints JSON: {notRunnable: [{file, why}], shims: ["sandbox/filesystem", ...]}
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [testsDir, moduleDir] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(moduleDir), "package.json"));
const exported = new Set(Object.keys(await import(require.resolve("e2b"))));

const files = [];
const walk = (d) => {
  for (const e of fs.readdirSync(d, { withFileTypes: true })) {
    const p = path.join(d, e.name);
    if (e.isDirectory()) walk(p);
    else if (/\.(test\.ts|ts)$/.test(e.name)) files.push(p);
  }
};
walk(testsDir);

const SRC = /((?:\.\.\/)+)src(?:\/([^'"]+?))?(?:\.js)?['"]/;
const shims = new Set();
const notRunnable = [];
for (const f of files.filter((f) => f.endsWith(".test.ts"))) {
  const text = fs.readFileSync(f, "utf8");
  const why = [];
  // Module mocks of SDK internals cannot reach the published package's own modules.
  for (const m of text.matchAll(/vi\.(?:mock|doMock|doUnmock)\(\s*['"]((?:\.\.\/)+src\/[^'"]+)['"]/g)) {
    why.push(`mocks ${m[1]}`);
  }
  const imports = [
    ...text.matchAll(/import\s+(type\s+)?\{([^}]*)\}\s+from\s+['"]((?:\.\.\/)+src(?:\/[^'"]*)?)['"]/g),
  ].map((m) => ({ typeOnly: Boolean(m[1]), names: m[2], from: m[3] }));
  for (const m of text.matchAll(
    /const\s+\{([^}]*)\}\s*=\s*await\s+import\(\s*['"]((?:\.\.\/)+src(?:\/[^'"]*)?)['"]/g,
  )) {
    imports.push({ typeOnly: false, names: m[1], from: m[2] });
  }
  for (const imp of imports) {
    const sub = SRC.exec(`${imp.from}'`)?.[2];
    if (sub && !/^(index|errors)$/.test(sub)) shims.add(sub);
    if (imp.typeOnly) continue;
    for (const raw of imp.names.split(",")) {
      const part = raw.trim();
      if (!part || part.startsWith("type ")) continue;
      const [name, alias] = part.split(/\s+as\s+/).map((s) => s.trim());
      if (exported.has(name)) continue;
      // Used only as a type (after `:`, in `<...>`, `as X`, `implements X`)? Then it is erased.
      const local = alias ?? name;
      const uses = [...text.matchAll(new RegExp(`(.{0,12})\\b${local}\\b`, "g"))].slice(1);
      const asType = (before) =>
        /(:\s*|<\s*|,\s*|\bas\s+|\bimplements\s+|\|\s*|&\s*)[\w.<>[\]]*$/.test(before);
      if (uses.length && uses.every((u) => asType(u[1]))) continue;
      why.push(`uses ${name} from ${imp.from}`);
    }
  }
  if (why.length) notRunnable.push({ file: path.relative(testsDir, f), why: why.join("; ") });
}
process.stdout.write(`${JSON.stringify({ notRunnable, shims: [...shims] })}\n`);
