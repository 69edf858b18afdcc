#!/usr/bin/env python3
"""VMM overhead: whole-process time (exec to exit) of ember and of QEMU's microvm booting the
same tiny PVH guest (tests/guests/hello_pvh: two console lines, the boot timer, an i8042
reset), in alternating blocks of warm runs so machine drift cancels.

    cargo build --release && python3 bench/vmm_overhead.py [--runs 20] [--block 5]

Each block runs one subject block+1 times back to back and drops the first (cold) run; blocks
alternate ember, qemu, ember, qemu, ... Children are reaped with a blocking wait. Prints a
table; --json FILE also writes the raw samples.
"""
import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def newest(pattern):
    paths = glob.glob(os.path.join(ROOT, pattern))
    if not paths:
        sys.exit(f"vmm_overhead.py: nothing matches {pattern}: run `cargo build --release` first")
    return max(paths, key=os.path.getmtime)


def percentile(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_once(cmd, expect):
    t0 = time.perf_counter_ns()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t1 = time.perf_counter_ns()
    if expect not in p.stdout.decode(errors="replace"):
        sys.exit(f"vmm_overhead.py: {cmd[0]} did not boot the guest (exit {p.returncode}):\n"
                 f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
    return (t1 - t0) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="counted runs per subject")
    ap.add_argument("--block", type=int, default=5, help="counted runs per block")
    ap.add_argument("--json", help="write samples and summary here")
    args = ap.parse_args()
    if args.runs < 1 or args.block < 1:
        sys.exit("vmm_overhead.py: --runs and --block must be at least 1")

    ember = os.path.join(ROOT, "target/release/ember")
    if not os.path.exists(ember):
        sys.exit("vmm_overhead.py: target/release/ember is missing: run `cargo build --release`")
    guest = newest("target/release/build/ember-*/out/guests/hello_pvh")
    subjects = {
        "ember": [ember, "run", "--kernel", guest, "--no-initrd", "--mem-mib", "128"],
        "qemu-microvm": ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm",
                         # arch-capabilities: QEMU cannot set that MSR on every host (PVM).
                         "-cpu", "host,-arch-capabilities", "-m", "128", "-nodefaults",
                         "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                         "-device", "i8042", "-kernel", guest],
    }
    samples = {name: [] for name in subjects}
    rounds = -(-args.runs // args.block)
    for _ in range(rounds):
        for name, cmd in subjects.items():
            for i in range(args.block + 1):
                ms = run_once(cmd, "start_info ok")
                if i > 0 and len(samples[name]) < args.runs:
                    samples[name].append(ms)

    base = statistics.median(samples["ember"])
    print(f"host: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; guest: tests/guests/hello_pvh (PVH entry)")
    print(f"{'subject':<14} {'runs':>4} {'min':>8} {'median':>8} {'p90':>8} {'max':>8} {'mean':>8} {'ratio':>7}")
    summary = {}
    for name, xs in samples.items():
        med = statistics.median(xs)
        summary[name] = {"runs": len(xs), "min_ms": min(xs), "median_ms": med, "p90_ms": percentile(xs, 90),
                         "max_ms": max(xs), "mean_ms": statistics.fmean(xs), "ratio_to_ember": med / base}
        s = summary[name]
        print(f"{name:<14} {len(xs):>4} {s['min_ms']:>8.2f} {med:>8.2f} {s['p90_ms']:>8.2f} "
              f"{s['max_ms']:>8.2f} {s['mean_ms']:>8.2f} {s['ratio_to_ember']:>6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "samples_ms": samples}, f, indent=2)


if __name__ == "__main__":
    main()
