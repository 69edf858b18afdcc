#!/usr/bin/env bash
# The hardware-KVM tier on any x86_64 Linux host, PVM-based /dev/kvm included: boots an L1
# Linux under QEMU TCG (pure emulation) with AMD SVM and nested paging emulated, loads kvm_amd
# there, and runs ember inside it, where /dev/kvm is hardware-style SVM and a Linux guest (L2)
# reaches userspace. Everything runs emulated: correctness only, never timing.
#
#   tier/svm.sh test [FILTER...]   build the tests here, then run the Linux test binary
#                                  (tests/linux: every test that SKIPs on PVM) in one L1 boot;
#                                  exit non-zero on any failure
#   tier/svm.sh run -- CMD [ARGS]  run one command in L1, e.g. the full boot of the default guest:
#                                  tier/svm.sh run -- target/x86_64-unknown-linux-gnu/release/ember run
#
# Options (before the subcommand): --timeout S (all L1 runs; default 2400 for test, 900 for
# run), --mem MiB (L1 memory, default 8192, allocated lazily), --cpus N (L1 CPUs, default 1), -v.
#
# L1 writes a heartbeat every 10 s. With none for EMBER_L1_WEDGE_S seconds (default 90; healthy
# runs' longest gap is 10-13 s) L1 has wedged (the emulator's fault: docs/hosts.md): the script
# prints where L1's CPUs were and its console, stops it, and in test mode boots a new L1 for
# the tests that had not finished, the interrupted one first, as often as --timeout allows
# (each test runs in its own test-binary run, so one that had passed is not run again). A test
# that fails is a failure, never retried; one during which L1 wedges three times
# (EMBER_L1_WEDGES_PER_TEST) counts as failed.
#
# What the emulator gets wrong, and how this script avoids it (docs/hosts.md, "The hardware
# tier"): with two or more L1 CPUs, QEMU's multi-threaded TCG loses track of an L2 guest's
# memory now and then (3-4% of 2-vCPU boots triple-fault or hang), so L1 gets one CPU; QEMU
# 7.2 (Debian 12) does not intercept an L2 guest's XSETBV, so with it L1 gets no XSAVE
# (.ci/run installs QEMU 10 from bookworm-backports). EMBER_L1_CPU overrides QEMU's -cpu
# (default max,-la57: AMD, so that kvm_amd loads), EMBER_L1_TCG adds -accel tcg options and
# EMBER_L1_APPEND words to L1's kernel command line.
#
# L1 sees this host's root read-only (9p) under an in-memory overlay, and this repository
# read-write at the same path; the environment (HOME, EMBER_*, ...) is passed through. CMD's
# stdout and stderr come back on stdout. Exit status: CMD's; 124 when --timeout expired; 125
# when L1 stopped without a status (its console's tail is printed).
# L1 kernel: Debian 12's linux-image-amd64 (apt-get download), cached with the initramfs this
# script builds in ${EMBER_CACHE_DIR:-~/.cache/ember}/svm-tier/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}/svm-tier
mem=8192 cpus=1 timeout= verbose=0
say() { printf 'tier/svm.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    -v) verbose=1; shift ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
mode=${1:-}
[ $# -gt 0 ] && shift
case $mode in
  test) timeout=${timeout:-2400} ;;
  run) [ "${1:-}" = -- ] && shift
       [ $# -gt 0 ] || { say "run needs a command: tier/svm.sh run -- CMD [ARGS]"; exit 2; }
       timeout=${timeout:-900} ;;
  *) say "unknown subcommand '${mode}': use 'test' or 'run -- CMD' (tier/svm.sh --help)"; exit 2 ;;
esac
for n in "$mem" "$cpus" "$timeout"; do
  [[ $n =~ ^[0-9]+$ ]] || { say "--mem, --cpus and --timeout take whole numbers, not '$n'"; exit 2; }
done

if [ "$mode" = test ] && [ -d /sys/module/kvm_intel -o -d /sys/module/kvm_amd ]; then
  echo "SKIP: hardware tier: /dev/kvm here is hardware-backed, so cargo test --release already ran tests/linux on it"
  exit 0
fi

# ---- host tools -------------------------------------------------------------------------
need=()
command -v modinfo >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
file -L /bin/busybox 2>/dev/null | grep -q 'statically linked' || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  say "installed ${need[*]}"
fi
"$here/install-qemu.sh"

# QEMU 7.2 runs an L2 guest's XSETBV without telling L1's KVM, which then restores a
# stale XCR0 at the guest's next VM exit: give L1 no XSAVE there.
l1_cpu=max,-la57
qemu_major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
if [ "${qemu_major:-0}" -lt 10 ]; then
  l1_cpu=max,-la57,-xsave
  say "QEMU $qemu_major.x: L1 gets no XSAVE (QEMU 10 from bookworm-backports does not have that bug)"
fi

# ---- L1 kernel and initramfs (cached) ----------------------------------------------------
l1_init() {
cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
die() { echo "svm-tier L1: $*" > /dev/ttyS1; echo 125 > /root/run/svm-tier/rc 2>/dev/null; sync; poweroff -f; }
# kvm_amd without its PAUSE intercept: QEMU's TCG ignores the pause filter count and exits
# to L1 on every PAUSE an L2 guest runs, and both wedged L1s seen (docs/hosts.md, item 7) had
# their CPU in an L2 guest's pause loop.
while read -r m; do
  p=; [ "$m" = kvm_amd ] && p=pause_filter_count=0
  insmod "/lib/modules/$m.ko" $p || echo "svm-tier L1: insmod $m failed"
done < /lib/modules/order
[ -c /dev/kvm ] || die "kvm_amd did not load: no /dev/kvm (is SVM in QEMU's -cpu?)"
p9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || die "cannot mount the host root over 9p"
mount -t tmpfs -o mode=755 tmpfs /upper && mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /root \
  || die "cannot mount the overlay"
R=/root
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o ptmxmode=666 devpts $R/dev/pts; mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run; mount -t tmpfs tmpfs $R/tmp
mkdir -p $R/run/svm-tier
mount -t 9p -o "$p9,cache=none" ctl $R/run/svm-tier || die "cannot mount the control folder"
repo=$(cat $R/run/svm-tier/repo)
# Under /tmp (a fresh tmpfs above) the folder must be made again.
mkdir -p "$R$repo"
mount -t 9p -o "$p9,cache=mmap" repo "$R$repo" || die "cannot mount $repo"
stty -F /dev/ttyS1 raw -echo 2>/dev/null
chroot $R /bin/bash /run/svm-tier/cmd.sh < /dev/null > /dev/ttyS1 2>&1
echo $? > $R/run/svm-tier/rc
sync
poweroff -f
INIT
}

prepare() {
  local pkg out tmp kver moddir
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
  [ -n "$pkg" ] || { say "cannot resolve Debian's linux-image-amd64"; exit 125; }
  out=$cache/$pkg-$( { l1_init; echo "$MODULES"; } | sha256sum | cut -c1-12)
  if [ -f "$out/initramfs.cpio.gz" ]; then echo "$out"; return; fi
  say "preparing the L1 kernel $pkg (once)"
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/prep.XXXXXX")
  (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || { say "apt-get download $pkg failed"; exit 125; }
  dpkg-deb -x "$tmp/${pkg}"_*.deb "$tmp/x"
  kver=${pkg#linux-image-}
  moddir=$tmp/x/lib/modules/$kver
  local ird=$tmp/ird
  mkdir -p "$ird"/{bin,dev,proc,sys,lower,upper,root,lib/modules}
  cp /bin/busybox "$ird/bin/busybox"
  # Each wanted module after its dependencies (modinfo reads them from the file).
  declare -A path=() done_=()
  local f n
  while IFS= read -r f; do n=$(basename "$f"); n=${n%%.ko*}; path[${n//-/_}]=$f; done < <(find "$moddir" -name '*.ko*')
  add() {
    local m=${1//-/_} d
    [ -n "${done_[$m]:-}" ] && return
    done_[$m]=1
    [ -n "${path[$m]:-}" ] || { say "module $m is not in $pkg"; exit 125; }
    for d in $(modinfo -F depends "${path[$m]}" | tr , ' '); do add "$d"; done
    case ${path[$m]} in
      *.xz) xz -dc "${path[$m]}" ;; *.zst) zstd -qdc "${path[$m]}" ;; *) cat "${path[$m]}" ;;
    esac > "$ird/lib/modules/$m.ko"
    echo "$m" >> "$ird/lib/modules/order"
  }
  for n in $MODULES; do add "$n"; done
  l1_init > "$ird/init"; chmod 755 "$ird/init"
  mkdir -p "$out"
  cp "$tmp/x/boot/vmlinuz-$kver" "$out/vmlinuz"
  (cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz.tmp"
  mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
  rm -rf "$tmp"
  echo "$out"
}
# kvm_amd for /dev/kvm; 9p and overlay for the shared root; tun for the network tests.
MODULES="virtio_pci 9pnet_virtio 9p overlay kvm_amd tun"
l1=$(prepare)

# ---- the command L1 runs -----------------------------------------------------------------
ctl=$(mktemp -d /tmp/ember-svm-tier.XXXXXX)
qpid=
cleanup() { [ -n "$qpid" ] && kill "$qpid" 2>/dev/null; rm -rf "$ctl"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
printf '%s\n' "$repo" > "$ctl/repo"
# L1 writes a heartbeat every 10 s; none for this long means L1 is wedged. The script says
# the longest gap it saw, so a healthy L1's margin can be read off any run.
wedge_s=${EMBER_L1_WEDGE_S:-90}

if [ "$mode" = test ]; then
  # Build here (never cargo in L1: everything there is emulated), then find the binary.
  say "building the tests (cargo test --release --no-run)"
  bin=$(cd "$repo" && cargo test --release --no-run --test linux --message-format=json 2>/dev/null \
    | grep -F '"kind":["test"],"crate_types":["bin"],"name":"linux"' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -x "$bin" ] || { say "cannot build the linux test binary: run cargo test --release --no-run --test linux"; exit 1; }
  # One test per test-binary run, each finished one recorded in done: if L1 wedges, a second
  # L1 runs only the tests that had not finished.
  "$bin" --list --format terse "$@" | sed -n 's/: test$//p' > "$ctl/tests"
  [ -s "$ctl/tests" ] || { say "no test in tests/linux matches: $*"; exit 1; }
  : > "$ctl/done"
  set -- /bin/bash -c '
    while IFS= read -r t <&3; do
      cut -d" " -f2- /run/svm-tier/done | grep -qxF "$t" && continue
      "$0" --test-threads=1 --color=never --exact "$t" < /dev/null
      echo "$? $t" >> /run/svm-tier/done
    done 3< /run/svm-tier/tests' "$bin"
fi
{
  echo '# written by tier/svm.sh'
  while IFS= read -r n; do
    case $n in PWD|OLDPWD|SHLVL|_|BASH*|TERM) continue ;; esac
    printf 'export %s=%q\n' "$n" "${!n}"
  done < <(compgen -e)
  printf 'cd %q || exit 125\n' "$PWD"
  echo "# L1's heartbeat: the host takes ${wedge_s} s without one as a wedged L1."
  echo '(while :; do date +%s > /run/svm-tier/beat; sleep 10; done) &'
  # A sentinel VM that lives as long as L1: one vCPU whose local APIC stays disabled, so the
  # counts behind KVM's apic_hw_disabled and apic_sw_disabled static keys never return to
  # zero. Otherwise every VM that comes and goes flips those keys, the kernel live-patches its
  # own code (text_poke_bp, int3 and IPIs), and with two or more L1 CPUs QEMU's TCG can keep
  # running a stale copy of the patched instruction on another CPU: L1's CPUs then loop in
  # exc_int3 with interrupts off and L1 wedges for good (docs/hosts.md, "The hardware tier").
  cat <<'SENTINEL'
python3 -c '
import fcntl, os, struct, time
kvm = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(kvm, 0xAE01, 0)                    # KVM_CREATE_VM
fcntl.ioctl(vm, 0xAE60)                             # KVM_CREATE_IRQCHIP
vcpu = fcntl.ioctl(vm, 0xAE41, 0)                   # KVM_CREATE_VCPU: its APIC starts software-disabled
msr = struct.pack("=II", 1, 0) + struct.pack("=IIQ", 0x1B, 0, 0xFEE00000)
fcntl.ioctl(vcpu, 0x4008AE89, msr)                  # KVM_SET_MSRS: IA32_APIC_BASE, hardware-disabled
time.sleep(1 << 30)
' &
SENTINEL
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$ctl/cmd.sh"

append="console=ttyS0 panic=-1 mitigations=off quiet loglevel=4 ${EMBER_L1_APPEND:-}"
qemu=(qemu-system-x86_64 -accel "tcg${EMBER_L1_TCG:+,$EMBER_L1_TCG}" -cpu "${EMBER_L1_CPU:-$l1_cpu}" -m "$mem" -smp "$cpus"
  -nodefaults -display none -no-reboot
  -kernel "$l1/vmlinuz" -initrd "$l1/initramfs.cpio.gz" -append "$append"
  -serial "file:$ctl/console.log" -chardev stdio,id=out,signal=off -serial chardev:out
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
  -virtfs "local,path=${ctl},mount_tag=ctl,security_model=none"
  -virtfs "local,path=${repo//,/,,},mount_tag=repo,security_model=none,multidevs=remap"
  -monitor "unix:$ctl/monitor,server,nowait")
[ "$verbose" = 1 ] && say "${qemu[*]}"

# Says where L1's CPUs are, then stops L1: a wedged L1 is the emulator's problem, and its
# instruction pointers and console are what a report about it needs.
stop_l1() {
  say "L1's CPUs were at:"
  python3 - "$ctl/monitor" <<'PY' >&2 || true
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(2)
s.sendall(b"info registers -a\n"); time.sleep(1)
out = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk: break
        out += chunk
except OSError: pass
for line in out.decode(errors="replace").splitlines():
    if line.startswith(("CPU#", "RIP=", "CS =")): print("  " + line)
PY
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  qpid=
  say "the tail of L1's console:"
  tail -n 20 "$ctl/console.log" >&2 || true
}

# Boots L1 for cmd.sh and watches it. Returns 0 when L1 ran the command to the end, 124 on the
# whole run's --timeout, 126 when L1 wedged (no heartbeat for $wedge_s s), 125 when it
# stopped without a status.
boot_l1() {
  local boot_start qrc last now prev=0 gap=0
  rm -f "$ctl/rc" "$ctl/beat" "$ctl/console.log"
  say "booting L1 (QEMU TCG, AMD SVM emulated, ${cpus} CPUs) for: $*"
  boot_start=$(date +%s)
  "${qemu[@]}" < /dev/null &
  qpid=$!
  while kill -0 "$qpid" 2>/dev/null; do
    sleep 1
    now=$(date +%s)
    if [ $(( now - start )) -ge "$timeout" ]; then
      say "timed out after ${timeout} s"
      stop_l1
      return 124
    fi
    last=$(stat -c %Y "$ctl/beat" 2>/dev/null || echo "$boot_start")
    if [ "$last" != "$prev" ]; then
      [ "$prev" != 0 ] && [ $(( last - prev )) -gt "$gap" ] && gap=$(( last - prev ))
      prev=$last
    fi
    if [ $(( now - last )) -ge "$wedge_s" ] && ! [ -f "$ctl/rc" ]; then
      say "L1 wedged: no heartbeat from it for ${wedge_s} s (the emulator's fault: docs/hosts.md, \"The hardware tier\")"
      stop_l1
      return 126
    fi
  done
  set +e
  wait "$qpid"
  qrc=$?
  set -e
  qpid=
  say "L1 ran $(( $(date +%s) - boot_start )) s; its longest heartbeat gap was ${gap} s (wedged at ${wedge_s})"
  [ -f "$ctl/rc" ] && return 0
  say "L1 stopped without a status (qemu exit $qrc); the tail of its console:"
  tail -n 30 "$ctl/console.log" >&2 || true
  return 125
}

start=$(date +%s)
if [ "$mode" = run ]; then
  set +e; boot_l1 "$@"; brc=$?; set -e
  [ "$brc" = 0 ] && exit "$(cat "$ctl/rc")"
  [ "$brc" = 126 ] && exit 124
  exit "$brc"
fi

# Test mode: a wedged L1 is the emulator's, so a new L1 runs the tests left, the interrupted
# one first, as often as it takes within --timeout; a test during which L1 wedges
# $wedges_per_test times is a failure (exit 126 in the list), so a test that wedges L1 by
# itself cannot loop the tier.
wedges_per_test=${EMBER_L1_WEDGES_PER_TEST:-3}
tests_left() { grep -vxFf <(cut -d' ' -f2- "$ctl/done") "$ctl/tests" || true; }
: > "$ctl/wedged"
wedges=0
while :; do
  left=$(tests_left)
  if [ -z "$left" ]; then brc=0; break; fi
  set +e; boot_l1 "$(wc -l <<< "$left") tests of $bin"; brc=$?; set -e
  [ "$brc" = 126 ] || break
  wedges=$((wedges + 1))
  left=$(tests_left)
  [ -n "$left" ] || { brc=0; break; }
  t=${left%%$'\n'*}
  say "L1 wedged during $t; $(wc -l < "$ctl/done") of $(wc -l < "$ctl/tests") tests had finished"
  echo "$t" >> "$ctl/wedged"
  if [ "$(grep -cxF "$t" "$ctl/wedged")" -ge "$wedges_per_test" ]; then
    say "L1 wedged $wedges_per_test times during $t: counted as failed"
    echo "126 $t" >> "$ctl/done"
  fi
  [ -n "$(tests_left)" ] && say "booting a new L1 for the tests left"
done
[ "$wedges" = 0 ] || say "L1 wedged $wedges times in this run"
failed=$(awk '$1 != 0 {print $2}' "$ctl/done")
left=$(tests_left)
say "$(awk '$1 == 0' "$ctl/done" | wc -l) of $(wc -l < "$ctl/tests") tests passed in the hardware tier"
[ -z "$failed" ] || say "failed: $(echo $failed)"
[ -z "$left" ] || say "not run to the end: $(echo $left)"
if [ "$brc" != 0 ]; then
  [ "$brc" = 126 ] && exit 124
  exit "$brc"
fi
[ -z "$failed" ] && [ -z "$left" ] || exit 1
exit 0
