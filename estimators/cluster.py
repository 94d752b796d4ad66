r"""Cells on a Dask cluster: the engine's rows, computed by Dask workers, in any completion order.

Every cell (problem, estimator, N) of a grid is independent and seeded by its own
:func:`~gradnoise.engine.cell_seed`, and within a cell every block of replicates by its own
:func:`~gradnoise.engine.block_seed`, so a cell, or a run of its blocks, can run in any process,
on any machine, in any order, and give the same numbers. :func:`map_cells` cuts a grid into Dask
tasks (:func:`plan`: consecutive small cells batched, a large cell cut into chunks of blocks that
run on different workers and are gathered and summarised in the client), submits them to a
``distributed.Client`` and yields ``(index in the grid, rows)`` as cells complete; callers put
the rows back in grid order (:func:`gradnoise.engine.measure`,
:func:`gradnoise.analysis.sweep.sweep_to_csv`).

What travels, and what runs where:

* each distinct problem and estimator object is serialised once on the client with
  ``cloudpickle`` (so bring-your-own problems with lambdas or local functions travel by value)
  and becomes one small Dask task that rebuilds it on a worker; cells depend on that task, so a
  worker keeps one copy per problem (with its in-memory truths) however many cells it runs, and
  a lost copy is rebuilt by Dask from the task's bytes. An object ``cloudpickle`` cannot
  serialise, or a worker cannot rebuild (a module missing there), is one error naming it;
* the plugins this process loaded (``--plugin``, ``$GRADNOISE_PLUGINS``, entry points:
  :mod:`gradnoise.plugins`) are imported by every worker, by module name or file path, before any
  object is rebuilt there (:func:`check_plugins`, :func:`rebuild`); a worker that cannot import
  one is one error naming the worker and the plugin;
* a cell runs :func:`run_cell` on a worker (which first undoes the malloc setting Dask's nanny
  gives its workers, seven times slower for large tensors, and glibc's default, which returns
  every large tensor to the system: :func:`keep_freed_memory`): ``measure_cell`` at ``threads`` torch intra-op
  threads (default 1), one cell at a time per worker process (a process-wide lock: torch's random
  generator and thread count are global to the process, so two cells in threads of one process
  would share them); the rows (a few hundred bytes per parameter) come back to the client;
* oracle truths and trained digits checkpoints are read from, or computed once into, the cache
  folder ``$GRADNOISE_CACHE`` of the worker's machine (:func:`gradnoise.io.compute_once`).

A worker that dies mid-cell (killed, out of memory) loses only that attempt (of a large cell:
only the chunk it was computing, as finished chunks are fetched and released at once): the
scheduler reruns the task on another worker, up to ``distributed.scheduler.allowed-failures`` times
(Dask's default 3), and the result is the same because the cell's seed is. A cell raising an
error (a NaN cost) is not retried: it fails the same way everywhere.

Dask is imported only here, and only when a client is used: ``import estimators`` and runs
without a client pay nothing for it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
import warnings
from typing import Iterator, Sequence

from .base import GradientEstimator, Problem
from . import provenance
from .engine import (MAX_ELEMENTS, blocks, cell_bytes, cell_cost_evals, check_threads, chunk_estimates, chunks, gather_chunks, measure_cell,
                     replicate_estimates, summarise_estimates, torch_threads)

#: one cell at a time per process (see the module docstring)
_CELL_LOCK = threading.Lock()


#: glibc ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: free memory at the top of the heap that glibc keeps for the next allocation (not returned to
#: the system) once :func:`keep_freed_memory` has run: more than a block's temporaries
TRIM_THRESHOLD = 2**30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Make glibc reuse the memory a cell's blocks free, in this process; True when it did.

    By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a
    fresh ``mmap`` and returns it with ``munmap`` when freed, so each block of a large cell
    page-faults its temporaries in again, and the kernel zeroes them again: measured here, the
    measure-valued gradient on gaussian-quadratic-nd at N = 1000 (20 blocks of 139 replicates, one
    thread) spent 2-4 of its 7-9 s in the kernel, 1.2-2.4 million minor page faults. With every
    allocation from the heap (``M_MMAP_MAX`` 0) and up to :data:`TRIM_THRESHOLD` of freed memory
    kept at its top (``M_TRIM_THRESHOLD``) the same blocks took 5.2 s, 0.1 s in the kernel, 70,000
    faults; the numbers are the same (torch aligns every tensor to 64 bytes wherever it lives).
    The cost: the process keeps its peak memory until it exits. This also overrides the
    ``MALLOC_TRIM_THRESHOLD_=65536`` that Dask's nanny sets for its workers (which made every
    tensor above 128 KiB an ``mmap``: a grid of gaussian-quadratic-nd and linear-gaussian-vae cells
    7x slower).

    A process-wide setting, so it is made only where gradnoise owns the process: by the command
    line (``gradnoise ...``, whose forked local workers inherit it) and by every cell task on a
    worker (:func:`cell_context`), never at import nor by ``gn.measure`` in a user's own process
    (``tests/test_benchmarks.py`` checks the import). Not glibc (musl, macOS): nothing done.
    """
    from .pool import glibc

    libc = glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@contextlib.contextmanager
def cell_context(threads: int | None = 1):
    """What every cell task holds on a worker: the process's cell lock, ``threads`` intra-op
    threads, and glibc keeping freed memory for the next block (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    with _CELL_LOCK, torch_threads(threads):
        yield


def run_in_cell(threads: int | None, function, *args, **kwargs):
    """``function(*args, **kwargs)`` as a cell task: under :func:`cell_context` (the process's cell lock,
    ``threads`` intra-op threads, malloc restored). Every task that computes a cell on a worker is
    one: :func:`run_cell` (sweeps, ``measure``) and a study's cells
    (:func:`gradnoise.analysis.studies.base.study_cells`)."""
    with cell_context(threads):
        return function(*args, **kwargs)


def run_cell(problem: Problem, estimator: GradientEstimator, budget: int, replicates: int, seed: int,
             threads: int | None = 1, max_elements: int = MAX_ELEMENTS) -> list[dict]:
    """One cell's rows (:func:`~gradnoise.engine.measure_cell`), computed in this process at
    ``threads`` intra-op threads (:func:`run_in_cell`); the task a Dask worker runs."""
    return run_in_cell(threads, measure_cell, problem, estimator, budget, replicates, seed, max_elements=max_elements)


def serialise(obj, what: str) -> bytes:
    """``cloudpickle`` bytes of ``obj``, or one ``ValueError`` saying that ``what`` cannot be sent."""
    import cloudpickle

    try:
        return cloudpickle.dumps(obj)
    except Exception as err:  # pickling raises TypeError, PicklingError, AttributeError, ...
        raise ValueError(
            f"{what} cannot be sent to the Dask workers: cloudpickle cannot serialise it "
            f"({type(err).__name__}: {err}); keep its functions and attributes picklable (no open "
            f"files, locks or generators), or measure it without a client (--workers/--scheduler)"
        ) from None


def load_plugins(specs: Sequence[str]) -> str | None:
    """On a worker: import the client's plugins (:func:`gradnoise.plugins.load`, once per process);
    None, or one line naming the plugin that cannot be imported here and why."""
    from . import plugins

    for spec in specs:
        try:
            plugins.load(spec)
        except Exception as err:     # noqa: BLE001 -- said to the client in one line
            return f"{err}".replace("failed to import", "cannot be imported on this worker", 1)
    return None


def check_plugins(client, specs: Sequence[str]) -> None:
    """One ``ValueError`` naming the first worker that cannot import one of this process's plugins
    (``specs``: :func:`gradnoise.plugins.specs`), before any cell is sent; workers that join later
    import them at the start of their first task (:func:`rebuild`)."""
    if not specs:
        return
    failed = {worker: why for worker, why in client.run(load_plugins, list(specs)).items() if why}
    if failed:
        worker, why = sorted(failed.items())[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise ValueError(f"Dask worker {worker}{more}: {why}; install the plugin (or put the file at the "
                         f"same path) on every worker")


def rebuild(blob: bytes, what: str, plugin_specs: Sequence[str] = ()):
    """On a worker: the object serialised by :func:`serialise` (after importing the client's
    plugins, :func:`load_plugins`: its classes and functions may live in them), or one error naming it."""
    import cloudpickle

    why = load_plugins(plugin_specs)
    if why:
        raise RuntimeError(f"{what} could not be rebuilt on a Dask worker: {why}")
    try:
        return cloudpickle.loads(blob)
    except Exception as err:
        raise RuntimeError(
            f"{what} could not be rebuilt on a Dask worker ({type(err).__name__}: {err}); the worker "
            f"needs the same packages (and versions) as the client"
        ) from None


#: sample-sized elements (N x R x (event + parameter numel)) below which consecutive cells of
#: one problem and estimator share a Dask task, so that a task's overhead (measured: a few
#: worker-ms) is small next to its work; about 30 ms of computing at one thread
BATCH_ELEMENTS = 2**21


def run_chunk(problem: Problem, estimator: GradientEstimator, budget: int, replicates: int, seed: int,
              start: int, stop: int, threads: int | None = 1, max_elements: int = MAX_ELEMENTS):
    """Blocks ``start .. stop - 1`` of one cell (:func:`~gradnoise.engine.chunk_estimates`:
    ``(first replicate, {name: (rows, *shape)}, seconds)``), computed in this process at ``threads``
    intra-op threads (:func:`run_in_cell`); the task a Dask worker runs for a chunk of a large cell."""
    return run_in_cell(threads, chunk_estimates, problem, estimator, budget, replicates, seed, start, stop,
                       max_elements=max_elements)


def run_cells(problem: Problem, estimator: GradientEstimator, budgets: Sequence[tuple[int, int]], replicates: int,
              seed: int, threads: int | None = 1, max_elements: int = MAX_ELEMENTS) -> list[tuple[int, list[dict]]]:
    """``(index, rows)`` of the cells ``(index, N)`` of one problem and estimator, one after the
    other (:func:`run_cell`); the task a Dask worker runs for a batch of small cells."""
    return [(i, run_cell(problem, estimator, n, replicates, seed, threads, max_elements)) for i, n in budgets]


def batches(grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int, workers: int) -> list[tuple]:
    """``grid`` cut into ``(problem, estimator, [(index, N), ...])``: consecutive cells of one
    problem and estimator, closed once they hold :data:`BATCH_ELEMENTS` of work or a quarter of
    the grid's share per worker (so that every worker still gets several tasks)."""
    cap = max(1, math.ceil(len(grid) / (4 * max(1, workers))))
    out: list[tuple] = []
    work = 0
    for i, (problem, estimator, n) in enumerate(grid):
        last = out[-1] if out else None
        if (last is None or last[0] is not problem or last[1] is not estimator or work >= BATCH_ELEMENTS
                or len(last[2]) >= cap):
            last = (problem, estimator, [])
            out.append(last)
            work = 0
        last[2].append((i, n))
        work += n * replicates * (problem.event_numel() + problem.param_numel())
    return out


#: a grid's work is cut into about this many tasks per worker (so that the last tasks to finish
#: are short next to the whole: the workers end within about a task of each other). Measured on
#: 2 quiet cores, `--workers 2` on cluster_speedup.py's 36-cell grid (R = 20,000), whole command:
#: 44.0 s at 4, 37.6-38.4 s at 16, 37.0 s at 32, 38.4 s at 64 (the sequential command 63 s)
TASKS_PER_WORKER = 16


def cell_work(problem: Problem, estimator: GradientEstimator, budget: int, replicates: int) -> int:
    """A cell's work in sample-sized elements, what :func:`plan` balances:
    ``R x (cost_evals_for(problem, N) + amortised_evals(N)) x (E + P)``
    (:func:`~gradnoise.engine.cell_cost_evals` times the event and parameter elements a sample
    touches): the measure-valued gradient's 2 N D evaluations count as such, not as N."""
    return cell_cost_evals(problem, estimator, budget, replicates) * (problem.event_numel() + problem.param_numel())


#: :func:`estimated_seconds`' model of one cell at one thread: a fixed cost (building, checking,
#: summarising: 4-70 ms measured here, the bootstrap interval alone 7 ms a row at R = 200), then
#: per element of work (:func:`cell_work`: 1-10 ns for the Gaussian and linear-Gaussian-VAE cells
#: at N = 1000); rough, on the low side, so that it errs towards a cluster
CELL_SECONDS, ELEMENT_SECONDS = 0.02, 1e-9

#: below this estimated sequential time, ``--workers`` runs the grid in this process (and says so):
#: starting 2 local workers costs about 2 s on 2 quiet cores (each imports torch and gradnoise),
#: and each task a few ms, more than such a grid gains
MIN_CLUSTER_SECONDS = 3.0

#: the same for forked local workers (:class:`gradnoise.pool.LocalPool`), which start in
#: milliseconds: below it the forks, the results' pickling and the estimate's error cost more
#: than a second core gains
MIN_LOCAL_SECONDS = 1.0


def estimated_seconds(grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int) -> float:
    """A rough lower estimate of ``grid``'s time in one process at one thread:
    ``sum(CELL_SECONDS + ELEMENT_SECONDS x cell_work)``; what decides whether a local cluster pays."""
    return _seconds([cell_work(p, e, n, replicates) for p, e, n in grid])


def _seconds(work: Sequence[int], rate: float = ELEMENT_SECONDS) -> float:
    """Cells of ``work`` elements each at ``rate`` seconds an element: ``sum(CELL_SECONDS + rate x work)``."""
    return sum(CELL_SECONDS + rate * w for w in work)


#: replicates of the largest cell of each problem and estimator that :func:`piloted_seconds` times
PILOT_REPLICATES = 32
#: the most seconds :func:`piloted_seconds` spends on pilots before it trusts the low estimate
PILOT_SECONDS = 0.5


def piloted_seconds(grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int, *,
                    enough: float, threads: int | None = 1) -> float:
    """:func:`estimated_seconds` with each problem and estimator's time per element of work
    measured, for a grid the low estimate puts under ``enough`` seconds: the elements of
    :func:`cell_work` cost 1-10 ns for most estimators but 50-130 ns for RELAX and 250-450 ns for
    Gumbel-Rao (measured at R = 10^4 on the report's grid), which the low estimate would run in
    one process. For each (problem, estimator), largest work first, its largest cell is computed at
    ``min(R, PILOT_REPLICATES)`` replicates (at ``threads``; the estimates are thrown away, no
    number changes: every block draws from its own seed) and its cells estimated at that rate
    (:data:`CELL_SECONDS` a cell plus rate x work; the pilot's fixed costs make it high at small
    R, which errs towards workers). Returns as soon as the estimate reaches ``enough``; after
    :data:`PILOT_SECONDS` of pilots the pairs not yet timed keep their low estimate. A pilot
    that fails (a cost that returns NaN) keeps its pair's low estimate: the run reports it."""
    pairs: dict[tuple[int, int], list[tuple[Problem, GradientEstimator, int]]] = {}
    for problem, estimator, n in grid:
        pairs.setdefault((id(problem), id(estimator)), []).append((problem, estimator, n))
    work = {key: [cell_work(p, e, n, replicates) for p, e, n in cells] for key, cells in pairs.items()}
    low = {key: _seconds(work[key]) for key in pairs}
    total = sum(low.values())
    spent = 0.0
    for key in sorted(pairs, key=lambda k: -sum(work[k])):
        if total >= enough or spent >= PILOT_SECONDS:
            break
        cells = pairs[key]
        largest = max(range(len(cells)), key=lambda k: work[key][k])
        problem, estimator, n = cells[largest]
        r = min(replicates, PILOT_REPLICATES)
        start = time.perf_counter()
        try:
            with torch_threads(threads):
                replicate_estimates(problem, estimator, n, r, 0)
        except Exception:                     # noqa: BLE001 -- the run itself reports it
            spent += time.perf_counter() - start
            continue
        took = time.perf_counter() - start
        spent += took
        rate = took / max(1, cell_work(problem, estimator, n, r))
        total += max(0.0, _seconds(work[key], max(ELEMENT_SECONDS, rate)) - low[key])
    return total


def plan(grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int, workers: int) -> list[tuple]:
    """``grid``'s tasks for ``workers`` workers, largest first: ``("cells", problem, estimator,
    [(index, N), ...])`` for small cells batched as :func:`batches` does, and ``("chunk", index,
    start, stop)`` for the chunks of a large cell (blocks ``start .. stop - 1``,
    :func:`~gradnoise.engine.chunks`).

    A cell is large when its work (:func:`cell_work`) exceeds a task's share,
    ``max(BATCH_ELEMENTS, grid's work / (TASKS_PER_WORKER x workers))``; it is cut into about
    ``work / share`` chunks of consecutive blocks (at most one per block), so that one large cell
    no longer caps the speed-up: the numbers do not depend on the cut (blocks are seeded by index).
    A large cell of one block is one ``"cells"`` task: a worker summarises it, where a chunk's
    estimates would come back to be summarised in this process."""
    workers = max(1, int(workers))
    work = [cell_work(p, e, n, replicates) for p, e, n in grid]
    share = max(BATCH_ELEMENTS, sum(work) / (TASKS_PER_WORKER * workers))
    tasks: list[tuple[float, tuple]] = []
    small = [i for i, w in enumerate(work) if w <= share]
    large = [i for i, w in enumerate(work) if w > share]
    for problem, estimator, cells in batches([grid[i] for i in small], replicates, workers):
        cells = [(small[j], n) for j, n in cells]
        tasks.append((sum(work[i] for i, _ in cells), ("cells", problem, estimator, cells)))
    for i in large:
        problem, estimator, n = grid[i]
        cut = chunks(problem, estimator, n, replicates, math.ceil(work[i] / share))
        if len(cut) == 1:       # one block: the whole cell, summarised where it runs, not here
            tasks.append((work[i], ("cells", problem, estimator, [(i, n)])))
            continue
        tasks.extend((work[i] * (stop - start) / cut[-1][1], ("chunk", i, start, stop)) for start, stop in cut)
    tasks.sort(key=lambda task: -task[0])         # largest first: the short ones fill the end
    return [task for _, task in tasks]


def task_bytes(task: tuple, grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int) -> int:
    """The bytes a task of :func:`plan` holds at once (:func:`~gradnoise.engine.cell_bytes`): its
    largest cell's estimates and one block, or a chunk's rows of estimates and one block."""
    if task[0] == "cells":
        return max(sum(cell_bytes(task[1], replicates, task[2], n)) for _, n in task[3])
    problem, estimator, n = grid[task[1]]
    parts = blocks(problem, estimator, n, replicates)[task[2]:task[3]]
    rows = parts[-1][1] + parts[-1][2] - parts[0][1]
    return sum(cell_bytes(problem, rows, estimator, n))


def map_cells(
    client, grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int, seed: int = 0,
    *, threads: int | None = 1, max_elements: int = MAX_ELEMENTS, workers: int | None = None,
) -> Iterator[tuple[int, list[dict]]]:
    """``(index, rows)`` of each cell of ``grid`` as it completes on ``client``'s workers.

    The rows are those :func:`~gradnoise.engine.measure_cell` gives sequentially at the same
    ``threads`` (bitwise, every column but ``seconds_per_estimate``). The grid is cut into tasks
    by :func:`plan` for ``workers`` workers (default: those connected now): small cells travel in
    batches (:func:`batches`), a large cell as chunks of its blocks (:func:`run_chunk`) whose
    estimates come back here as each finishes and are gathered in replicate order and summarised
    in this process (:func:`~gradnoise.engine.gather_chunks`,
    :func:`~gradnoise.engine.summarise_estimates`, at ``threads``): a worker that dies loses only the chunk
    it was computing, which Dask reruns elsewhere. Closing the generator (an interrupt, an error
    in a cell) cancels the tasks not yet finished.
    """
    check_threads(threads)
    tasks = plan(grid, replicates, workers or len(client.nthreads()))
    calls = [(run_cells, (t[1], t[2], t[3], replicates, seed, threads, max_elements)) if t[0] == "cells" else
             (run_chunk, (*grid[t[1]], replicates, seed, t[2], t[3], threads, max_elements)) for t in tasks]
    finished = _map_functions(client, calls, [task_bytes(t, grid, replicates) for t in tasks])
    # the rows' code_version as this process names it: a user's function sent by value hashes the
    # same on a worker, but a worker's own view of it is not what a resumed sweep here compares
    versions: dict[tuple[int, int], str] = {}
    for problem, estimator, _ in grid:
        key = (id(problem), id(estimator))
        if key not in versions:
            versions[key] = provenance.cell_version(problem, estimator).text
    expected: dict[int, int] = {}
    for task in tasks:
        if task[0] == "chunk":
            expected[task[1]] = expected.get(task[1], 0) + 1
    pieces: dict[int, list] = {}
    try:
        for k, done in finished:
            if tasks[k][0] == "chunk":
                index = tasks[k][1]
                pieces.setdefault(index, []).append(done)
                if len(pieces[index]) < expected[index]:
                    continue
                problem, estimator, n = grid[index]
                estimates, seconds = gather_chunks(problem, estimator, n, replicates, pieces.pop(index))
                with torch_threads(threads):        # the column 'threads' records the cell's count
                    rows = summarise_estimates(problem, estimator, n, seed, estimates, seconds,
                                               version=versions[(id(problem), id(estimator))])
                done = [(index, rows)]
            for index, rows in done:
                problem, estimator, _ = grid[index]
                for row in rows:
                    row["code_version"] = versions[(id(problem), id(estimator))]
                yield index, rows
    finally:
        finished.close()


def map_calls(client, function, calls: Sequence[tuple]) -> Iterator[tuple[int, object]]:
    """``(index, function(*calls[index]))`` as each call completes on ``client``'s workers.

    ``function`` must be importable on the workers (a module-level function of an installed
    package). Arguments that are :class:`Problem` or :class:`GradientEstimator` objects are
    serialised once each (:func:`serialise`) and rebuilt once per worker that needs them; the
    others travel with each call. Closing the generator cancels the calls not yet finished.
    """
    return _map_functions(client, [(function, call) for call in calls])


def _map_functions(client, calls: Sequence[tuple], memory: Sequence[float] | None = None) -> Iterator[tuple[int, object]]:
    """:func:`map_calls` for ``(function, arguments)`` pairs, each call its own function;
    ``memory``, the bytes each holds at once, schedules forked local workers
    (:class:`gradnoise.pool.MemoryBudget`; a Dask cluster manages its own workers' memory)."""
    from .pool import LocalPool

    if isinstance(client, LocalPool):        # forked from this process: same code, plugins, objects
        return client.map(calls, memory)
    from distributed import as_completed

    from . import plugins

    check_workers(client)
    specs = plugins.specs()
    check_plugins(client, specs)
    sent: dict[int, object] = {}

    def send(arg):
        if isinstance(arg, (Problem, GradientEstimator)):
            if id(arg) not in sent:
                what = f"problem {arg.spec!r}" if isinstance(arg, Problem) else f"estimator {arg.name!r}"
                sent[id(arg)] = client.submit(rebuild, serialise(arg, what), what, specs, pure=False)
            return sent[id(arg)]
        return arg

    # earlier calls first (priority): map_cells lists its largest tasks first
    futures = [client.submit(function, *map(send, call), pure=False, priority=-k)
               for k, (function, call) in enumerate(calls)]
    index = {future.key: i for i, future in enumerate(futures)}
    return _as_they_complete(client, futures, index, list(sent.values()), as_completed)


def check_workers(client) -> None:
    """One ``ValueError`` when a connected worker runs other gradnoise code than this process
    (another :func:`~gradnoise.provenance.code_version`): its rows would carry numbers of other
    code. Workers that join later are not checked here; each row records its code version."""
    from .provenance import code_version

    try:
        versions = client.run(code_version)
    except Exception as err:   # a worker without gradnoise fails to unpickle the function
        raise ValueError(f"cannot ask the Dask workers for their gradnoise version ({type(err).__name__}: "
                         f"{err}); install the same gradnoise on every worker") from None
    other = {worker: v for worker, v in versions.items() if v != code_version()}
    if other:
        raise ValueError(
            f"{len(other)} of {len(versions)} Dask workers run other gradnoise code than this process "
            f"({code_version()}): " + ", ".join(f"{w} has {v}" for w, v in sorted(other.items()))
            + "; install the same version (and torch) on every machine"
        )


def _as_they_complete(client, futures, index, sent, as_completed):
    """Yield ``(index, result)`` as futures finish, releasing each finished future (so that a worker
    lost later holds nothing the scheduler would recompute: only unfinished tasks are rerun)."""
    waiting = {future.key: future for future in futures}
    finished = as_completed(futures, with_results=True)     # results fetched in batches
    futures.clear()
    try:
        for future, result in finished:
            waiting.pop(future.key, None)
            key = future.key
            del future
            yield index[key], result
    finally:
        pending = [f for f in waiting.values() if not f.done()]
        if pending:
            client.cancel(pending)
        client.cancel(sent)


#: what the forkserver of :func:`open_client`'s local workers imports once, before forking them
FORKSERVER_PRELOAD = ["gradnoise", "gradnoise.cluster", "gradnoise.problems", "distributed"]


def local_start_method() -> str:
    """How :func:`open_client` starts local workers: ``"forkserver"`` where the platform has it
    (Linux), with :data:`FORKSERVER_PRELOAD` imported once in the server, else ``"spawn"``.

    A spawned worker imports torch, scipy and gradnoise itself (each 1-3 s on a quiet core); two
    workers on 2 cores share them with this process. A forkserver imports them once and forks each
    worker from itself, single-threaded (so the fork is safe, unlike a fork of this process, whose
    Dask threads may hold locks: tried, and a worker deadlocked on a stdio lock), and the workers
    share its pages copy-on-write. Measured on 2 cores at load average 6-7 (other jobs), a
    2-worker cluster with one cell run: up in 15.5 s against 26.5 s spawned, 775 MiB of summed PSS
    against 1,009 MiB."""
    import multiprocessing

    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _start_forkserver() -> None:
    """Start this process's forkserver with :data:`FORKSERVER_PRELOAD` (once; later calls and
    Dask's own ``set_forkserver_preload`` find it running and leave it as it is)."""
    import multiprocessing.forkserver

    multiprocessing.forkserver.set_forkserver_preload(FORKSERVER_PRELOAD)
    multiprocessing.forkserver.ensure_running()


def _start_failure(err: Exception) -> str:
    """One line for local Dask workers that failed to start: most often a script without a
    ``__main__`` guard, which each worker process imports again (Python's ``multiprocessing``, whose
    ``forkserver`` and ``spawn`` start methods import the main module again in each child), so that every worker starts a cluster of its own."""
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    hint = (f"; {script} runs again in each worker process: put its code under "
            f"`if __name__ == \"__main__\":` (Python's multiprocessing docs, 'safe importing of main module')"
            if script else "")
    return f"the local Dask workers failed to start ({type(err).__name__}: {err}){hint}"


#: the environment variable that chooses local workers when ``open_client``'s ``local`` is not
#: given: ``auto`` (the default), ``fork`` or ``dask`` (a Dask ``LocalCluster`` as before forked
#: workers existed: the escape hatch, and what ``cluster_speedup.py --dask`` compares against)
LOCAL_WORKERS_VARIABLE = "GRADNOISE_LOCAL_WORKERS"


def local_kind(threads: int | None = 1, device: str | None = "cpu", local: str | None = None) -> str:
    """What :func:`open_client` starts for local workers: ``"fork"`` (a :class:`gradnoise.pool.LocalPool`)
    or ``"dask"`` (a ``LocalCluster``). ``local`` (default ``$GRADNOISE_LOCAL_WORKERS``, else
    ``"auto"``): ``"auto"`` forks where :func:`gradnoise.pool.usable` says it is safe for cells at
    ``threads`` on ``device``; ``"dask"`` chooses Dask; ``"fork"`` insists on forking (one
    ``ValueError`` where it is not safe). Anything else is one ``ValueError``."""
    if local is None:
        local = os.environ.get(LOCAL_WORKERS_VARIABLE) or "auto"
    if local not in ("auto", "fork", "dask"):
        raise ValueError(f"local workers must be 'auto', 'fork' or 'dask' (argument local, or ${LOCAL_WORKERS_VARIABLE}), "
                         f"got {local!r}")
    if local == "dask":
        return local
    from .pool import usable

    if usable(threads, device):
        return "fork"
    if local == "fork":
        raise ValueError(f"forked local workers run cells at one torch thread on the CPU, on Linux (GNU OpenMP and "
                         f"CUDA are not fork-safe), not threads={threads!r} on {device!r}; use "
                         f"{LOCAL_WORKERS_VARIABLE}=dask (or leave it out)")
    return "dask"


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None, *, timeout: float = 5.0,
                threads: int | None = 1, device: str | None = "cpu", local: str | None = None):
    """What runs the block's cells elsewhere: ``workers`` local worker processes, or the running
    Dask scheduler at ``scheduler`` (``tcp://HOST:PORT``, a ``distributed.Client``); ``None`` when
    neither is given (run sequentially, Dask not imported).

    Local workers are, by default (``local="auto"``), a :class:`gradnoise.pool.LocalPool`: forked
    from this process when a map starts, where that is safe (:func:`gradnoise.pool.usable`: cells
    at ``threads`` = 1 on the CPU, on Linux; :func:`local_kind`). Otherwise (or with ``local="dask"``,
    or ``$GRADNOISE_LOCAL_WORKERS=dask``) they are a Dask
    ``LocalCluster`` of ``workers`` single-threaded worker processes, no dashboard and random
    ports, stopped at the end of the block; its processes are forked from a forkserver that
    imported gradnoise once (:func:`local_start_method`; spawned where there is none), with
    ``OMP_NUM_THREADS=1`` (Dask's nanny default); each cell sets its torch thread count itself
    (:func:`run_cell`). Errors, each one ``ValueError``: ``workers`` < 1, both given, an unknown
    ``local``, and a scheduler that does not answer within ``timeout`` seconds.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("give either --workers N (start a local cluster) or --scheduler ADDRESS "
                         "(use a running one), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"--workers must be an integer >= 1 (worker processes to start), got {workers!r}; "
                         f"leave it out to run in this process")
    kind = local_kind(threads, device, local)
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and kind == "fork":
        from .pool import LocalPool

        yield LocalPool(workers)
        return
    import logging

    import dask
    from distributed import Client, LocalCluster

    if workers is not None:
        method = local_start_method()
        if method == "forkserver":
            _start_forkserver()
        with warnings.catch_warnings():
            # without a dashboard the scheduler still serves metrics, on another port when 8787 is taken
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            # and no MALLOC_TRIM_THRESHOLD_ for the workers: it makes large tensors slow (keep_freed_memory)
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                                  "distributed.worker.multiprocessing-method": method}):
                try:
                    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
                except RuntimeError as err:       # "Nanny failed to start."
                    raise ValueError(_start_failure(err)) from None
        with cluster, Client(cluster) as client:
            yield client
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise ValueError(f"--scheduler must be an address such as tcp://HOST:8786, got {scheduler!r}")
    try:
        client = Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(
            f"cannot reach a Dask scheduler at {scheduler!r} within {timeout:g} s ({type(err).__name__}: {err}); "
            f"start one with `dask scheduler` (it prints its address) and workers with "
            f"`dask worker {scheduler} --nthreads 1`"
        ) from None
    try:
        yield client
    finally:
        client.close()
