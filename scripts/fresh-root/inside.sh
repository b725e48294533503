#!/bin/bash
# Part of scripts/fresh-root/run.sh: runs as root inside the bare Debian 12
# root, in the checkout at /root/firebreak. Proves, in order:
#  1. the root is bare (no node, npm, sudo, curl, nft; /dev/net/tun absent or 0600);
#  2. before set-up the CLI prints one line saying to run set-up, and exits 1;
#  3. the README's quickstart command, run exactly as written, succeeds;
#  4. /dev/net/tun is still root-only, the admin key is root-only and in no
#     log, and `firebreak doctor` passes;
#  5. the server it left running serves the API: a sandbox is created with a
#     plain HTTP request, runs a command, and is paused; another keeps running;
#  6. `firebreak down` stops it: no VM and no sandbox namespace remain, the
#     paused sandbox stays on disk;
#  7. with the stored admin key revoked, the quickstart runs again and succeeds
#     (it mints a new key); the running sandbox was killed and billed, the
#     paused one resumes with its memory, and `firebreak down` leaves nothing.
set -euo pipefail
cd /root/firebreak
STATE=/var/lib/firebreak
URL=http://127.0.0.1:3000
step() { printf '\n\033[1m=== fresh root [%ss]: %s\033[0m\n' "$SECONDS" "$*"; }
fail() {
  set +e
  printf '\033[1mFRESH ROOT FAILED: %s\033[0m\n' "$*"
  if [ -f "$STATE/firebreak-up.log" ]; then
    echo "--- the end of $STATE/firebreak-up.log:"
    tail -40 "$STATE/firebreak-up.log"
  fi
  for id in ${paused:-} ${running:-}; do
    echo "--- sandbox $id: events"
    api "$URL/v1/sandboxes/$id/events" 2>&1 | head -c 4000
    echo
  done
  for f in "$STATE"/sandboxes/*/console.log; do
    [ -f "$f" ] && echo "--- $f" && tail -20 "$f"
  done
  exit 1
}
qemus() { for p in /proc/[0-9]*; do tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep '^qemu-system' || true; done; }
api() { curl -sS -H "Authorization: Bearer $(cat "$STATE/admin-key")" -H 'content-type: application/json' "$@"; }
# A field of the JSON on stdin, with the node set-up installed: json '.id'
json() { /opt/firebreak/node/current/bin/node -e 'let s="";process.stdin.on("data",(d)=>{s+=d}).on("end",()=>{const v=new Function("j",`return j${process.argv[1]}`)(JSON.parse(s));process.stdout.write(typeof v==="string"?v:JSON.stringify(v))})' "$1"; }

step "the root is bare"
for t in node npm npx sudo curl nft qemu-system-x86_64; do
  if command -v "$t" >/dev/null; then fail "$t is already installed"; fi
done
case "$(stat -c %a /dev/net/tun 2>/dev/null || echo absent)" in
absent | 600) echo "/dev/net/tun: $(stat -c %a /dev/net/tun 2>/dev/null || echo absent); /dev/kvm: $([ -e /dev/kvm ] && echo present || echo absent)" ;;
*) fail "/dev/net/tun is not root-only" ;;
esac

step "before set-up the CLI says to run set-up, in one line"
set +e
out="$(./bin/firebreak sandbox list 2>&1)"
code=$?
set -e
printf '%s\n' "$out"
[ "$code" -eq 1 ] || fail "exit code $code, expected 1"
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "more than one line"
grep -q 'run scripts/setup.sh as root first' <<<"$out" || fail "the line does not say to run set-up"

# The command exactly as the README's "Two commands" block has it.
cmd="$(sed -n '/^## Two commands/,/^## /p' README.md | sed -n '/^```sh$/,/^```$/p' | sed -n 2p | sed 's/ *#.*$//')"
[ -n "$cmd" ] || fail "no quickstart command found in README.md"
step "the README's quickstart: $cmd"
bash -c "$cmd" || fail "the quickstart failed (exit $?)"

step "/dev/net/tun is root-only; the admin key is root-only and in no log; doctor passes"
[ "$(stat -c %a /dev/net/tun)" = 600 ] || fail "/dev/net/tun is mode $(stat -c %a /dev/net/tun), set-up must not widen it"
[ "$(stat -c '%U %a' "$STATE/admin-key")" = "root 600" ] || fail "$STATE/admin-key is $(stat -c '%U %a' "$STATE/admin-key")"
if grep -qF "$(cat "$STATE/admin-key")" "$STATE/firebreak-up.log"; then fail "the admin key is in the server's log"; fi
./bin/firebreak doctor || fail "firebreak doctor failed after set-up"

step "the server's API: create with a plain HTTP request, exec, pause; a second one keeps running"
api -f "$URL/v1/sandboxes?limit=1" >/dev/null || fail "the stored admin key is refused"
paused="$(api -f -X POST "$URL/v1/sandboxes" -d '{"template":"base","timeoutMs":3600000}' | json .id)"
[ -n "$paused" ] || fail "POST /v1/sandboxes gave no id"
export FIREBREAK_URL="$URL"
out="$(FIREBREAK_API_KEY="$(cat "$STATE/admin-key")" ./bin/firebreak sandbox exec "$paused" -- sh -c 'echo fresh-root >/tmp/mark; cat /tmp/mark; python3 -c "print(6*7)"')" ||
  fail "exec failed: $out"
[ "$out" = "$(printf 'fresh-root\n42')" ] || fail "exec printed: $out"
api -f -X POST "$URL/v1/sandboxes/$paused/pause" >/dev/null || fail "pause failed"
running="$(api -f -X POST "$URL/v1/sandboxes" -d '{"template":"base"}' | json .id)"
[ -n "$running" ] || fail "the second create gave no id"
[ -n "$(qemus)" ] || fail "no QEMU process while a sandbox runs"

step "firebreak down: the server stops, no VM or sandbox namespace remains, the paused sandbox stays"
./bin/firebreak down || fail "firebreak down failed"
curl -fsS -o /dev/null "$URL/v1/health" 2>/dev/null && fail "the server still answers after firebreak down"
[ ! -e "$STATE/firebreak-up.pid" ] || fail "the pid file remains"
[ -z "$(qemus)" ] || fail "QEMU processes remain: $(qemus)"
[ -z "$(ip netns list)" ] || fail "namespaces remain: $(ip netns list)"
# The node keeps it under its own id: one sandbox dir, holding a paused state.
[ "$(ls "$STATE"/sandboxes/*/paused.json 2>/dev/null | wc -l)" -eq 1 ] || fail "the paused sandbox is not on disk"
./bin/firebreak down | grep -q 'not running' || fail "a second firebreak down does not say it is not running"

step "the stored admin key revoked: the quickstart runs again and mints a new one"
old_key="$(cat "$STATE/admin-key")"
# Revoke it in the database, as `firebreak keys revoke` would while the server runs.
FIREBREAK_WARM_POOL= ./bin/firebreak up --detach >/dev/null
for key_id in $(api -f "$URL/v1/keys" | json '.keys.filter((k) => !k.revokedAt).map((k) => k.id).join(" ")'); do
  api -f -X DELETE "$URL/v1/keys/$key_id" >/dev/null || fail "revoking admin key $key_id failed"
done
api -o /dev/null -w '%{http_code}' "$URL/v1/sandboxes?limit=1" | grep -q 401 || fail "the revoked key still works"
./bin/firebreak down >/dev/null
bash -c "$cmd" || fail "the second quickstart failed (exit $?)"
[ "$(cat "$STATE/admin-key")" != "$old_key" ] || fail "the admin key was not replaced"

step "the running sandbox was killed and billed; the paused one resumes with its memory"
state="$(api -f "$URL/v1/sandboxes/$running" | json .state)"
[ "$state" = killed ] || fail "the sandbox running at shutdown is $state, expected killed"
[ "$(api -f "$URL/v1/usage/records?sandboxId=$running" | json '.records.some((r) => r.final)')" = true ] ||
  fail "no final usage record for $running"
api -f -X POST "$URL/v1/sandboxes/$paused/resume" -d '{}' >/dev/null || fail "resume failed"
out="$(FIREBREAK_API_KEY="$(cat "$STATE/admin-key")" ./bin/firebreak sandbox exec "$paused" -- cat /tmp/mark)" ||
  fail "exec after resume failed: $out"
[ "$out" = fresh-root ] || fail "the resumed sandbox lost its state: $out"
FIREBREAK_API_KEY="$(cat "$STATE/admin-key")" ./bin/firebreak sandbox kill "$paused"

step "firebreak down leaves nothing running"
./bin/firebreak down || fail "firebreak down failed"
[ -z "$(qemus)" ] || fail "QEMU processes remain: $(qemus)"
[ -z "$(ip netns list)" ] || fail "namespaces remain: $(ip netns list)"
[ -z "$(ls "$STATE/sandboxes")" ] || fail "sandbox dirs remain: $(ls "$STATE/sandboxes")"

step "passed"
