r"""Local worker processes forked from this one: what ``--workers N`` runs a grid on.

A local run (``gradnoise sweep|report|study|train --workers N``, or ``gn.measure(...,
client=gn.pool.LocalPool(N))``) needs no cluster: the command's process has already imported
torch, scipy and gradnoise and built the grid, so :class:`LocalPool` forks ``N`` workers from it
when a map starts. A forked worker starts in milliseconds instead of a Dask worker's 2 s (which
imports everything again), shares the parent's pages copy-on-write (one copy of torch, scipy and
the problems' tensors for all of them, where each Dask worker held its own), and already holds
every object the calls name: nothing is serialised on the way out, not even a user's lambdas,
so a task is its index; only results (estimates, rows) are pickled on the way back. Dask stays
for clusters of several machines (``--scheduler``, :mod:`gradnoise.cluster`).

How a map runs (:meth:`LocalPool.map`):

* ``calls`` is a list of ``(function, arguments)``; ``min(N, len(calls))`` workers are forked
  (``gc.freeze()`` first, so that the workers' garbage collector does not write to, and so copy,
  every page of the parent's objects), each is sent the index of the next call in list order as
  it finishes the previous one, and ``(index, function(*arguments))`` is yielded as each finishes;
* a call that raises in a worker raises the same exception here (the worker's traceback
  attached as its cause), after the other workers are stopped;
* a worker that dies (killed, out of memory) loses only the call it was computing: that call is
  sent to a worker forked in its place, up to :data:`MAX_ATTEMPTS` times per call, then one
  ``RuntimeError`` names it;
* when the map ends, is closed early (the caller's error, Ctrl-C) or fails, every worker is
  stopped; workers ignore SIGINT, so Ctrl-C reaches this process alone, which stops them;
* with ``memory`` (the bytes each call holds at once, as :func:`gradnoise.cluster.map_cells`
  predicts them from :func:`gradnoise.engine.cell_bytes`), a call starts only where the workers'
  predicted memory stays within a budget (:class:`MemoryBudget`): two calls that each need more
  than the command's own process never run at once on 2 workers, and a worker gives the memory
  of such a call back to the system when it ends (``malloc_trim``). So ``--workers 2`` is meant
  to hold at most about 1.5 times what one process running the grid alone holds (measured in
  docs/scaling.md: 1.15-1.24x on the report's grid at R = 10^4, 1.39-1.50x where every task is
  a chunk of one large cell and both workers must run such chunks at once).

What a forked worker can safely do is what the engine's cells do: torch at **one** intra-op
thread on the CPU. GNU OpenMP is not fork-safe (measured here: a child forked after its parent
ran a 2-thread torch kernel hangs at its first 2-thread kernel, at one thread it runs), and CUDA
cannot be used in a forked child, so :func:`usable` is False for ``threads != 1``, a CUDA device,
or a platform without ``fork`` (macOS forks badly too: its system libraries are not fork-safe),
and :func:`gradnoise.cluster.open_client` then starts a Dask ``LocalCluster`` as before.
"""
from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from collections import deque
from multiprocessing.connection import wait
from typing import Callable, Iterator, Sequence

#: how many times one call may lose its worker before the map gives up (Dask's
#: ``distributed.scheduler.allowed-failures`` is 3 as well)
MAX_ATTEMPTS = 3


def usable(threads: int | None = 1, device: str | None = "cpu") -> bool:
    """Whether a :class:`LocalPool` can run cells at ``threads`` intra-op threads on ``device``:
    one thread, the CPU, Linux (see the module docstring for why)."""
    import torch

    return (threads == 1 and sys.platform.startswith("linux") and str(device or "cpu").startswith("cpu")
            and "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized())


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, attached as its ``__cause__``."""

    def __str__(self) -> str:
        return self.args[0]


class LocalPool:
    """``workers`` processes forked from this one for each :meth:`map` (see the module docstring).

    Stands where a ``distributed.Client`` stands: :func:`gradnoise.cluster.map_cells` and
    :func:`~gradnoise.cluster.map_calls` accept either, with the same numbers, bitwise."""

    def __init__(self, workers: int):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        #: workers forked to replace one that died, over this pool's life (tests read it)
        self.replaced = 0

    def __repr__(self) -> str:
        return f"LocalPool(workers={self.workers})"

    def nthreads(self) -> dict[str, int]:
        """Worker name -> threads, as ``distributed.Client.nthreads()`` reports it (one thread each)."""
        return {f"local-{k}": 1 for k in range(self.workers)}

    def map(self, calls: Sequence[tuple[Callable, tuple]],
            memory: Sequence[float] | None = None) -> Iterator[tuple[int, object]]:
        """``(index, function(*arguments))`` for each ``(function, arguments)`` of ``calls``, as
        each finishes on a forked worker (any order). Closing the generator stops the workers.

        ``memory``: the bytes each call is predicted to hold at once (None: not known). With it,
        idle workers take the first call, in list order, that keeps the workers within the
        :class:`MemoryBudget`, and a call larger than the budget's ``large`` ends with its
        worker trimming its heap."""
        calls = list(calls)
        if memory is not None and len(memory) != len(calls):
            raise ValueError(f"memory must give one number of bytes per call: {len(memory)} for {len(calls)} calls")
        if not calls:
            return
        pending = deque(range(len(calls)))
        attempts = [0] * len(calls)
        workers: list[_Worker] = []
        count = min(self.workers, len(calls))
        budget = MemoryBudget(memory, count, resident_bytes()) if memory is not None else None

        def feed_idle() -> None:
            for worker in workers:
                if worker.index is None and pending:
                    busy = [w for w in workers if w is not worker and w.index is not None]
                    index = pending[0] if budget is None else budget.choose(pending, worker, workers, busy)
                    if index is None:
                        continue
                    pending.remove(index)
                    attempts[index] += 1
                    worker.run(index, budget is not None and budget.is_large(index))
                    if budget is not None:
                        worker.held = max(worker.held, budget.memory[index])

        try:
            for _ in range(count):
                workers.append(_Worker(calls))
            feed_idle()
            while any(w.index is not None for w in workers):
                ready = set(wait([w.conn for w in workers] + [w.process.sentinel for w in workers]))
                for worker in list(workers):
                    if worker.conn not in ready and worker.process.sentinel not in ready:
                        continue
                    message = None
                    if worker.conn.poll():                # a result, or EOF: the worker ended
                        try:
                            message = pickle.loads(worker.conn.recv_bytes())
                        except (EOFError, OSError):
                            worker.process.join(timeout=5.0)
                    if message is not None:
                        index, ok, value = message
                        worker.index = None
                        if budget is not None and budget.is_large(index):
                            worker.held = 0.0             # it trimmed its heap
                        if not ok:
                            _raise_remote(calls, index, value)
                        feed_idle()
                        yield index, value
                        continue
                    if worker.process.is_alive():
                        continue
                    lost, code = worker.index, worker.process.exitcode
                    worker.close()
                    workers.remove(worker)
                    if lost is None:
                        continue
                    if attempts[lost] >= MAX_ATTEMPTS:
                        raise RuntimeError(
                            f"a local worker process died {attempts[lost]} times running {_describe(calls[lost])} "
                            f"(last exit code {code}; -9 is SIGKILL, often the kernel's out-of-memory killer)")
                    print(f"gradnoise: a local worker process died (exit code {code}) running "
                          f"{_describe(calls[lost])}; rerunning that call on a new worker", file=sys.stderr)
                    pending.appendleft(lost)
                    workers.append(_Worker(calls))
                    self.replaced += 1
                    feed_idle()
        finally:
            for worker in workers:
                worker.stop()
            for worker in workers:
                worker.close(wait=True)


def resident_bytes() -> float:
    """This process's resident memory (``VmRSS``) in bytes; 0 where ``/proc`` does not say."""
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 0.0


class MemoryBudget:
    r"""Which call an idle worker may start, given the bytes each call holds at once.

    With ``b`` the command's own resident memory when the workers are forked (shared with them
    copy-on-write) and ``F`` the largest call's memory, one process running the calls one after
    the other holds about ``b + F`` at its peak. A call is **large** when it holds more than
    ``(b + F) / 2``; a worker keeps the memory of the small calls it ran for the next ones (glibc
    keeps freed memory: :func:`gradnoise.cluster.keep_freed_memory`) and gives a large call's
    back when it ends (``malloc_trim``). The workers' memory, the sum over workers of what each
    holds (``held``: the largest small call since its last large one, or its large call), stays
    within

    .. math:: F + (W - 1)\,\frac{b + F}{2},

    so with ``W = 2`` workers the command's tree holds at most about ``1.5 (b + F)``: two large
    calls never run at once, a large and a small one do. The first pending call (in list order:
    largest work first) that fits is taken; where none fits the worker waits for another to end.
    A call always starts on a worker when no other worker is busy (a lone call over the budget
    runs alone). Small calls never wait: ``W - 1`` workers holding ``(b + F) / 2`` each leave
    ``F`` for any call.
    """

    def __init__(self, memory: Sequence[float], workers: int, base: float):
        self.memory = [float(m) for m in memory]
        largest = max(self.memory, default=0.0)
        self.large = (base + largest) / 2
        self.limit = largest + (max(1, workers) - 1) * self.large

    def is_large(self, index: int) -> bool:
        return self.memory[index] > self.large

    def choose(self, pending: deque, worker: "_Worker", workers: list, busy: list) -> int | None:
        """The first of ``pending`` that ``worker`` may start now, or None (wait)."""
        if not busy:
            return pending[0]
        others = sum(w.held for w in workers if w is not worker)
        for index in pending:
            if others + max(worker.held, self.memory[index]) <= self.limit:
                return index
        return None


class _Worker:
    """One forked worker: its process, this end of its pipe, and the call it is computing."""

    def __init__(self, calls: list):
        context = multiprocessing.get_context("fork")
        self.conn, there = context.Pipe(duplex=True)
        for stream in (sys.stdout, sys.stderr):       # else the worker may print this buffer again
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        gc.freeze()                                   # no collection: it would copy-on-write every page
        try:
            self.process = context.Process(target=_serve, args=(calls, there), name="gradnoise-local", daemon=True)
            self.process.start()
        finally:
            gc.unfreeze()
        there.close()
        self.index: int | None = None
        #: the bytes this worker is predicted to hold (:class:`MemoryBudget`)
        self.held = 0.0

    def run(self, index: int, trim: bool = False) -> None:
        """Send this worker call ``index``; ``trim``: give the call's memory back when it ends."""
        self.index = index
        self.conn.send((index, trim))

    def stop(self) -> None:
        """Ask the worker to exit after its current call (an idle one exits at once)."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass

    def close(self, wait: bool = False) -> None:
        if wait:
            self.process.join(timeout=1.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.conn.close()
        self.process.close()


def _serve(calls: list, conn) -> None:
    """A worker's loop: receive a call's index, send back ``pickle((index, ok, value))``, where
    ``value`` is the result or, for a call that raised, :func:`_error`; exit on ``None`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's to handle
    gc.enable()
    while True:
        try:
            index = conn.recv()
        except (EOFError, OSError):
            return
        if index is None:
            return
        index, trim = index
        function, arguments = calls[index]
        try:
            message = (index, True, function(*arguments))
        except BaseException as err:                  # noqa: BLE001 -- raised again in the parent
            message = (index, False, _error(err))
        try:
            # plain pickle, not multiprocessing's: torch registers reductions there that would
            # send tensors through shared-memory file descriptors
            payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:                      # noqa: BLE001 -- an unpicklable result
            payload = pickle.dumps((index, False, _error(TypeError(
                f"the result of {_describe(calls[index])} cannot be pickled back from the worker "
                f"({type(err).__name__}: {err})"))))
        del message
        if trim:                                      # before the parent hears of it (MemoryBudget)
            release_freed_memory()
        conn.send_bytes(payload)


@functools.lru_cache(maxsize=1)
def glibc():
    """The C library as a ``ctypes.CDLL`` where it is glibc on Linux (it has ``mallopt`` and
    ``malloc_trim``), else None; loaded once (``find_library`` asks ``ldconfig``)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim             # noqa: B018 -- AttributeError where not glibc (musl)
    except (OSError, AttributeError):
        return None
    return libc


def release_freed_memory() -> bool:
    """Give the memory this process has freed back to the system (glibc's ``malloc_trim(0)``);
    True when it did. Not glibc: nothing done."""
    libc = glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def _error(err: BaseException) -> tuple:
    """What travels back for an exception: itself when it pickles (else None), its type's name,
    its message and the worker's traceback text."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        pickle.loads(pickle.dumps(err))
        exc = err
    except Exception:                                 # noqa: BLE001
        exc = None
    return exc, type(err).__name__, str(err), text


def _raise_remote(calls: list, index: int, value: tuple):
    exc, name, message, text = value
    cause = RemoteTraceback(f"\n\"\"\"\n(in a local worker process, running {_describe(calls[index])})\n{text}\"\"\"")
    if exc is None:
        exc = RuntimeError(f"{name}: {message}")
    raise exc from cause


def _describe(call: tuple) -> str:
    """``function(problem, estimator, ...)`` for a message: the function's name and the specs and
    names of the problems and estimators among its arguments."""
    function, arguments = call
    named = [str(getattr(a, "spec", None) or getattr(a, "name")) for a in arguments
             if getattr(a, "spec", None) is not None or isinstance(getattr(a, "name", None), str)]
    return f"{getattr(function, '__qualname__', function)}({', '.join(named + ['...'])})"
