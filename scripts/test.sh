#!/usr/bin/env bash
# Runs the whole Firebreak test suite on a Debian 12 host, as root:
# set-up (idempotent), typecheck, lint, unit tests, then integration tests that
# boot real microVMs. The base template is built once into the test state
# directory and reused across runs (content-addressed: rebuilt when it changes).
#
# Alongside them, in the background, the fresh-root test
# (scripts/fresh-root/run.sh) runs the README's quickstart on a bare Debian 12
# root in namespaces of its own: it shares nothing with the other tests (own
# root, state dir, run dir, network and cgroup subtree) but the CPU.
# FIREBREAK_FRESH_ROOT=0 skips it (a quicker run on a developer's machine; CI
# always runs it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
export PATH="/opt/firebreak/node/current/bin:${PATH}"
export FIREBREAK_STATE_DIR="${FIREBREAK_STATE_DIR:-/var/lib/firebreak-test}"
export NODE_OPTIONS="--disable-warning=ExperimentalWarning"

step() { printf '\n\033[1m==> [%ss] %s\033[0m\n' "$SECONDS" "$*"; }

fresh_pid=""
fresh_log=""
if [ "${FIREBREAK_FRESH_ROOT:-1}" != 0 ]; then
  fresh_log="$(mktemp /var/tmp/firebreak-fresh-root-XXXXXX.log)"
  step "fresh-root test: started in the background (log: $fresh_log)"
  bash scripts/fresh-root/run.sh >"$fresh_log" 2>&1 &
  fresh_pid=$!
  # If anything below fails, stop it (it cleans up after itself) before exiting.
  trap 'if [ -n "$fresh_pid" ]; then kill -TERM "$fresh_pid" 2>/dev/null; wait "$fresh_pid" 2>/dev/null; fi' EXIT
fi

step "typecheck"
npx tsc -p tsconfig.json

step "lint and format check"
npx biome check .

step "unit tests"
node --test --test-concurrency=2 'packages/*/src/**/*.test.ts'

step "build the base and code-interpreter templates (cached after the first run)"
./bin/firebreak template build base
./bin/firebreak template build code-interpreter

step "integration tests (real microVMs)"
# The test state dir belongs to the tests. Sandboxes a killed earlier run left
# paused there would be adopted by every runtime the tests open and reported
# as leaks; no test wants them. (Their VMs, namespaces and cgroups, if any, are
# reclaimed by the reconciler from the host-wide owner records.)
# The same for its control plane database: each run starts from a fresh one
# (a database a development branch migrated differently would fail them all).
rm -rf "${FIREBREAK_STATE_DIR}/sandboxes" "${FIREBREAK_STATE_DIR}/layers" \
  "${FIREBREAK_STATE_DIR}"/control-plane.db "${FIREBREAK_STATE_DIR}"/control-plane.db-* \
  "${FIREBREAK_STATE_DIR}"/control-plane.db.lock
node --test --test-concurrency=1 --test-timeout=900000 'packages/*/test/**/*.test.ts'

if [ -n "$fresh_pid" ]; then
  step "fresh-root test: waiting for it"
  set +e
  wait "$fresh_pid"
  rc=$?
  set -e
  fresh_pid=""
  if [ "$rc" -ne 0 ]; then
    cat "$fresh_log"
    step "fresh-root test FAILED (exit $rc); its whole log is above ($fresh_log)"
    exit "$rc"
  fi
  grep -a -E '^\S*(=== fresh root|\[fresh-root)' "$fresh_log" || true
  rm -f "$fresh_log"
fi
step "all tests passed in ${SECONDS}s"
