#!/usr/bin/env bash
# Brings Firebreak up on a fresh Debian 12 host, as root, and shows it working:
# installs what it needs, prepares the guest kernel, builds the default `base`
# template (once; later runs reuse it) and runs commands in fresh microVMs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
fb=./bin/firebreak

printf '\n\033[1m==> host check\033[0m\n'
$fb doctor
printf '\n\033[1m==> building the base template (about a minute the first time)\033[0m\n'
$fb template build base
printf '\n\033[1m==> a microVM runs python3\033[0m\n'
$fb run --timing -- python3 -c 'print(6*7)'
printf '\n\033[1m==> exit codes pass through\033[0m\n'
set +e
$fb run -- sh -c 'exit 7'
code=$?
set -e
echo "firebreak run -- sh -c 'exit 7' exited with $code"
printf '\nFirebreak works. Try: %s run -- bash -c "uname -a; cat /etc/os-release"\n' "$fb"
