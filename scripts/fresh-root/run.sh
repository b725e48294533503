#!/usr/bin/env bash
# The fresh-host test: the README's quickstart command, run as written on a bare
# Debian 12 root, then a smoke test of what it leaves running. As root.
#
# The root is what `debootstrap --variant=minbase bookworm` installs (no Node,
# npm, sudo, curl or nftables), built once into a cache dir keyed by its recipe
# and never changed: each run starts from a pristine copy (an overlayfs whose
# upper dir is removed afterwards). It runs in a chroot with its own mount, PID,
# cgroup, UTS, IPC and network namespaces: /proc, /sys, its own cgroup
# subtree, a minimal /dev with no /dev/net/tun (set-up must create it, mode
# 0600) and no /dev/kvm, and a veth to the host with NAT (nftables masquerade
# in a table this script makes and removes) so apt and npm reach the network.
# The apt archive and npm caches are bind-mounted (caches, not fixes). Everything is removed afterwards, also on failure or Ctrl-C;
# what a SIGKILLed run left (its netns, veth, nft table, cgroups) the next run removes.
#
#   scripts/fresh-root/run.sh          FRESH_ROOT_TUN=0600 starts with a 0600 node instead
#
# Environment: FIREBREAK_CI_CACHE (default /var/cache/firebreak-ci),
# FIREBREAK_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
say() { printf '\033[1m[fresh-root %4ss] %s\033[0m\n' "$SECONDS" "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "run it as root"
for t in debootstrap unshare nsenter ip nft tini git tar; do
  command -v "$t" >/dev/null || die "$t is missing; run scripts/setup.sh as root"
done

CACHE="${FIREBREAK_CI_CACHE:-/var/cache/firebreak-ci}"
MIRROR="${FIREBREAK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TUN="${FRESH_ROOT_TUN:-absent}"
case "$TUN" in absent | 0600) ;; *) die "FRESH_ROOT_TUN must be absent or 0600" ;; esac

# --- the bare root, built once per recipe ------------------------------------
RECIPE="debootstrap --variant=minbase bookworm ${MIRROR}"
BASE="$CACHE/bare-root-$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)"
mkdir -p "$CACHE"
(
  flock 9
  if [ ! -e "$BASE/.complete" ]; then
    say "building the bare root: $RECIPE -> $BASE (once)"
    rm -rf "$BASE.tmp"
    debootstrap --variant=minbase bookworm "$BASE.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
      {
        tail -20 "$CACHE/debootstrap.log" >&2
        exit 1
      }
    printf '%s\n' "$RECIPE" >"$BASE.tmp/.complete"
    rm -rf "$BASE"
    mv "$BASE.tmp" "$BASE"
  fi
) 9>"$CACHE/.lock"
say "bare root: $BASE"

# --- what a killed run left (SIGKILL skips its cleanup) -------------------------
# A run's resources carry its pid; a pid that no longer runs this script is dead.
sweep_dead_runs() {
  local ns id d
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^fresh-root-[0-9]+$'); do
    id="${ns#fresh-root-}"
    grep -qs 'fresh-root/run.sh' "/proc/$id/cmdline" && continue
    say "removing what the dead run $id left"
    for d in "/sys/fs/cgroup/fresh-root-$id" /sys/fs/cgroup/{cpu,cpuacct,memory,pids}/"fresh-root-$id"; do
      [ -d "$d" ] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      sleep 0.5
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
    ip link del "frh$id" 2>/dev/null || true
    nft delete table ip "fresh_root_$id" 2>/dev/null || true
  done
}
sweep_dead_runs

# --- per-run resources ---------------------------------------------------------
ID="$$"
WORK="$(mktemp -d /var/tmp/firebreak-fresh-root.XXXXXX)"
NETNS="fresh-root-$ID"
VETH_H="frh$ID" VETH_G="frg$ID"
NFT_TABLE="fresh_root_$ID"
CG_NAME="fresh-root-$ID"
IDX=$((ID % 16384))
NET="10.213.$((IDX / 64)).$((IDX % 64 * 4))"
HOST_IP="${NET%.*}.$((${NET##*.} + 1))" GUEST_IP="${NET%.*}.$((${NET##*.} + 2))"
UPLINK="$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')"
[ -n "$UPLINK" ] || die "no default route on the host"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  CG_DIRS=("/sys/fs/cgroup/$CG_NAME")
else
  CG_DIRS=()
  for c in cpu cpuacct memory pids; do CG_DIRS+=("/sys/fs/cgroup/$c/$CG_NAME"); done
fi
NS_PID=""
saved_forwarding=""

cleanup() {
  local rc=$?
  set +e
  say "cleaning up"
  if [ -n "$NS_PID" ]; then
    kill -KILL "$NS_PID" 2>/dev/null
    wait "$NS_PID" 2>/dev/null
  fi
  # Killing the namespace's PID 1 kills everything in it; anything still in
  # the root's cgroup subtree is killed too. Then the cgroups are removed.
  for d in "${CG_DIRS[@]}"; do
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    for _ in $(seq 1 100); do
      [ -z "$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
      sleep 0.1
    done
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ip netns del "$NETNS" 2>/dev/null
  ip link del "$VETH_H" 2>/dev/null
  nft delete table ip "$NFT_TABLE" 2>/dev/null
  # The uplink forwards again only while some fresh root needs it.
  if [ -n "$saved_forwarding" ] && ! ip netns list | grep -q '^fresh-root-'; then
    echo "$saved_forwarding" >"/proc/sys/net/ipv4/conf/$UPLINK/forwarding"
  fi
  # The mounts lived in the namespace, gone with it; the upper dir holds every change.
  if grep -q " $WORK/" /proc/self/mountinfo; then
    say "warning: $WORK is still mounted; left in place"
  else
    rm -rf "$WORK"
  fi
  local left=()
  [ -e "/run/netns/$NETNS" ] && left+=("netns $NETNS")
  ip link show "$VETH_H" >/dev/null 2>&1 && left+=("link $VETH_H")
  nft list table ip "$NFT_TABLE" >/dev/null 2>&1 && left+=("nft table $NFT_TABLE")
  for d in "${CG_DIRS[@]}"; do [ -d "$d" ] && left+=("cgroup $d"); done
  [ -e "$WORK" ] && left+=("$WORK")
  if [ "${#left[@]}" -gt 0 ]; then
    say "error: left behind: ${left[*]}"
    [ "$rc" -eq 0 ] && rc=1
  fi
  say "$([ "$rc" -eq 0 ] && echo passed || echo "FAILED (exit $rc)") after ${SECONDS}s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "network: $NETNS ($GUEST_IP) -> $VETH_H ($HOST_IP) -> NAT out of $UPLINK"
ip netns add "$NETNS"
ip link add "$VETH_H" type veth peer name "$VETH_G" netns "$NETNS"
ip addr add "$HOST_IP/30" dev "$VETH_H"
ip link set "$VETH_H" up
ip -n "$NETNS" link set lo up
ip -n "$NETNS" addr add "$GUEST_IP/30" dev "$VETH_G"
ip -n "$NETNS" link set "$VETH_G" up
ip -n "$NETNS" route add default via "$HOST_IP"
nft -f - <<EOF
table ip $NFT_TABLE {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $GUEST_IP oifname != "$VETH_H" masquerade
  }
}
EOF
# Forwarding on the veth (the root's packets) and the uplink (the replies).
saved_forwarding="$(cat "/proc/sys/net/ipv4/conf/$UPLINK/forwarding")"
echo 1 >"/proc/sys/net/ipv4/conf/$VETH_H/forwarding"
echo 1 >"/proc/sys/net/ipv4/conf/$UPLINK/forwarding"

for d in "${CG_DIRS[@]}"; do mkdir -p "$d"; done
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  echo "+cpu +memory +pids" >/sys/fs/cgroup/cgroup.subtree_control
fi
mkdir -p "$CACHE/apt-archives/partial" "$CACHE/npm"

say "entering the fresh root (tun: $TUN, no /dev/kvm)"
(
  # The namespace's cgroup root: this subtree (its sandboxes' cgroups stay in it).
  for d in "${CG_DIRS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
  exec nsenter --net="/run/netns/$NETNS" -- \
    unshare --mount --pid --cgroup --uts --ipc --propagation private --kill-child -- \
    tini -s -- bash "$ROOT/scripts/fresh-root/enter.sh" "$BASE" "$WORK" "$ROOT" "$CACHE" "$TUN"
) &
NS_PID=$!
set +e
wait "$NS_PID"
rc=$?
set -e
NS_PID=""
exit "$rc"
