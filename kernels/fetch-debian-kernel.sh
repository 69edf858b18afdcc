#!/usr/bin/env bash
# Fetches Debian 12's stock cloud kernel (linux-image-cloud-amd64) for the tests that boot a
# distribution kernel: its bzImage to ~/.cache/ember/debian/vmlinuz, the ELF vmlinux inside
# it (the bzImage's compressed payload, which carries the PVH note) to .../debian/vmlinux, and
# its modules tree to .../debian/modules/VERSION (a program run on it loads its virtio-fs and
# vsock drivers from there: `ember run --modules`).
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
if [ -f "$out/vmlinuz" ] && [ -f "$out/vmlinux" ] && [ -d "$out/modules" ] && [ "$(cat "$out/package" 2>/dev/null)" = "$pkg" ]; then
  say "$pkg is already at $out/vmlinuz and $out/vmlinux"
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
rm -rf "$out/modules"
mkdir -p "$out/modules"
cp -a "$tmp"/x/lib/modules/* "$out/modules/"

# The ELF inside: the setup header says where the compressed payload is (boot protocol 2.08+:
# payload_offset at 0x248 and payload_length at 0x24c, from the end of the setup sectors); its
# first bytes say how it is compressed.
u32_at() { od -An -tu4 -j "$1" -N4 "$out/vmlinuz" | tr -d ' '; }
setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$out/vmlinuz" | tr -d ' ')
payload=$(( (setup_sects + 1) * 512 + $(u32_at $((0x248))) ))
length=$(u32_at $((0x24c)))
dd if="$out/vmlinuz" of="$tmp/payload" bs=1M iflag=skip_bytes,count_bytes skip="$payload" count="$length" status=none
case $(od -An -tx1 -N4 "$tmp/payload" | tr -d ' ') in
  1f8b*) unpack=(gzip -dc) ;;
  fd377a58) unpack=(xz -dc) ;;
  02214c18) unpack=(lz4 -dc) ;;
  28b52ffd) unpack=(zstd -dc) ;;
  *) say "unknown compression in $out/vmlinuz"; exit 1 ;;
esac
command -v "${unpack[0]}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${unpack[0]}" >/dev/null
# Trailing bytes after the stream (the appended size) make some tools complain: keep the output.
"${unpack[@]}" < "$tmp/payload" > "$out/vmlinux.tmp" 2>/dev/null || true
[ "$(head -c4 "$out/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || { say "the payload of $out/vmlinuz did not unpack to an ELF"; exit 1; }
mv "$out/vmlinux.tmp" "$out/vmlinux"
echo "$pkg" > "$out/package"
say "$pkg: $out/vmlinuz ($(stat -c %s "$out/vmlinuz") bytes), $out/vmlinux ($(stat -c %s "$out/vmlinux") bytes)"
