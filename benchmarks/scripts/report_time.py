"""Wall time of the main job, ``gradnoise report`` (default grid), cold and warm, for this
checkout and optionally an older one measured in the same run.

    python benchmarks/scripts/report_time.py                       # this checkout
    git worktree add /tmp/before <commit>
    python benchmarks/scripts/report_time.py --baseline /tmp/before   # before and after, same run
    python benchmarks/scripts/report_time.py --baseline /tmp/before --baseline-python /tmp/before/.venv/bin/python --repeats 2

*cold*: an empty cache (``GRADNOISE_CACHE`` a new folder: oracle truths computed) and a new
output folder; *warm*: the cache the cold run filled, a new output folder again (every cell
measured, every figure drawn). This checkout runs as the installed ``python -m
gradnoise.analysis report``; a baseline from before the ``gradnoise`` package (its folders imported
as ``estimators`` and ``analysis``) runs as ``python -m analysis report`` from its own folder, so
its own code is imported. Threads: those each version chooses by default.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_report(checkout: Path, cache: Path, out: Path, python: str = sys.executable) -> float:
    env = {**os.environ, "GRADNOISE_CACHE": str(cache)}
    module = "gradnoise.analysis" if checkout == ROOT or python != sys.executable else "analysis"
    start = time.perf_counter()
    subprocess.run([python, "-m", module, "report", "--out-dir", str(out), "--quiet"],
                   cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a checkout of an older commit, measured in the same run")
    parser.add_argument("--baseline-python", default=sys.executable,
                        help="the Python of a virtual environment with the baseline installed (a baseline that is "
                             "itself the gradnoise package: its installed `gradnoise.analysis` is run)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating (default: 1)")
    args = parser.parse_args()
    checkouts = ([("before", args.baseline, args.baseline_python)] if args.baseline else []) + [
        ("this checkout", ROOT, sys.executable)]
    checkouts = checkouts * args.repeats
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
    print("| code | cold (empty cache) | warm (cache filled) |\n|---|---|---|")
    for label, checkout, python in checkouts:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            cold = run_report(checkout, cache, Path(tmp) / "cold", python)
            warm = run_report(checkout, cache, Path(tmp) / "warm", python)
        print(f"| {label} | {cold:.1f} s | {warm:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
