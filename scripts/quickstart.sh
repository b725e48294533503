#!/usr/bin/env bash
# Brings Firebreak up on a fresh Debian 12 host, as root, and shows it working:
# installs what it needs, prepares the guest kernel, builds the default `base`
# template and its snapshot (once; later runs reuse them), starts the control
# plane (`firebreak up` on 127.0.0.1:3000, left running in the background with
# a warm pool), and runs commands in fresh microVMs through its API.
# Safe to run again: a server that is already up is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
fb=./bin/firebreak
STATE="${FIREBREAK_STATE_DIR:-/var/lib/firebreak}"
LISTEN="${FIREBREAK_LISTEN:-127.0.0.1:3000}"
URL="http://${LISTEN}"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "host check"
$fb doctor

say "building the base template and its snapshot (a few minutes the first time)"
$fb template build base

# The admin key: kept root-only in the state dir so a second run can reuse it.
mkdir -p "$STATE"
if [ ! -s "$STATE/admin-key" ]; then
  (umask 077 && printf 'fb_%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$STATE/admin-key")
fi
export FIREBREAK_API_KEY="$(cat "$STATE/admin-key")"
export FIREBREAK_URL="$URL"

if curl -fsS "$FIREBREAK_URL/v1/health" >/dev/null 2>&1; then
  say "the control plane is already up at $FIREBREAK_URL"
else
  say "starting the control plane: firebreak up --listen $LISTEN (log: $STATE/firebreak-up.log)"
  FIREBREAK_ADMIN_KEY="$FIREBREAK_API_KEY" nohup "$fb" up --listen "$LISTEN" >"$STATE/firebreak-up.log" 2>&1 &
  echo $! > "$STATE/firebreak-up.pid"
  for _ in $(seq 1 120); do
    curl -fsS "$FIREBREAK_URL/v1/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
  curl -fsS "$FIREBREAK_URL/v1/health" >/dev/null || { tail -20 "$STATE/firebreak-up.log"; exit 1; }
fi

say "a sandbox through the API: create, exec, kill"
id="$($fb sandbox create --json | sed -n 's/.*"id": *"\([a-z0-9]*\)".*/\1/p' | head -1)"
echo "created sandbox $id"
$fb sandbox exec "$id" -- python3 -c 'print(6*7)'
$fb sandbox kill "$id"

say "firebreak run (create, run with live output, tear down; exit code passes through)"
$fb run -- python3 -c 'print("hello from a microVM")'
set +e
$fb run -- sh -c 'exit 7'
code=$?
set -e
echo "firebreak run -- sh -c 'exit 7' exited with $code"

cat <<EOF

Firebreak is up at $FIREBREAK_URL (pid $(cat "$STATE/firebreak-up.pid" 2>/dev/null || echo "?"), log $STATE/firebreak-up.log).
Use it from this shell:

  export FIREBREAK_URL=$FIREBREAK_URL
  export FIREBREAK_API_KEY=\$(cat $STATE/admin-key)
  $fb sandbox create --json
  $fb run -- bash -c 'uname -a; cat /etc/os-release'

Stop it with: kill \$(cat $STATE/firebreak-up.pid)
EOF
