#!/usr/bin/env python3
"""Two or more ember builds, side by side, phase by phase.

Runs each build's `ember run --timings=FILE` on the same guest in turn (A, B, A, B, ...), so
that the host's drift hits every build alike, drops the first rounds as warm-up, and prints the
median time of each phase since the process start (ms), one column per build. This is how the
before/after figures in docs/startup-latency.md were taken:

    python3 bench/compare-builds.py --runs 60 --kernel GUEST OLD/ember NEW/ember

A build may be given as NAME=VALUE:PATH to run it with one environment variable set.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=60, help="counted runs per build")
    p.add_argument("--warmup", type=int, default=3, help="rounds dropped first")
    p.add_argument("--kernel", required=True, help="the guest (a tiny one: --no-initrd)")
    p.add_argument("builds", nargs="+", help="ember binaries (NAME=VALUE:PATH sets a variable)")
    a = p.parse_args()

    builds = []
    for b in a.builds:
        env = dict(os.environ)
        path = b
        head, sep, tail = b.partition(":")
        if sep and "=" in head:
            k, _, v = head.partition("=")
            env[k] = v
            path = tail
        if not os.access(path, os.X_OK):
            print(f"compare-builds: {path} is not an executable ember", file=sys.stderr)
            return 2
        builds.append((b, path, env))

    samples = {b: [] for b, _, _ in builds}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        for i in range(a.warmup + a.runs):
            for name, path, env in builds:
                if os.path.exists(out):
                    os.unlink(out)
                r = subprocess.run(
                    [path, "run", "--kernel", a.kernel, "--no-initrd", f"--timings={out}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=env,
                    text=True,
                )
                if r.returncode != 0:
                    print(f"compare-builds: {name} failed: {r.stderr.strip()}", file=sys.stderr)
                    return 1
                if i >= a.warmup:
                    with open(out) as f:
                        phases = json.load(f)["phases"]
                    samples[name].append({p["name"]: p["t_ns"] for p in phases})

    names = [b for b, _, _ in builds]
    phases = list(samples[names[0]][0])
    print("phase (median ms since exec)".ljust(30) + "".join(n[-24:].rjust(26) for n in names))
    for ph in phases:
        cells = []
        for n in names:
            v = [s[ph] for s in samples[n] if ph in s]
            cells.append(f"{statistics.median(v) / 1e6:.3f}" if v else "-")
        print(ph.ljust(30) + "".join(c.rjust(26) for c in cells))
    print(f"{a.runs} runs per build, alternating, after {a.warmup} warm-up rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
