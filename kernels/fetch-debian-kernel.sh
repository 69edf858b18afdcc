#!/usr/bin/env bash
# Fetches Debian 12's stock cloud kernel (linux-image-cloud-amd64) for the tests that boot a
# distribution kernel, and unpacks its bzImage to ~/.cache/ember/debian/vmlinuz.
#   EMBER_CACHE_DIR=DIR   cache location (default ~/.cache/ember)
set -euo pipefail
cache=${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
out="$cache/debian"
say() { printf 'kernels/fetch-debian-kernel.sh: %s\n' "$*" >&2; }

# The metapackage names the current image package; resolve it, then fetch that.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { say "cannot resolve linux-image-cloud-amd64"; exit 1; }
if [ -f "$out/vmlinuz" ] && [ "$(cat "$out/package" 2>/dev/null)" = "$pkg" ]; then
  say "$pkg is already at $out/vmlinuz"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download "$pkg" 2>/dev/null)
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/x"
mkdir -p "$out"
cp "$tmp"/x/boot/vmlinuz-* "$out/vmlinuz"
cp "$tmp"/x/boot/config-* "$out/config"
echo "$pkg" > "$out/package"
say "$pkg: $out/vmlinuz ($(stat -c %s "$out/vmlinuz") bytes)"
