#!/usr/bin/env bash
# Part of scripts/fresh-root/run.sh: runs inside the new namespaces (mount, PID,
# cgroup, UTS, IPC, network), builds the fresh root's view of the system and
# chroots into it to run inside.sh. Nothing it mounts is visible to the host.
#   enter.sh BASE WORK CHECKOUT CACHE TUN
set -euo pipefail
BASE="$1" WORK="$2" SRC="$3" CACHE="$4" TUN="$5"
R="$WORK/merged"
mkdir -p "$WORK/upper" "$WORK/work" "$R"

# A pristine copy: the cached root read-only below, this run's changes above.
mount -t overlay overlay -o "lowerdir=$BASE,upperdir=$WORK/upper,workdir=$WORK/work" "$R"

mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$R/sys" # this network namespace's view
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
  # A cgroup with processes cannot delegate controllers: move out of the root.
  mkdir -p "$R/sys/fs/cgroup/init"
  echo $$ >"$R/sys/fs/cgroup/init/cgroup.procs"
else
  for c in cpu cpuacct memory pids; do
    mkdir -p "$R/sys/fs/cgroup/$c"
    mount -t cgroup -o "nosuid,nodev,noexec,$c" cgroup "$R/sys/fs/cgroup/$c"
  done
fi

# A minimal /dev: no /dev/kvm; /dev/net/tun absent or root-only (mode 0600).
mount -t tmpfs -o mode=0755,nosuid,size=1m dev "$R/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n
  mknod -m 0666 "$R/dev/$1" c "$2" "$3"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
if [ "$TUN" = 0600 ]; then
  mkdir "$R/dev/net"
  mknod -m 0600 "$R/dev/net/tun" c 10 200
fi

mount -t tmpfs -o mode=0755,nosuid,nodev run "$R/run"
# The host's network as the root sees it: its resolver, and the CAs its admin
# added (e.g. of a TLS-inspecting egress proxy, as on the CI machines), which
# the root's ca-certificates picks up when set-up installs it.
# A resolver on the host's loopback (systemd-resolved's 127.0.0.53) is out of
# the root's reach: use the upstream servers it forwards to.
resolv=/etc/resolv.conf
if ! grep -E '^nameserver' "$resolv" | grep -qvE '^nameserver +(127\.|::1)' &&
  [ -f /run/systemd/resolve/resolv.conf ]; then
  resolv=/run/systemd/resolve/resolv.conf
fi
cp "$resolv" "$R/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  mkdir -p "$R/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
fi
hostname fresh-root

# Download caches (they save time, they fix nothing).
mount --bind "$CACHE/apt-archives" "$R/var/cache/apt/archives"
mkdir -p "$R/root/.npm"
mount --bind "$CACHE/npm" "$R/root/.npm"

# The checkout, as a new user would have it (tracked and new files, no node_modules).
mkdir -p "$R/root/firebreak"
git -C "$SRC" ls-files -z --cached --others --exclude-standard |
  tar -C "$SRC" --null --ignore-failed-read -T - -cf - 2>/dev/null |
  tar -C "$R/root/firebreak" -xf -

exec chroot "$R" /usr/bin/env -i HOME=/root TERM=dumb \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/bash /root/firebreak/scripts/fresh-root/inside.sh
