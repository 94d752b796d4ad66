"""Command-line options shared by the commands that run grids: ``--workers``, ``--scheduler``,
``--threads`` (``gradnoise sweep``, ``report``, ``study``, ``train``).

Without ``--workers``/``--scheduler`` the cells run in this process, one after the other, and
Dask is not imported. See docs/scaling.md for clusters of several machines.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from gradnoise import cluster
from gradnoise.cluster import estimated_seconds, open_client, piloted_seconds

#: seconds to wait for a scheduler given with --scheduler before giving up with one error
CONNECT_TIMEOUT = 5.0


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--workers N``, ``--scheduler ADDRESS`` and ``--threads T`` to ``p``."""
    g = p.add_argument_group("parallel runs (docs/scaling.md)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="run the cells on N local worker processes forked from this one (a Dask "
                   "LocalCluster with --threads > 1 or on CUDA; $GRADNOISE_LOCAL_WORKERS=dask for it always); "
                   "same numbers, bitwise; use about one per core")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the cells on a running Dask cluster, e.g. tcp://HOST:8786 (started with "
                   "`dask scheduler` and `dask worker tcp://HOST:8786 --nthreads 1` on each machine)")
    g.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch intra-op threads per cell (default: %(default)s, which holds on a busy "
                   "machine; recorded in the column 'threads')")


def check_cluster_arguments(args: argparse.Namespace) -> None:
    """Before any work: ``--threads`` >= 1, ``--workers`` >= 1, not both ``--workers`` and
    ``--scheduler`` (one ``ValueError`` each)."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("give either --workers N (start a local cluster) or --scheduler ADDRESS "
                         "(use a running one), not both")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1 (worker processes to start), got {args.workers}; "
                         f"leave it out to run in this process")


@contextlib.contextmanager
def client_from_args(args: argparse.Namespace, grid=None, replicates: int | None = None):
    """What the options ask to run the cells on (:func:`gradnoise.cluster.open_client`): ``None``
    (this process), local workers (``--workers N``: forked from this process,
    :class:`gradnoise.pool.LocalPool`, or a Dask ``LocalCluster`` where forking is not safe) or a
    running Dask cluster (``--scheduler``), closed afterwards; bad combinations and an unreachable
    scheduler are one ``ValueError`` each.

    Given the ``grid`` and ``replicates`` it will run, ``--workers`` on a grid too small to pay off
    (:func:`gradnoise.cluster.estimated_seconds`, and where that low estimate is short,
    :func:`gradnoise.cluster.piloted_seconds`, which times a few replicates of each problem and
    estimator, below :data:`~gradnoise.cluster.MIN_LOCAL_SECONDS` for forked workers,
    :data:`~gradnoise.cluster.MIN_CLUSTER_SECONDS` for a Dask cluster) runs it in this process
    instead, with the same numbers, and says so in one line on stderr; ``--scheduler`` is always
    used."""
    check_cluster_arguments(args)
    device = getattr(args, "device", "cpu")
    kind = cluster.local_kind(args.threads, device)         # decided once: forked workers or Dask
    if args.workers is not None and grid is not None and replicates is not None:
        enough = cluster.MIN_LOCAL_SECONDS if kind == "fork" else cluster.MIN_CLUSTER_SECONDS
        seconds = estimated_seconds(grid, replicates)
        if seconds < enough:      # a low estimate: time a few replicates before running alone
            seconds = piloted_seconds(grid, replicates, enough=enough, threads=args.threads)
        if seconds < enough:
            print(f"--workers {args.workers}: this grid is about {seconds:.2g} s of work in one process, too little "
                  f"to pay off starting workers; running it in this process (the same numbers)", file=sys.stderr)
            yield None
            return
    with open_client(args.workers, args.scheduler, timeout=CONNECT_TIMEOUT, threads=args.threads,
                     device=device, local=kind) as client:
        yield client
