"""How much memory one block of replicates takes, per estimator, against what it declares.

For every cell of the report's grid (default problems x every estimator x N = 1 ... 100) at
R replicates, in this one process at one torch thread, the peak resident memory of computing the
cell's estimates (``gradnoise.engine.replicate_estimates``; ``/proc/self/status`` VmHWM, reset
before each cell through ``/proc/self/clear_refs``, glibc's default ``malloc`` so that a block's
freed temporaries go back to the system) over the cell's sample-sized elements at once,
``min(R, block) x B x (E + P)`` (``gradnoise.engine.cell_bytes``). Prints, per estimator, the
cell (of those that took at least --min-mib) where the bytes per element measured come closest
to, or go furthest over, what the estimator declares, ``estimator.sample_bytes(problem, N)``,
which the engine's memory check and the local workers' scheduling use; exits 1 when a
measurement exceeds its declaration::

    python benchmarks/scripts/block_memory.py                 # R = 10^4, about 4 min on 2 cores
    python benchmarks/scripts/block_memory.py --replicates 2000 --estimator relax
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import gradnoise as gn  # noqa: E402
from gradnoise import engine  # noqa: E402


def status_mib(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicates", type=int, default=10_000)
    ap.add_argument("--budget", type=int, action="append", help="default: 1 3 10 30 100 (the report's)")
    ap.add_argument("--estimator", action="append", help="default: every registered estimator")
    ap.add_argument("--problem", action="append", help="default: the default sweep's problems")
    ap.add_argument("--min-mib", type=float, default=32.0, help="cells below this peak are not compared (default 32)")
    ap.add_argument("--cells", action="store_true", help="also print every cell's measurement")
    args = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        raise SystemExit("needs Linux (/proc/self/clear_refs)")
    torch.set_num_threads(1)
    grid = engine.cells(args.problem or gn.problem_names(default_sweep=True), args.estimator or gn.estimator_names(),
                        sorted(args.budget or [1, 3, 10, 30, 100]), on_invalid="skip", skipped=[])
    for problem, estimator, n in grid:          # truths first: an oracle's blocks are not a cell's
        problem.true_gradient(estimator.objective(n))
    worst: dict[str, tuple[float, float, int, str]] = {}     # name -> (measured - declared, measured, declared, where)
    for problem, estimator, n in grid:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                          # VmHWM := VmRSS
        before = status_mib("VmRSS:")
        estimates, _ = engine.replicate_estimates(problem, estimator, n, args.replicates, 0)
        peak = status_mib("VmHWM:") - before
        held = sum(t.numel() * t.element_size() for t in estimates.values())     # the R x P estimates
        del estimates
        _, block = engine.cell_bytes(problem, args.replicates, estimator, n)
        declared = estimator.sample_bytes(problem, n)
        elements = block / declared
        per = (peak * 2**20 - held) / elements if elements else 0.0
        if args.cells:
            print(f"{estimator.name:20s} {per:7.1f} {declared:5d}  {problem.spec} N = {n}: "
                  f"{peak:.0f} MiB for {elements:.3g} elements", flush=True)
        if peak >= args.min_mib and per - declared > worst.get(estimator.name, (-float("inf"),))[0]:
            worst[estimator.name] = (per - declared, per, declared,
                                     f"{problem.spec} N = {n}: {peak:.0f} MiB for {elements:.3g} elements")
    failed = False
    print(f"R = {args.replicates}, cells of at least {args.min_mib:g} MiB; bytes per sample element, measured "
          f"and declared (estimator.sample_bytes) where they come closest")
    for name in sorted(worst, key=lambda k: -worst[k][1]):
        _, per, declared, where = worst[name]
        over = per > declared
        failed |= over
        print(f"{name:20s} {per:7.1f} {declared:5d}{'  EXCEEDS' if over else ''}   ({where})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
