#!/usr/bin/env bash
# Runs E2B's public JS SDK test suite, unmodified, against a running Firebreak
# control plane, with the published `e2b` package, and prints the count and
# the failing tests. The suite itself is not part of this repository: fetch
# e2b-dev/E2B and pass its packages/js-sdk directory (or its tests directory).
#
#   E2B_API_KEY=e2b_<hex> FIREBREAK_URL=http://127.0.0.1:3000 \
#     scripts/e2b-sdk-suite.sh /path/to/E2B/packages/js-sdk [vitest args...]
#
# What it does, in a scratch directory ($E2B_SUITE_WORK, default
# ${TMPDIR:-/tmp}/firebreak-e2b-suite), never inside this repository:
# - copies the suite's tests/ there, unchanged;
# - writes src/index.ts and src/errors.ts that re-export the published package
#   (the tests import the SDK as ../src); test files that import SDK internals
#   the published package does not expose are not run (listed as such);
# - installs e2b (the version this repository pins), vitest and msw, then
#   removes the SDK's optional undici transport so it uses the global fetch,
#   as the suite's own setup file arranges (its msw mocks patch global fetch);
# - runs vitest with E2B_API_URL and E2B_SANDBOX_URL pointed at FIREBREAK_URL,
#   skipping only what needs E2B's cloud build service, its volumes or
#   secrets, or the internet (SKIP_FILES and SKIP_TESTS below);
# - writes the JSON report to $E2B_SUITE_WORK/report.json and prints a summary.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUITE="${1:?usage: $0 <E2B packages/js-sdk dir or its tests dir> [vitest args...]}"
shift
[ -d "$SUITE/tests" ] && SUITE="$SUITE/tests"
[ -f "$SUITE/setup.ts" ] || { echo "error: $SUITE has no setup.ts: not E2B's js-sdk tests" >&2; exit 2; }
: "${FIREBREAK_URL:?set FIREBREAK_URL to the control plane (firebreak up prints it)}"
: "${E2B_API_KEY:?set E2B_API_KEY=e2b_<the 64 hex of a fb_ key>}"

WORK="${E2B_SUITE_WORK:-${TMPDIR:-/tmp}/firebreak-e2b-suite}"
case "$WORK" in "$ROOT"/*) echo "error: the scratch directory must be outside the repository" >&2; exit 2 ;; esac
mkdir -p "$WORK"
E2B_VERSION="$(node -p "require('$ROOT/packages/control-plane/package.json').devDependencies.e2b")"

# Dependencies (once per version set).
DEPS="e2b@${E2B_VERSION} vitest@4.1.10 msw@2.12.10 dotenv@16.4.5"
if [ "$(cat "$WORK/.deps" 2>/dev/null)" != "$DEPS" ]; then
  (cd "$WORK" && printf '{"name":"e2b-suite-runner","private":true,"type":"module"}\n' > package.json &&
    npm install --no-audit --no-fund --loglevel=error --save-exact $DEPS)
  echo "$DEPS" > "$WORK/.deps"
fi
# The SDK loads undici (or undici8) optionally and falls back to the global
# fetch without it; the suite's setup forces that fallback so msw sees requests.
rm -rf "$WORK/node_modules/undici" "$WORK/node_modules/undici8"

rm -rf "$WORK/tests" "$WORK/src"
cp -r "$SUITE" "$WORK/tests"
mkdir -p "$WORK/src"
printf "export * from 'e2b'\nexport { default } from 'e2b'\n" > "$WORK/src/index.ts"
printf "export * from 'e2b'\n" > "$WORK/src/errors.ts"

# Not run: E2B's cloud build service (templates), volumes, secrets, other
# runtimes (browser, Cloudflare), and test files that import SDK internals.
SKIP_FILES=(template/ volume/ secret/ runtimes/ bundle/ connectionConfig.browser.test.ts)
internal=()
while IFS= read -r f; do
  rel="${f#"$WORK/tests/"}"
  if grep -Eq "from '(\.\./)+src/(api|envd|sandbox|template|undici|utils|logs|volume)[/']" "$f"; then
    internal+=("$rel")
  fi
done < <(find "$WORK/tests" -name '*.test.ts' | sort)

# Tests that need the internet (public addresses and names); by title.
SKIP_TESTS=(
  "internet access enabled" "internet access default"
  "allow specific IP with deny all traffic" "deny specific IP address"
  "allow takes precedence over deny" "injected header is reflected by the httpbin sidecar"
  "denies a previously reachable IP after update" "omitting fields replaces all egress rules"
)
skip_re="$(printf '%s|' "${SKIP_TESTS[@]}")"
skip_re="^(?!.*(${skip_re%|})).*\$"

excludes="$(printf "'tests/%s**',\n" "${SKIP_FILES[@]}")"
for f in "${internal[@]}"; do excludes+="'tests/$f',"$'\n'; done
cat > "$WORK/vitest.config.mts" <<EOF
import { defineConfig } from 'vitest/config'
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    exclude: [
$excludes    ],
    isolate: true,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    environment: 'node',
    maxWorkers: ${E2B_SUITE_WORKERS:-2},
  },
})
EOF

echo "==> not run (SDK internals the published package does not expose): ${internal[*]:-none}" >&2
cd "$WORK"
set +e
E2B_API_URL="$FIREBREAK_URL" E2B_SANDBOX_URL="${E2B_SANDBOX_URL:-$FIREBREAK_URL}" \
  npx vitest run --reporter=default --reporter=json --outputFile.json=report.json \
  -t "$skip_re" "$@"
rc=$?
set -e
node "$ROOT/scripts/e2b-sdk-suite-summary.mjs" report.json
exit $rc
