#!/usr/bin/env bash
# Builds ember's micro-VM guest kernel (vmlinux with a PVH note, and bzImage) from Debian's
# linux-source-6.1, cached by a hash of everything that shapes it, so a second run is instant.
#
#   kernels/build.sh            build (or reuse) and point ~/.cache/ember/{vmlinux,bzImage} at it
#   kernels/build.sh FRAGMENT   the same with FRAGMENT (e.g. kernels/peers.config) merged in
#                               too; linked as ~/.cache/ember/{vmlinux,bzImage}-NAME (NAME: the
#                               fragment's file name less .config), the default left as it is
#   EMBER_CACHE_DIR=DIR         where builds are cached (default: ~/.cache/ember)
#   EMBER_KERNEL_JOBS=N         make -j (default: nproc)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
jobs=${EMBER_KERNEL_JOBS:-$(nproc)}
tarball=/usr/src/linux-source-6.1.tar.xz

say() { printf 'kernels/build.sh: %s\n' "$*" >&2; }

fragments=("$here/microvm.config" "$here/ember-run.config")
suffix=
for f in "$@"; do
  [ -f "$f" ] || { say "no such configuration fragment: $f"; exit 2; }
  fragments+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
  suffix="$suffix-$(basename "$f" .config)"
done

need_pkgs=()
[ -f "$tarball" ] || need_pkgs+=(linux-source-6.1)
for tool in bc flex bison cpio make gcc; do
  command -v "$tool" >/dev/null || need_pkgs+=("$tool")
done
[ -f /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing build dependencies: ${need_pkgs[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    say "need root to apt-get install ${need_pkgs[*]}; install them and run again"
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Everything that changes the output goes into the key: the source package, the config
# fragment, the patches and this script.
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s "$tarball")
key=$( { echo "$src_version"; cat "${fragments[@]}" "$0"; cat "$here"/patches/*.patch 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
out="$cache/kernel-6.1-$key"

link_default() {
  ln -sfn "$out/vmlinux" "$cache/vmlinux$suffix"
  ln -sfn "$out/bzImage" "$cache/bzImage$suffix"
  say "vmlinux: $out/vmlinux ($(stat -c %s "$out/vmlinux") bytes)"
  say "bzImage: $out/bzImage ($(stat -c %s "$out/bzImage") bytes)"
  if [ -z "$suffix" ]; then say "default kernel: $cache/vmlinux"; else say "linked as $cache/{vmlinux,bzImage}$suffix"; fi
}

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  say "cached build $key is up to date"
  link_default
  exit 0
fi

mkdir -p "$cache"
work="$cache/build-$key"
rm -rf "$work"
mkdir -p "$work"
say "unpacking $tarball"
tar -xf "$tarball" -C "$work" --strip-components=1
cd "$work"
for p in "$here"/patches/*.patch; do
  [ -e "$p" ] || continue
  say "applying $(basename "$p")"
  patch -p1 --quiet < "$p"
done

say "configuring: tinyconfig + ${fragments[*]##*/}"
make -s tinyconfig >/dev/null
scripts/kconfig/merge_config.sh -m -O . .config "${fragments[@]}" >/dev/null
make -s olddefconfig >/dev/null
# merge_config quietly drops options whose dependencies are missing: refuse to build those.
missing=0
while IFS= read -r line; do
  case "$line" in CONFIG_*=*) ;; *) continue ;; esac
  if ! grep -qx "$line" .config; then
    say "config option did not stick: $line"
    missing=1
  fi
done < <(cat "${fragments[@]}")
[ "$missing" -eq 0 ] || { say "fix the fragment that asks for it: ${fragments[*]##*/}"; exit 1; }

say "building vmlinux and bzImage with -j$jobs (several minutes on 2 cores)"
start=$(date +%s)
make -j"$jobs" vmlinux bzImage 2>&1 | grep --line-buffered -E '^\s+(LD|OBJCOPY|BUILD|AS)\s|error|Error' || true
[ -f vmlinux ] && [ -f arch/x86/boot/bzImage ] || { say "kernel build failed; run make in $work to see why"; exit 1; }
say "built in $(( $(date +%s) - start )) s"

mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
cd /
rm -rf "$work"
link_default
