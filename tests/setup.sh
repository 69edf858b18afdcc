#!/usr/bin/env bash
# Installs what the test suite runs besides ember itself, and says what it installed:
# busybox-static (the --exec and shell tests, the device tests' root filesystems), util-linux
# (unshare, setpriv), e2fsprogs (mkfs.ext4 -d), iproute2 (TAPs in network namespaces), lz4
# (the ELF inside Debian's kernel), kmod and cpio (the hardware tier's L1 initramfs) and QEMU 10
# from bookworm-backports (the hardware tier: tier/install-qemu.sh). kernels/build.sh installs
# what the guest kernel's build needs itself. Safe to run again: it installs only what is
# missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'tests/setup.sh: %s\n' "$*" >&2; }
want=()
for p in busybox-static util-linux e2fsprogs iproute2 lz4 kmod cpio; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || want+=("$p")
done
if [ ${#want[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { say "need root to install ${want[*]}; install them and run again"; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
  say "installed ${want[*]}"
else
  say "test dependencies already installed"
fi
"$here/tier/install-qemu.sh"
