# Downloads from the npm registry without npm, for scripts/setup.sh (sourced;
# bash). A tarball is unpacked only when its sha512 matches the
# `dist.integrity` of the registry's metadata for that exact version, and only
# from the registry itself.
#
#   REGISTRY=https://registry.npmjs.org   (no trailing slash)
#   fetch_verified NAME VERSION DEST WORKDIR   unpacks package/ into DEST
#
# Failures print `error: ...` on stderr and exit 1 (from the calling shell).

npm_registry_die() {
  echo "error: $*" >&2
  exit 1
}

# Prints the sha512 integrity and the tarball URL of NAME@VERSION, one a line.
registry_dist() {
  local meta integrity tarball
  meta="$(curl -fsSL --retry 3 "${REGISTRY}/$1/$2")" || npm_registry_die "cannot fetch ${REGISTRY}/$1/$2"
  integrity="$(grep -o '"integrity" *: *"sha512-[A-Za-z0-9+/=]*"' <<<"$meta" | head -1 | sed 's/.*"\(sha512-[^"]*\)"$/\1/')"
  tarball="$(grep -o '"tarball" *: *"[^"]*"' <<<"$meta" | head -1 | sed 's/.*"\([^"]*\)"$/\1/')"
  [ -n "$integrity" ] || npm_registry_die "no sha512 integrity in the registry's metadata for $1@$2; download refused"
  # SECURITY: the tarball comes from the registry whose metadata vouches for it.
  [ "$tarball" = "${REGISTRY}/$1/-/$1-$2.tgz" ] ||
    npm_registry_die "unexpected tarball URL for $1@$2: ${tarball:-none}; download refused"
  printf '%s\n%s\n' "$integrity" "$tarball"
}

fetch_verified() {
  local name="$1" version="$2" dest="$3" work="$4" dist integrity tarball want got
  dist="$(registry_dist "$name" "$version")" || exit 1
  integrity="${dist%%$'\n'*}" tarball="${dist#*$'\n'}"
  curl -fsSL --retry 3 -o "$work/$name.tgz" "$tarball" || npm_registry_die "cannot download $tarball"
  want="$(printf '%s' "${integrity#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')"
  got="$(sha512sum "$work/$name.tgz" | cut -d' ' -f1)"
  # SECURITY: nothing is unpacked unless the bytes match the registry's hash.
  if [ "${#want}" -ne 128 ] || [ "$want" != "$got" ]; then
    rm -f "$work/$name.tgz"
    npm_registry_die "$name-$version.tgz does not match its registry integrity ($integrity); download refused"
  fi
  mkdir -p "$dest"
  tar -xzf "$work/$name.tgz" -C "$dest" --strip-components=1 --no-same-owner
}
