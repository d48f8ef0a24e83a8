"""Wall time of ``openmind-prep --help`` as a user sees it: the whole process, several runs, median.

Target: under 0.3 s. The bare interpreter (``python -c pass``) is measured in the same loop,
interleaved, so machine load shows in both columns; the CPU seconds (user + system) of the
process are printed beside the wall time, since on a loaded machine wall time is mostly waiting
for a core.

    python benchmarks/startup.py [--runs 15] [--cmd "openmind-prep --help"]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) from spawn to exit of one process (output discarded; a failure raises)."""
    c0, t0 = _cpu(), time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0, _cpu() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cmd", default=None, help="command line to time (default: openmind-prep --help)")
    parser.add_argument("--target", type=float, default=0.3, help="seconds")
    args = parser.parse_args()
    if args.cmd:
        argv = shlex.split(args.cmd)
    else:
        exe = shutil.which("openmind-prep")
        argv = [exe, "--help"] if exe else [sys.executable, "-m", "openmind_prep.cli", "--help"]
    bare = [sys.executable, "-c", "pass"]
    wall(argv)  # warm the page cache
    ours, base = [], []
    for _ in range(args.runs):
        ours.append(wall(argv))
        base.append(wall(bare))
    med, med_base = statistics.median(w for w, _ in ours), statistics.median(w for w, _ in base)
    cpu, cpu_base = statistics.median(c for _, c in ours), statistics.median(c for _, c in base)
    walls = [w for w, _ in ours]
    print(f"command:     {' '.join(argv)}")
    print(f"runs:        {args.runs}")
    print(f"median:      {med * 1000:.0f} ms wall (min {min(walls) * 1000:.0f}, max {max(walls) * 1000:.0f}), "
          f"{cpu * 1000:.0f} ms CPU")
    print(f"bare python: {med_base * 1000:.0f} ms wall, {cpu_base * 1000:.0f} ms CPU (interpreter start-up alone)")
    print(f"load:        {' '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min) on {os.cpu_count()} cores")
    print(f"target:      < {args.target * 1000:.0f} ms -> {'met' if med < args.target else 'NOT met'}")


if __name__ == "__main__":
    main()
