"""Why two workers use more CPU seconds than one process for the same cells: the same cells
computed alone, then in two processes at once, on this machine.

Runs a group of cells (``--cells vae``: linear-gaussian-vae x reinforce, reinforce-delta, iwae,
measure-valued at N = 30, 100; ``nd``: gaussian-quadratic-nd's first 12 cells at N = 30, 100; R =
10^4) in a fresh process at one torch thread with glibc keeping freed memory (as a command's
cells run), then the same in two such processes started together, and prints each process's
CPU seconds: where two at once take longer per process, the cells compete for something the
cores share (memory bandwidth, the last-level cache), not for the cores::

    python benchmarks/scripts/contention.py --cells vae --cells nd
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(1)
import gradnoise as gn
from gradnoise import cluster, engine
cluster.keep_freed_memory()
which = sys.argv[1]
grid = engine.cells(gn.problem_names(default_sweep=True), gn.estimator_names(), [30, 100], on_invalid="skip", skipped=[])
if which == "vae":
    grid = [c for c in grid if c[0].spec.startswith("linear-gaussian-vae")
            and c[1].name in ("reinforce", "reinforce-delta", "iwae", "measure-valued")]
else:
    grid = [c for c in grid if c[0].spec.startswith("gaussian-quadratic-nd")][:12]
for p, e, n in grid:
    p.true_gradient(e.objective(n))
r0 = resource.getrusage(resource.RUSAGE_SELF)
for p, e, n in grid:
    estimates, _ = engine.replicate_estimates(p, e, n, 10_000, 0)
    engine.summarise_estimates(p, e, n, 0, estimates, 0.0)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
"""


def run(cells: str, copies: int) -> list[float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, cells], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    out = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a child failed: {out}")
    return [float(o.split()[-1]) for o in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", action="append", choices=["vae", "nd"], help="default: both")
    args = ap.parse_args(argv)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; CPU seconds of the cells (imports excluded)")
    for cells in args.cells or ["vae", "nd"]:
        alone = run(cells, 1)[0]
        together = run(cells, 2)
        print(f"{cells}: alone {alone:.2f} s; two at once {together[0]:.2f} s and {together[1]:.2f} s "
              f"({max(together) / alone:.2f}x, {min(together) / alone:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
