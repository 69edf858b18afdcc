#!/usr/bin/env bash
# Makes sure QEMU 10 or later is installed, from bookworm-backports, and says what it installed.
# The hardware tier needs it (Debian 12's QEMU 7.2 does not intercept a nested guest's XSETBV:
# docs/hosts.md, "The hardware tier"), and on a machine that ships qemu-utils 10 from
# bookworm-backports, Debian 12's own QEMU cannot even be installed beside it.
set -euo pipefail
say() { printf 'tier/install-qemu.sh: %s\n' "$*" >&2; }
major=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p' || true)
[ "${major:-0}" -ge 10 ] && exit 0
[ "$(id -u)" -eq 0 ] || { say "QEMU 10 is needed: run as root, or apt-get install -t bookworm-backports qemu-system-x86"; exit 1; }
if ! grep -qrs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/ember-backports.list
  say "added bookworm-backports to the package sources (/etc/apt/sources.list.d/ember-backports.list)"
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
say "installed qemu-system-x86 $(dpkg-query -W -f='${Version}' qemu-system-x86) from bookworm-backports"
