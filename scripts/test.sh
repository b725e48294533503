#!/usr/bin/env bash
# Runs the whole Firebreak test suite on a Debian 12 host, as root:
# set-up (idempotent), typecheck, lint, unit tests, then integration tests that
# boot real microVMs. The base template is built once into the test state
# directory and reused across runs (content-addressed: rebuilt when it changes).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
export PATH="/opt/firebreak/node/current/bin:${PATH}"
export FIREBREAK_STATE_DIR="${FIREBREAK_STATE_DIR:-/var/lib/firebreak-test}"
export NODE_OPTIONS="--disable-warning=ExperimentalWarning"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "typecheck"
npx tsc -p tsconfig.json

step "lint and format check"
npx biome check .

step "unit tests"
node --test --test-concurrency=2 'packages/*/src/**/*.test.ts'

step "build the base template (cached after the first run)"
./bin/firebreak template build base
./bin/firebreak template build code-interpreter

step "integration tests (real microVMs)"
node --test --test-concurrency=1 --test-timeout=900000 'packages/*/test/**/*.test.ts'
