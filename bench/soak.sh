#!/usr/bin/env bash
# Soak: SEQ sequential boots, then PAR guests at once, of a tiny guest (tests/guests/hello64)
# or, with --linux, of the default Linux guest (the project kernel and ember's built-in
# initramfs, which greets and powers off), checking that every one ended with exit 0 and its
# expected output, that no ember process is left behind, and that the host got its memory back.
#
#   cargo build --release && bench/soak.sh [SEQ=500] [PAR=50]
#   kernels/build.sh && bench/soak.sh --linux [SEQ=500] [PAR=50]   (hardware KVM only)
#   EMBER=path GUEST=path bench/soak.sh ...   (what the test suite's smoke run uses)
# Each boot is bounded by `timeout 60`; the whole script by SEQ and PAR.
set -uo pipefail
linux=0
if [ "${1:-}" = --linux ]; then linux=1; shift; fi
seq_n=${1:-500}
par_n=${2:-50}
root=$(cd "$(dirname "$0")/.." && pwd)
ember=${EMBER:-$root/target/x86_64-unknown-linux-gnu/release/ember}
[ -x "$ember" ] || { echo "soak.sh: build first: cargo build --release" >&2; exit 2; }
if [ "$linux" = 1 ]; then
  # On a PVM-based /dev/kvm Linux userspace never runs (docs/hosts.md): nothing to soak.
  if "$ember" host 2>/dev/null | head -1 | grep -q "PVM-based"; then
    echo "SKIP: soak --linux: /dev/kvm here is PVM-based; the Linux guest's userspace needs hardware KVM"
    exit 0
  fi
  guest=${GUEST:-${EMBER_KERNEL:-$HOME/.cache/ember/vmlinux}}
  [ -f "$guest" ] || { echo "soak.sh: no kernel at $guest: run kernels/build.sh" >&2; exit 2; }
  boot_args=(--kernel "$guest")
  expect="Hello from ember: Linux"
else
  guest=${GUEST:-$(ls -td "$root"/target/x86_64-unknown-linux-gnu/release/build/ember-*/out/guests 2>/dev/null | head -1)/hello64}
  [ -f "$guest" ] || { echo "soak.sh: build first: cargo build --release" >&2; exit 2; }
  boot_args=(--kernel "$guest" --no-initrd)
  expect="boot_params ok"
fi
# Every ember this script starts carries this mark, so only they are counted at the end (other
# embers may run on the host, the test suite's among them).
export EMBER_SOAK_ID=$$
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
avail() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
fail=0

mem0=$(avail)
t0=$(date +%s.%N)
for i in $(seq 1 "$seq_n"); do
  out=$(timeout 60 "$ember" run "${boot_args[@]}" </dev/null 2>&1)
  rc=$?
  if [ "$rc" -ne 0 ] || [[ "$out" != *"$expect"* ]]; then
    echo "soak.sh: sequential boot $i: exit $rc: $out" >&2
    fail=$((fail + 1))
  fi
done
t1=$(date +%s.%N)
echo "sequential: $((seq_n - fail))/$seq_n ok in $(echo "$t1 - $t0" | bc) s"

pfail=0
t0=$(date +%s.%N)
for i in $(seq 1 "$par_n"); do
  (timeout 60 "$ember" run "${boot_args[@]}" </dev/null >"$tmp/$i.out" 2>&1; echo $? >"$tmp/$i.rc") &
done
wait
t1=$(date +%s.%N)
for i in $(seq 1 "$par_n"); do
  if [ "$(cat "$tmp/$i.rc")" != 0 ] || ! grep -q "$expect" "$tmp/$i.out"; then
    echo "soak.sh: parallel boot $i: exit $(cat "$tmp/$i.rc"): $(cat "$tmp/$i.out")" >&2
    pfail=$((pfail + 1))
  fi
done
echo "parallel: $((par_n - pfail))/$par_n ok in $(echo "$t1 - $t0" | bc) s"

left=0
ember_exe=$(readlink -f "$ember")
for env in /proc/[0-9]*/environ; do
  pid=${env#/proc/}; pid=${pid%/environ}
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$ember_exe" ] || continue
  grep -qsz "^EMBER_SOAK_ID=$$\$" "$env" && left=$((left + 1))
done
echo "ember processes left: $left"
sleep 1
mem1=$(avail)
echo "host MemAvailable: $((mem0 / 1024)) MiB before, $((mem1 / 1024)) MiB after"
# Allow 64 MiB of drift from page cache and other tenants.
lost=$(( (mem0 - mem1) / 1024 ))
[ "$lost" -lt 64 ] || { echo "soak.sh: host memory not returned: $lost MiB" >&2; fail=$((fail + 1)); }
[ "$left" -eq 0 ] || fail=$((fail + 1))
[ $((fail + pfail)) -eq 0 ] && echo "soak: ok" || { echo "soak: FAILED" >&2; exit 1; }
