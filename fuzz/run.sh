#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (libFuzzer through cargo-fuzz, stable toolchain:
# no sanitizer, so it finds panics, aborts and hangs, not silent memory errors, which safe
# Rust rules out) and prints one line per target.
#   fuzz/run.sh [SECONDS_PER_TARGET=60]
# Needs `cargo install cargo-fuzz`. Crashing inputs land in fuzz/artifacts/<target>/; keep
# each as a regression test next to the code it broke.
set -uo pipefail
secs=${1:-60}
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo install cargo-fuzz first" >&2; exit 2; }
cargo fuzz build -O --sanitizer none >/dev/null 2>&1 || { echo "fuzz/run.sh: build failed: run cargo fuzz build -O --sanitizer none" >&2; exit 1; }
status=0
for t in serial_registers ioapic_registers kernel_loader cpio_writer config_file flag_values virtio_block virtio_vsock virtio_fs; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  cargo fuzz run -O --sanitizer none "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 >"$log" 2>&1
  rc=$?
  runs=$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    echo "$t: ${runs:-?} runs in ${secs} s, ${cov:-cov: ?}, no crash"
  else
    echo "$t: FAILED after ${runs:-?} runs (see fuzz/artifacts/$t): $(grep -m1 -E 'panicked|ERROR' "$log")"
    status=1
  fi
  rm -f "$log"
done
exit $status
