#!/usr/bin/env bash
# Runs E2B's public JS SDK test suite, unmodified, against a running Firebreak
# control plane, with the published `e2b` package, and prints the count and
# the failing tests. The suite itself is not part of this repository: fetch
# e2b-dev/E2B and pass its packages/js-sdk directory (or its tests directory).
#
#   # domain mode (default): as the suite runs against E2B, over HTTPS names
#   FIREBREAK_INGRESS_DOMAIN=e2b.firebreak.test firebreak up --listen 127.0.0.1:3000 &
#   E2B_DOMAIN=e2b.firebreak.test E2B_API_KEY=e2b_<hex> FIREBREAK_URL=http://127.0.0.1:3000 \
#     scripts/e2b-sdk-suite.sh /path/to/E2B/packages/js-sdk [vitest args...]
#
#   # url mode: E2B_API_URL and E2B_SANDBOX_URL pointed at the server, plain HTTP
#   E2B_SUITE_MODE=url E2B_API_KEY=... FIREBREAK_URL=... scripts/e2b-sdk-suite.sh ...
#
#   # E2B_SUITE_SDK_VERSION=2.45.0: that published e2b instead of the pinned one
#
# Domain mode starts a TLS front (scripts/e2b-suite-front.mjs, a self-signed
# wildcard certificate made with openssl, trusted through NODE_EXTRA_CA_CERTS)
# on port 443 of a random loopback address, and resolves names under
# E2B_DOMAIN to it (scripts/e2b-suite-dns.mjs, preloaded): what a wildcard DNS
# record and a TLS-terminating proxy do in a real deployment. The suite's
# mocked tests (msw on https://api.<E2B_DOMAIN>) and its preview-URL tests
# (https://<port>-<id>.<domain>) need it; in url mode they fail by design.
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
# - skips only what needs E2B's cloud build service, its volumes or secrets,
#   or the internet (SKIP_FILES and SKIP_TESTS below);
# - writes the JSON report to $E2B_SUITE_WORK/report.json and prints a summary.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUITE="${1:?usage: $0 <E2B packages/js-sdk dir or its tests dir> [vitest args...]}"
shift
[ -d "$SUITE/tests" ] && SUITE="$SUITE/tests"
[ -f "$SUITE/setup.ts" ] || { echo "error: $SUITE has no setup.ts: not E2B's js-sdk tests" >&2; exit 2; }
: "${FIREBREAK_URL:?set FIREBREAK_URL to the control plane (firebreak up prints it)}"
: "${E2B_API_KEY:?set E2B_API_KEY=e2b_<the 64 hex of a fb_ key>}"
MODE="${E2B_SUITE_MODE:-domain}"
if [ "$MODE" = domain ]; then
  : "${E2B_DOMAIN:?set E2B_DOMAIN to the FIREBREAK_INGRESS_DOMAIN of the server (or E2B_SUITE_MODE=url)}"
fi

WORK="${E2B_SUITE_WORK:-${TMPDIR:-/tmp}/firebreak-e2b-suite}"
case "$WORK" in "$ROOT"/*) echo "error: the scratch directory must be outside the repository" >&2; exit 2 ;; esac
mkdir -p "$WORK"
# The SDK version this repository pins, or E2B_SUITE_SDK_VERSION (for example
# the suite's own, from its package.json, to tell SDK/suite drift from
# Firebreak's failures).
E2B_VERSION="${E2B_SUITE_SDK_VERSION:-$(node -p "require('$ROOT/packages/control-plane/package.json').devDependencies.e2b")}"

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
# runtimes (browser, Cloudflare, bundlers), and test files that take names
# from SDK modules the published package does not export
# (scripts/e2b-suite-imports.mjs; every ../src/<module> they import is pointed
# at the package, so imports of public names and types work).
SKIP_FILES=(template/ volume/ secret/ runtimes/ bundle/)
imports="$(node "$ROOT/scripts/e2b-suite-imports.mjs" "$WORK/tests" "$WORK")"
while IFS= read -r m; do
  [ -n "$m" ] || continue
  mkdir -p "$WORK/src/$(dirname "$m")"
  printf "export * from 'e2b'\n" > "$WORK/src/$m.ts"
done < <(node -e 'for (const s of JSON.parse(process.argv[1]).shims) console.log(s)' "$imports")
mapfile -t internal < <(node -e 'for (const n of JSON.parse(process.argv[1]).notRunnable) console.log(n.file)' "$imports")
node -e 'for (const n of JSON.parse(process.argv[1]).notRunnable) console.error(`not run: ${n.file}: ${n.why}`)' "$imports"

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

env_args=()
front_pid=""
cleanup() { [ -n "$front_pid" ] && kill "$front_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [ "$MODE" = domain ]; then
  mkdir -p "$WORK/tls"
  if [ ! -f "$WORK/tls/$E2B_DOMAIN.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=$E2B_DOMAIN" \
      -addext "subjectAltName=DNS:$E2B_DOMAIN,DNS:*.$E2B_DOMAIN" \
      -keyout "$WORK/tls/$E2B_DOMAIN.key" -out "$WORK/tls/$E2B_DOMAIN.pem" 2>/dev/null
  fi
  front="127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))"
  node "$ROOT/scripts/e2b-suite-front.mjs" "$front" "$WORK/tls/$E2B_DOMAIN.pem" "$WORK/tls/$E2B_DOMAIN.key" \
    "$FIREBREAK_URL" > "$WORK/front.log" 2>&1 &
  front_pid=$!
  for _ in $(seq 50); do grep -q ready "$WORK/front.log" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$WORK/front.log" || { echo "error: the TLS front did not start: $(cat "$WORK/front.log")" >&2; exit 1; }
  cp "$ROOT/scripts/e2b-suite-dns.mjs" "$WORK/dns.mjs"
  env_args=(-u E2B_API_URL -u E2B_SANDBOX_URL E2B_DOMAIN="$E2B_DOMAIN" E2B_SUITE_FRONT="$front"
    NODE_EXTRA_CA_CERTS="$WORK/tls/$E2B_DOMAIN.pem" NODE_OPTIONS="${NODE_OPTIONS:-} --import=$WORK/dns.mjs")
else
  env_args=(E2B_API_URL="$FIREBREAK_URL" E2B_SANDBOX_URL="${E2B_SANDBOX_URL:-$FIREBREAK_URL}")
fi

cd "$WORK"
set +e
env "${env_args[@]}" npx vitest run --reporter=default --reporter=json --outputFile.json=report.json \
  -t "$skip_re" "$@"
rc=$?
set -e
node "$ROOT/scripts/e2b-sdk-suite-summary.mjs" report.json
exit $rc
