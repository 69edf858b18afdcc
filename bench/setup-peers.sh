#!/usr/bin/env bash
# Installs the peers bench/host-work.sh times ember against, at pinned versions: virtme-ng
# from PyPI (in a virtualenv) and vmtest from crates.io; vmtest's guest agent (qemu-ga, from
# bookworm-backports like the QEMU both peers run, tier/install-qemu.sh); udev, which vng's init
# needs for its I/O ports.
#   EMBER_PEERS_DIR=DIR   where (default ~/.cache/ember/peers)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
peers=${EMBER_PEERS_DIR:-$cache/peers}
VNG_VERSION=1.42
VMTEST_VERSION=0.18.0
say() { printf 'bench/setup-peers.sh: %s\n' "$*" >&2; }

"$here/../tier/install-qemu.sh"
# vng's init names its script's I/O ports through udev (/dev/virtio-ports/virtme.*): without
# udevd in the host's root it falls back to the console and loses the program's status.
if [ ! -x /lib/systemd/systemd-udevd ]; then
  say "installing udev (vng's init needs udevd)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq udev >/dev/null
fi
if ! command -v qemu-ga >/dev/null; then
  say "installing qemu-guest-agent (bookworm-backports)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-guest-agent >/dev/null
fi
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || {
  say "installing python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
}
mkdir -p "$peers"
if ! "$peers/venv/bin/vng" --version 2>/dev/null | grep -qF "$VNG_VERSION"; then
  say "installing virtme-ng $VNG_VERSION into $peers/venv"
  python3 -m venv "$peers/venv"
  "$peers/venv/bin/pip" install -q "virtme-ng==$VNG_VERSION"
fi
if ! "$peers/bin/vmtest" --version 2>/dev/null | grep -qF "$VMTEST_VERSION"; then
  say "installing vmtest $VMTEST_VERSION into $peers (cargo install, a few minutes)"
  cargo install -q --locked --root "$peers" --version "$VMTEST_VERSION" vmtest
fi
say "vng: $("$peers/venv/bin/vng" --version 2>&1 | head -1); vmtest: $("$peers/bin/vmtest" --version 2>&1)"
