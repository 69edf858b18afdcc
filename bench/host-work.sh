#!/usr/bin/env bash
# Times a host program run in a micro-VM with the host's files, start to finished status:
# `ember run -- CMD` beside virtme-ng (`vng -r K -- CMD`) and vmtest (`vmtest -k K CMD`), on
# one kernel, for CMD = `true` and `python3 -c pass`, the subjects alternating round by round.
# Prints each subject's median and its ratio to ember's, then ember's own phase timeline
# (`--timings`) for one run.
#
#   bench/setup-peers.sh && kernels/build.sh kernels/peers.config   (once)
#   bench/host-work.sh [--runs N] [--kernel BZIMAGE]
#
# On a PVM-based /dev/kvm a Linux guest's userspace does not run, so the script runs itself in
# the hardware tier (tier/svm.sh run): there everything is emulated and the medians mean
# nothing as times, only as ratios between subjects measured in the same L1, so only ratios are
# printed. On a host with hardware KVM it runs here and prints milliseconds too.
#
# Each subject runs as its users type it, with its own defaults: ember 1 vCPU and 128 MiB, vng
# 1 GiB and one vCPU per host CPU (1 in the tier's L1), the host's root over 9p (virtiofsd is
# not in Debian 12), vmtest 2 vCPUs and 4 GiB, the host's root over 9p, its guest agent on a
# virtio console. "ember, 1 GiB" repeats ember with vng's memory size.
# (`--` before the program for vmtest too, so that its own -c cannot take a program's -c.)
#   EMBER_BENCH_RUNS=N        rounds (default 5); --runs N the same
#   EMBER_PEERS_DIR=DIR       where bench/setup-peers.sh installed vng and vmtest
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${EMBER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ember}
peers=${EMBER_PEERS_DIR:-$cache/peers}
runs=${EMBER_BENCH_RUNS:-5}
kernel=$cache/bzImage-peers
inside=0
say() { printf 'bench/host-work.sh: %s\n' "$*" >&2; }

args=("$@")
while [ $# -gt 0 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --inside-tier) inside=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown argument: $1 (see --help)"; exit 2 ;;
  esac
done
case $runs in ''|*[!0-9]*|0) say "--runs wants a positive number, not '$runs'"; exit 2 ;; esac

ember=$repo/target/x86_64-unknown-linux-gnu/release/ember
vng=$peers/venv/bin/vng
vmtest=$peers/bin/vmtest
[ -f "$kernel" ] || { say "no kernel at $kernel: run kernels/build.sh kernels/peers.config (or name one with --kernel)"; exit 1; }
[ -x "$vng" ] && [ -x "$vmtest" ] || { say "vng or vmtest missing under $peers: run bench/setup-peers.sh"; exit 1; }
# vng runs its own virtme-run by name.
export PATH="$peers/venv/bin:$PATH"
command -v qemu-ga >/dev/null || { say "qemu-ga (vmtest's guest agent) missing: run bench/setup-peers.sh"; exit 1; }

if [ "$inside" -eq 0 ]; then
  (cd "$repo" && cargo build --release --quiet)
  if [ -d /sys/module/kvm_pvm ]; then
    say "/dev/kvm is PVM-based (no Linux userspace here): running in the hardware tier; ratios only"
    exec "$repo/tier/svm.sh" --timeout 3000 run -- "$0" "${args[@]}" --inside-tier
  fi
fi

log=$(mktemp /tmp/ember-host-work.XXXXXX)
trap 'rm -f "$log"' EXIT
cd "$repo"

# subject name | command line (the program follows)
subjects=(
  "ember|$ember run --kernel $kernel --"
  "ember, 1 GiB|$ember run --kernel $kernel --mem-mib 1024 --"
  "vng|$vng -r $kernel --"
  "vmtest|$vmtest -k $kernel --"
)
programs=("true" "python3 -c pass")

now_ns() { date +%s%N; }
declare -A times
one() { # subject-index program -> appends the run's nanoseconds
  local name=${subjects[$1]%%|*} cmd=${subjects[$1]#*|} t0 t1 rc=0
  t0=$(now_ns)
  # shellcheck disable=SC2086 # the command lines are word lists
  timeout 600 $cmd $2 </dev/null >>"$log" 2>&1 || rc=$?
  t1=$(now_ns)
  if [ "$rc" -ne 0 ]; then
    say "$name -- $2 exited $rc; its output:"
    tail -20 "$log" >&2
    exit 1
  fi
  times["$1|$2"]+="$(( t1 - t0 )) "
}

median_ns() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }

n=${#subjects[@]}
# One warm-up run each (page cache, QEMU's first start), not counted.
for p in "${programs[@]}"; do for ((i = 0; i < n; i++)); do one "$i" "$p"; done; done
times=()
for ((r = 0; r < runs; r++)); do
  for p in "${programs[@]}"; do
    # Alternating: each round starts one subject later, so none always runs first.
    for ((k = 0; k < n; k++)); do one $(( (k + r) % n )) "$p"; done
  done
done

echo "# bench/host-work.sh: $runs rounds, kernel $kernel ($(stat -L -c %s "$kernel") bytes)"
if [ "$inside" -eq 1 ]; then
  echo "# in the hardware tier's L1 (all emulated): ratios to ember's median only"
else
  echo "# on $(uname -r), /dev/kvm: $(ls /sys/module | grep -E '^kvm_(intel|amd|pvm)$' | tr '\n' ' ')"
fi
for p in "${programs[@]}"; do
  base=$(median_ns <<<"${times["0|$p"]}")
  echo
  echo "CMD = $p"
  for ((i = 0; i < n; i++)); do
    m=$(median_ns <<<"${times["$i|$p"]}")
    ratio=$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2f", a / b}')
    if [ "$inside" -eq 1 ]; then
      printf '  %-14s %6sx ember\n' "${subjects[$i]%%|*}" "$ratio"
    else
      printf '  %-14s %9.1f ms  %6sx ember\n' "${subjects[$i]%%|*}" "$(awk -v a="$m" 'BEGIN {print a / 1e6}')" "$ratio"
    fi
  done
done
echo
if [ "$inside" -eq 1 ]; then
  echo "ember's phase timeline for one run of true (ember run --timings; emulated time: read it as proportions):"
else
  echo "ember's phase timeline for one run of true (ember run --timings):"
fi
"$ember" run --kernel "$kernel" --timings -- true 2>&1 >/dev/null | sed 's/^/  /'
