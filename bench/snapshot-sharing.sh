#!/usr/bin/env bash
# The memory N VMs restored from one snapshot share, against N VMs booted cold, in one run:
# the tiny guest tests/guests/resident.S fills 32 MiB, says ready (where the snapshot is taken),
# reads the 32 MiB back and writes one word per MiB, then stays resident. N copies of each kind
# are started at once and measured together once every one has read its memory back: the
# sums of /proc/PID/smaps_rollup (Rss; Pss, where a page shared by k processes counts 1/k in
# each; Private_Dirty), per VM, and the ratio restored/cold.
#
#   bench/snapshot-sharing.sh [N]      (default 100; build first: cargo build --release)
#
# A restored VM's memory is the snapshot's memory file mapped copy-on-write: the pages it only
# reads are the page cache's, one copy for every VM; a cold VM's are its own. Figures:
# docs/snapshot.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
target=target/x86_64-unknown-linux-gnu/release
ember=$target/ember
guest=$(ls -td "$target"/build/ember-*/out/guests 2>/dev/null | head -1)/resident
[ -x "$ember" ] && [ -f "$guest" ] || { echo "bench/snapshot-sharing.sh: build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /tmp/ember-sharing.XXXXXX)
pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$ember" run --kernel "$guest" --no-initrd --mem-mib 64 --snapshot-on-ready "$work/snap" > /dev/null 2>&1

# measure KIND ARGS...: N VMs of `ember ARGS`, summed once all of them are resident.
measure() {
  local kind=$1
  shift
  pids=()
  for i in $(seq "$n"); do
    "$ember" "$@" > "$work/$kind.$i.out" 2>&1 &
    pids+=($!)
  done
  local deadline=$((SECONDS + 300))
  for i in $(seq "$n"); do
    until grep -q "resident: checked" "$work/$kind.$i.out"; do
      if [ $SECONDS -ge $deadline ] || grep -q FAIL "$work/$kind.$i.out"; then
        echo "bench/snapshot-sharing.sh: $kind VM $i did not become resident:" >&2
        cat "$work/$kind.$i.out" >&2
        exit 1
      fi
      sleep 0.05
    done
  done
  python3 - "$kind" "${pids[@]}" >> "$work/results" <<'PY'
import sys
kind, pids = sys.argv[1], sys.argv[2:]
tot = {}
for pid in pids:
    for line in open(f"/proc/{pid}/smaps_rollup"):
        f = line.split()
        if len(f) == 3 and f[2] == "kB":
            tot[f[0].rstrip(":")] = tot.get(f[0].rstrip(":"), 0) + int(f[1])
print(kind, len(pids), tot["Rss"], tot["Pss"], tot["Private_Dirty"])
PY
  kill "${pids[@]}"
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

measure cold run --kernel "$guest" --no-initrd --mem-mib 64
measure restored run --restore "$work/snap"

python3 - "$work/results" <<'PY'
import sys
r = {}
for line in open(sys.argv[1]):
    kind, n, rss, pss, dirty = line.split()
    r[kind] = (int(n), int(rss), int(pss), int(dirty))
n = r["cold"][0]
print(f"{n} VMs of each kind at once, each with 32 MiB of guest memory written; MiB per VM")
print(f"{'subject':10} {'Rss':>8} {'Pss':>8} {'Private_Dirty':>14} {'Pss, all VMs':>13}")
for k in ("cold", "restored"):
    _, rss, pss, dirty = r[k]
    print(f"{k:10} {rss / n / 1024:8.2f} {pss / n / 1024:8.2f} {dirty / n / 1024:14.2f} {pss / 1024:13.1f}")
c, s = r["cold"], r["restored"]
print(f"restored/cold: Pss {s[2] / c[2]:.3f}x, Private_Dirty {s[3] / c[3]:.3f}x")
PY
