#!/usr/bin/env bash
# Brings Firebreak up on a fresh Debian 12 host, as root, and shows it working:
# installs what it needs (scripts/setup.sh), checks the host, builds the
# default `base` template and its snapshot (once; later runs reuse them),
# leaves the control plane running (`firebreak up` on 127.0.0.1:3000 with a
# warm pool: the systemd service where systemd runs, `firebreak up --detach`
# elsewhere), and runs commands in fresh microVMs through its API.
# Safe to run again: a server that is already up is reused. Stop it with
# `firebreak down`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
unset FIREBREAK_URL FIREBREAK_API_KEY # the local node until the server is up
fb=./bin/firebreak
STATE="${FIREBREAK_STATE_DIR:-/var/lib/firebreak}"
LISTEN="${FIREBREAK_LISTEN:-127.0.0.1:3000}"
URL="http://${LISTEN}"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
up() { curl -fsS -o /dev/null "$URL/v1/health" 2>/dev/null; }

say "host check"
$fb doctor

say "building the base template and its snapshot (a few minutes the first time)"
$fb template build base

# The service where systemd runs it with the defaults; `firebreak up --detach`
# otherwise (pid and log files in the state dir). Both keep the admin key
# root-only in $STATE/admin-key.
if up; then
  say "the control plane is already up at $URL"
elif [ -d /run/systemd/system ] && [ "$STATE" = /var/lib/firebreak ] && [ "$LISTEN" = 127.0.0.1:3000 ]; then
  say "starting the control plane: systemctl start firebreak (log: journalctl -u firebreak)"
  systemctl start firebreak.service
  for _ in $(seq 1 600); do up && break || sleep 0.5; done
  up || {
    journalctl -u firebreak.service -n 30 --no-pager
    exit 1
  }
else
  say "starting the control plane: firebreak up --detach --listen $LISTEN (log: $STATE/firebreak-up.log)"
  $fb up --detach --listen "$LISTEN" --state-dir "$STATE"
fi

# From here on the CLI goes through the server.
export FIREBREAK_URL="$URL"
FIREBREAK_API_KEY="$(cat "$STATE/admin-key" 2>/dev/null || true)"
export FIREBREAK_API_KEY
status="$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $FIREBREAK_API_KEY" "$URL/v1/sandboxes?limit=1")"
if [ "$status" = 401 ]; then
  say "the stored admin key is refused (revoked, or from another database): minting a new one"
  FIREBREAK_API_KEY="$($fb admin-key --state-dir "$STATE")"
  (umask 077 && printf '%s\n' "$FIREBREAK_API_KEY" >"$STATE/admin-key.tmp" && mv "$STATE/admin-key.tmp" "$STATE/admin-key")
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

Firebreak is up at $FIREBREAK_URL. Use it from this shell:

  export FIREBREAK_URL=$FIREBREAK_URL
  export FIREBREAK_API_KEY=\$(cat $STATE/admin-key)
  firebreak sandbox create --json
  firebreak run -- bash -c 'uname -a; cat /etc/os-release'

Its log: $(if [ -d /run/systemd/system ] && systemctl is-active --quiet firebreak.service; then echo "journalctl -u firebreak -f"; else echo "tail -f $STATE/firebreak-up.log"; fi)
Stop it: firebreak down (running sandboxes are killed and billed, paused ones are kept)
EOF
