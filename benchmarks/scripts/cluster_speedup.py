"""Sequential sweep vs the same grid on a local Dask cluster, measured in one run.

    python benchmarks/scripts/cluster_speedup.py [--workers 2] [--replicates 1000]

Not an asv benchmark (this folder has no ``__init__.py``). It prints:

1. the wall time of a grid of >= 30 cells (Gaussian and linear-Gaussian-VAE problems x three
   estimators x N = 10, 100, 1000) computed sequentially in this process at 1 torch thread, and
   on a ``LocalCluster`` of ``--workers`` single-threaded processes (``gradnoise.cluster``),
   the speed-up, and whether every number but ``seconds_per_estimate`` is bitwise the same;
   the cluster's start-up (processes, imports, first task) is timed separately;
2. the Dask overhead per cell, from a grid of tiny cells (R=8, N=1..200 on gaussian-quadratic):
   the extra worker-seconds a cell costs on the cluster, ``(wall x workers - sequential wall) /
   cells``, as ``map_cells`` batches small cells and with one task per cell: cells much longer
   than the per-task overhead gain the full factor of the workers;
3. the load average before and after (the machine may be shared: a busy machine lowers the
   speed-up, as the workers then share cores with other work).

Oracle truths are computed before the timings (they are cached on disk and shared by workers).
"""
from __future__ import annotations

import argparse
import os
import time

import pandas as pd

import gradnoise as gn
from gradnoise.cluster import map_calls, map_cells, open_client, run_cells
from gradnoise.engine import torch_threads

PROBLEMS = ["gaussian-quadratic", "gaussian-exp", "gaussian-cos", "gaussian-quadratic-nd", "linear-gaussian-vae"]
ESTIMATORS = ["reinforce", "reinforce-loo", "reparam"]
BUDGETS = [10, 100, 1000]
STAT_COLUMNS = [c for c in gn.COLUMNS if c != "seconds_per_estimate"]


def sequential(grid, replicates: int) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    with torch_threads(1):
        rows = [r for p, e, n in grid for r in gn.measure_cell(p, e, n, replicates, 0)]
    return time.perf_counter() - start, pd.DataFrame(rows, columns=gn.COLUMNS)


def on_cluster(client, grid, replicates: int) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    by_cell = dict(map_cells(client, grid, replicates, 0))
    rows = [r for i in range(len(grid)) for r in by_cell[i]]
    return time.perf_counter() - start, pd.DataFrame(rows, columns=gn.COLUMNS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--replicates", type=int, default=1000)
    args = ap.parse_args()
    grid = gn.engine.cells(PROBLEMS, ESTIMATORS, BUDGETS)
    small, reparam = gn.make_problem("gaussian-quadratic"), gn.get_estimator("reparam")
    tiny = [(small, reparam, n) for n in range(1, 201)]
    for p, e, n in grid + tiny[:1]:
        p.true_gradient(e.objective(n))
    print(f"{len(grid)} cells, R={args.replicates}; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start; torch 1 intra-op thread per process")
    t_seq, seq = sequential(grid, args.replicates)
    t_tiny_seq, _ = sequential(tiny, 8)
    start = time.perf_counter()
    with open_client(workers=args.workers) as client:
        client.wait_for_workers(args.workers)
        on_cluster(client, tiny[:2 * args.workers], 8)               # workers import and warm up
        t_start = time.perf_counter() - start
        t_par, par = on_cluster(client, grid, args.replicates)
        t_tiny_par, _ = on_cluster(client, tiny, 8)
        start = time.perf_counter()
        dict(map_calls(client, run_cells, [(small, reparam, [(i, n)], 8, 0) for i, (_, _, n) in enumerate(tiny)]))
        t_tiny_tasks = time.perf_counter() - start
    same = seq[STAT_COLUMNS].equals(par[STAT_COLUMNS])
    print(f"sequential: {t_seq:.2f} s; {args.workers} workers: {t_par:.2f} s (+ {t_start:.1f} s cluster start-up "
          f"and warm-up); speed-up {t_seq / t_par:.2f}x ({t_seq / (t_par + t_start):.2f}x with the start-up); "
          f"numbers bitwise identical: {same}")
    overhead = (t_tiny_par * args.workers - t_tiny_seq) / len(tiny)
    per_task = (t_tiny_tasks * args.workers - t_tiny_seq) / len(tiny)
    print(f"tiny cells ({len(tiny)}, R=8): sequential {1e3 * t_tiny_seq / len(tiny):.2f} ms/cell; on "
          f"{args.workers} workers {1e3 * t_tiny_par / len(tiny):.2f} ms/cell of wall time, Dask overhead "
          f"{1e3 * overhead:.1f} worker-ms per cell as batched by map_cells; one task per cell: "
          f"{1e3 * t_tiny_tasks / len(tiny):.2f} ms/cell of wall time, overhead {1e3 * per_task:.1f} worker-ms per task")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
