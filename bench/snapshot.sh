#!/usr/bin/env bash
# Restore against cold boot, alternating run by run: the time from ember's exec to its first
# KVM_RUN, and to the process's end, from ember's own --timings (docs/timings.md), as medians
# and as the ratio restore/cold.
#
#   bench/snapshot.sh [ROUNDS]                 the tiny snapshot guest (tests/guests/snapshot.S)
#   bench/snapshot.sh ROUNDS --linux KERNEL    a Linux guest: KERNEL with `--exec /bin/busybox
#                                              -- true`, snapshotted where ember's init says
#                                              ready (hardware tier: tier/svm.sh run -- ...)
#
# (default 31 rounds; build first: cargo build --release). The tiny guest, cold, runs from its
# first instruction (it counts 3 timer ticks, says ready, waits 3 more, checks and resets:
# about 60 ms of guest time); the restore continues it from "ready" (3 ticks: about 30 ms).
# The Linux guest, cold, boots and runs `true`; restored, it runs `true` and reboots. Compare
# the first-instruction figures for the tiny guest, the process end for Linux. Figures:
# docs/snapshot.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-31}
target=target/x86_64-unknown-linux-gnu/release
ember=$target/ember
guest=$(ls -td "$target"/build/ember-*/out/guests 2>/dev/null | head -1)/snapshot
[ -x "$ember" ] && [ -f "$guest" ] || { echo "bench/snapshot.sh: build first: cargo build --release" >&2; exit 1; }
boot=(--kernel "$guest" --no-initrd)
if [ "${2:-}" = --linux ]; then
  [ -f "${3:-}" ] || { echo "bench/snapshot.sh: --linux needs a kernel" >&2; exit 2; }
  boot=(--kernel "$3" --exec /bin/busybox -- true)
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/ember-snapshot-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The snapshot flags before `--`, which ends the boot flags of an --exec run.
snap=(--snapshot-on-ready "$work/snap")
"$ember" run "${boot[@]:0:2}" "${snap[@]}" "${boot[@]:2}" > /dev/null 2>&1

# Prints "first_kvm_run_ns process_exit_ns" from one --timings=json report.
phases() {
  python3 -c '
import json, sys
p = {x["name"]: x["t_ns"] for x in json.load(open(sys.argv[1]))["phases"]}
print(p["first_kvm_run"], p["process_exit"])' "$1"
}

for i in $(seq "$rounds"); do
  "$ember" run --timings="$work/t.json" "${boot[@]}" > /dev/null
  echo "cold $(phases "$work/t.json")" >> "$work/runs"
  "$ember" run --restore "$work/snap" --timings="$work/t.json" > /dev/null
  echo "restore $(phases "$work/t.json")" >> "$work/runs"
done

python3 - "$work/runs" "$rounds" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    kind, first, end = line.split()
    runs.setdefault(kind, []).append((int(first), int(end)))
med = {k: (statistics.median(f for f, _ in v) / 1e6, statistics.median(e for _, e in v) / 1e6)
       for k, v in runs.items()}
print(f"{sys.argv[2]} rounds, alternating; medians in ms from ember's exec")
print(f"{'subject':10} {'first KVM_RUN':>14} {'process end':>12}")
for k in ("cold", "restore"):
    print(f"{k:10} {med[k][0]:14.3f} {med[k][1]:12.3f}")
print(f"restore/cold: first KVM_RUN {med['restore'][0] / med['cold'][0]:.2f}x, "
      f"process end {med['restore'][1] / med['cold'][1]:.2f}x")
PY
