# QEMU >= 10 for Firebreak, sourced by scripts/setup.sh (as root).
#
# Shared copy-on-write snapshots need QEMU >= 8.2 (`memory-backend-file` with
# `readonly=on,rom=off`: opened read-only, mapped private and writable); set-up
# takes QEMU 10 from Debian 12's bookworm-backports. It is unpacked beside the
# system's QEMU, into /opt/firebreak/qemu/<version> (like Node.js), and never
# replaces it: other users of the host's QEMU keep theirs. Only the two
# programs Firebreak runs are taken (qemu-system-x86: qemu-system-x86_64;
# qemu-utils: qemu-img) with their firmware (qemu-system-data: qboot.rom);
# their shared libraries are Debian 12's own, installed with apt.
#
#   install_qemu           installs (or finds) it; /opt/firebreak/qemu/current -> <version>
#
# FIREBREAK_DEBIAN_MIRROR: the mirror the backports source uses (default: the
# host's bookworm mirror, else deb.debian.org). Hosts that cannot get QEMU >= 10
# this way get one error line saying what to do instead.

QEMU_MIN_MAJOR=10
QEMU_ROOT=/opt/firebreak/qemu
OS_RELEASE=/etc/os-release
BACKPORTS_SOURCES=/etc/apt/sources.list.d/firebreak-bookworm-backports.sources
QEMU_PACKAGES=(qemu-system-x86 qemu-system-data qemu-utils)

qemu_major() { # <qemu-system-x86_64 binary> -> major version, or nothing
  { "$1" --version 2>/dev/null || true; } | sed -n '1s/^QEMU emulator version \([0-9][0-9]*\)\..*/\1/p'
}

qemu_cannot() {
  die "Firebreak needs QEMU >= ${QEMU_MIN_MAJOR} (shared copy-on-write snapshots), and $*. On Debian 12 set-up takes it from bookworm-backports; on another host install qemu-system-x86 >= ${QEMU_MIN_MAJOR} and qemu-utils and set FIREBREAK_QEMU_PREFIX to their prefix (e.g. /usr)."
}

# The mirror of the host's bookworm source (one-line or deb822 format).
host_bookworm_mirror() {
  {
    grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '$3=="bookworm"{print $2}'
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk 'BEGIN{RS="";FS="\n"} /Suites:[^\n]*(^|[ \t])bookworm([ \t]|$)/ {for(i=1;i<=NF;i++) if ($i ~ /^URIs:/) {sub(/^URIs:[ \t]*/,"",$i); split($i,u,/[ \t]+/); print u[1]}}' "$f"
    done
  } | grep -E '^https?://' | head -1
}

has_backports_source() {
  grep -rqsE '(^deb .* bookworm-backports|^Suites:.*bookworm-backports)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

install_qemu() {
  local current="${QEMU_ROOT}/current/usr/bin/qemu-system-x86_64"
  if [ -n "${FIREBREAK_QEMU_PREFIX:-}" ]; then
    local major
    major="$(qemu_major "${FIREBREAK_QEMU_PREFIX}/bin/qemu-system-x86_64")"
    [ -n "$major" ] && [ "$major" -ge "$QEMU_MIN_MAJOR" ] ||
      qemu_cannot "FIREBREAK_QEMU_PREFIX=${FIREBREAK_QEMU_PREFIX} holds no such QEMU"
    say "QEMU $major at FIREBREAK_QEMU_PREFIX=${FIREBREAK_QEMU_PREFIX}"
    return
  fi
  local have
  have="$(qemu_major "$current")"
  if [ -n "$have" ] && [ "$have" -ge "$QEMU_MIN_MAJOR" ]; then
    say "QEMU present: $("$current" --version | head -1) in ${QEMU_ROOT}/current"
    return
  fi

  # shellcheck disable=SC1090
  . "$OS_RELEASE"
  local suite=""
  if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    suite=bookworm-backports
    if ! has_backports_source; then
      local mirror="${FIREBREAK_DEBIAN_MIRROR:-$(host_bookworm_mirror)}"
      mirror="${mirror:-http://deb.debian.org/debian}"
      say "adding the bookworm-backports apt source (${mirror}) for QEMU ${QEMU_MIN_MAJOR}"
      # Backports have apt priority 100: nothing else on the host is upgraded from them.
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" >"${BACKPORTS_SOURCES}.tmp"
      mv "${BACKPORTS_SOURCES}.tmp" "$BACKPORTS_SOURCES"
    fi
  elif [ "${ID:-}" != debian ]; then
    qemu_cannot "this host is ${PRETTY_NAME:-not Debian}"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || qemu_cannot "apt-get update failed"
  local version
  version="$(apt-cache show "qemu-system-x86${suite:+/$suite}" 2>/dev/null | sed -n 's/^Version: //p' | head -1)"
  [ -n "$version" ] || qemu_cannot "apt offers no qemu-system-x86${suite:+ in $suite}"
  local upstream="${version#*:}"
  [ "${upstream%%.*}" -ge "$QEMU_MIN_MAJOR" ] 2>/dev/null ||
    qemu_cannot "apt offers only qemu-system-x86 ${version}"

  # Their shared libraries, from the host's own release (no new ones come with
  # backports): every Depends of the two programs' packages but the QEMU ones.
  local deps=()
  local p
  for p in qemu-system-x86 qemu-utils; do
    while read -r d; do
      case "$d" in qemu-* | seabios | ipxe-qemu | "") ;; *) deps+=("$d") ;; esac
    done < <(apt-cache show "$p=$version" | sed -n 's/^Depends: //p' | head -1 |
      tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/[[:space:]]//g')
  done
  say "installing QEMU ${upstream} (${suite:-default release}) into ${QEMU_ROOT}/${version//:/_}, beside the host's QEMU"
  apt-get install -y -q --no-install-recommends "${deps[@]}" >/dev/null || qemu_cannot "its libraries could not be installed"

  local dest="${QEMU_ROOT}/${version//:/_}"
  local stage="${dest}.staging-$$"
  local dl
  dl="$(mktemp -d)"
  rm -rf "$stage"
  mkdir -p "$stage"
  local pkgs=()
  for p in "${QEMU_PACKAGES[@]}"; do pkgs+=("$p=$version"); done
  (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "${pkgs[@]}" >/dev/null) ||
    { rm -rf "$dl" "$stage"; qemu_cannot "apt-get download ${pkgs[*]} failed"; }
  for f in "$dl"/*.deb; do dpkg-deb -x "$f" "$stage"; done
  rm -rf "$dl"
  local got
  got="$(qemu_major "$stage/usr/bin/qemu-system-x86_64")"
  if [ -z "$got" ] || [ "$got" -lt "$QEMU_MIN_MAJOR" ] || [ ! -f "$stage/usr/share/qemu/qboot.rom" ] ||
    ldd "$stage/usr/bin/qemu-system-x86_64" "$stage/usr/bin/qemu-img" | grep -q 'not found'; then
    rm -rf "$stage"
    qemu_cannot "the unpacked QEMU ${version} does not run here"
  fi
  rm -rf "$dest"
  mv "$stage" "$dest"
  ln -sfn "$(basename "$dest")" "${QEMU_ROOT}/current"
  say "QEMU ready: $("$current" --version | head -1)"
}
