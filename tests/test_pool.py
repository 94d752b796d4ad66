"""Local workers forked from this process (:class:`gradnoise.pool.LocalPool`): errors come back as
themselves, a worker that keeps dying is one error, closing a map stops its workers, and what
``--workers`` runs on needs neither Dask nor a ``__main__`` guard. (The numbers, bitwise, and a
killed worker's cell or chunk: ``tests/test_cluster.py``, parametrised over Dask and these.)"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch.distributions import Normal

import gradnoise as gn
from gradnoise import cluster, pool
from gradnoise.pool import LocalPool, RemoteTraceback

TEST_PID = os.getpid()


def forked_workers() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "gradnoise-local"]


def square(x):
    return x * x


def fail(x):
    raise KeyError(f"no entry {x}")


def unpicklable(_):
    return threading.Lock()


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def test_results_come_back_for_every_call_on_other_processes():
    calls = [(square, (k,)) for k in range(20)] + [(os.getpid, ())]
    done = dict(LocalPool(3).map(calls))
    assert [done[k] for k in range(20)] == [k * k for k in range(20)]
    assert done[20] != TEST_PID                    # ran in a forked worker
    assert not forked_workers()
    assert list(LocalPool(2).map([])) == []


def test_an_error_in_a_worker_is_raised_here_as_itself_with_its_traceback():
    with pytest.raises(KeyError, match="no entry 3") as info:
        list(LocalPool(2).map([(square, (1,)), (fail, (3,)), (square, (2,))]))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in a local worker process, running fail(...)" in str(info.value.__cause__)
    assert 'raise KeyError(f"no entry {x}")' in str(info.value.__cause__)
    assert not forked_workers()


def test_a_nan_cost_on_a_worker_is_the_same_error_as_in_this_process():
    problem = gn.ExpectationProblem(Normal, {"loc": torch.tensor(0.0), "scale": torch.tensor(1.0)},
                                    cost=lambda x: torch.where(x > 3.5, torch.nan, x), name="nan-tail")
    with pytest.raises(gn.NonFiniteCostError) as here:
        gn.measure(problem, "reinforce", [64], replicates=400)
    with pytest.raises(gn.NonFiniteCostError) as there:
        gn.measure(problem, "reinforce", [64], replicates=400, client=LocalPool(2))
    assert str(here.value) == str(there.value)


def test_a_result_that_cannot_be_pickled_is_one_error_naming_the_call():
    with pytest.raises(TypeError, match=r"the result of unpicklable\(\.\.\.\) cannot be pickled back"):
        list(LocalPool(1).map([(unpicklable, (0,))]))


def test_a_call_that_keeps_killing_its_worker_is_one_error_after_max_attempts(capsys):
    p = LocalPool(2)
    with pytest.raises(RuntimeError, match=rf"died {pool.MAX_ATTEMPTS} times running die\(\.\.\.\) .*exit code -9"):
        list(p.map([(square, (2,)), (die, (0,))]))
    assert p.replaced == pool.MAX_ATTEMPTS - 1
    assert capsys.readouterr().err.count("a local worker process died (exit code -9)") == pool.MAX_ATTEMPTS - 1
    assert not forked_workers()


def test_closing_a_map_early_stops_its_workers():
    done = LocalPool(2).map([(square, (k,)) for k in range(50)])
    next(done)
    assert forked_workers()
    done.close()
    assert not forked_workers()


def test_workers_are_forked_only_where_safe():
    assert pool.usable(1, "cpu") is sys.platform.startswith("linux")
    assert not pool.usable(2, "cpu")               # GNU OpenMP is not fork-safe at more threads
    assert not pool.usable(None, "cpu") and not pool.usable(1, "cuda")
    with cluster.open_client(workers=2) as client:
        assert isinstance(client, LocalPool) and client.workers == 2
    with pytest.raises(ValueError, match="local workers must be 'auto', 'fork' or 'dask'"):
        with cluster.open_client(workers=2, local="threads"):
            pass
    assert cluster.local_kind(2) == "dask" and cluster.local_kind(1, local="dask") == "dask"
    with pytest.raises(ValueError, match="forked local workers run cells at one torch thread .* not threads=2"):
        cluster.local_kind(2, local="fork")


def test_the_environment_chooses_dask_for_local_workers(monkeypatch):
    monkeypatch.setenv(cluster.LOCAL_WORKERS_VARIABLE, "dask")
    assert cluster.local_kind(1) == "dask"
    monkeypatch.setenv(cluster.LOCAL_WORKERS_VARIABLE, "spawn")
    with pytest.raises(ValueError, match=r"\$GRADNOISE_LOCAL_WORKERS\), got 'spawn'"):
        cluster.local_kind(1)


def run(code: str, tmp_path, *args) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_a_script_without_a_main_guard_runs_on_local_workers(tmp_path):
    done = run("""
        import sys
        import gradnoise as gn
        from gradnoise.cluster import open_client
        with open_client(workers=2) as client:
            df = gn.measure("gaussian-cos", ["reinforce"], [2, 4], replicates=20, client=client)
        print(len(df), sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4 []"           # no Dask for local workers


def test_the_sweep_command_with_workers_uses_forked_workers_not_dask(tmp_path, monkeypatch):
    done = run("""
        import sys
        from gradnoise import cluster
        from gradnoise.analysis.cli import main
        cluster.MIN_LOCAL_SECONDS = 0.0
        main(["sweep", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--estimator", "reparam",
              "--budget", "4", "--replicates", "40", "--quiet", "--out", "s.csv", "--workers", "2"])
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "too little to pay off" not in done.stderr


# ------------------------------------------------------------------------------------------
# memory: calls that each need more than the command's process never run at once on 2 workers
# ------------------------------------------------------------------------------------------
def interval(seconds):
    """The call's ``(start, end)`` on the machine's monotonic clock, having slept ``seconds``."""
    import time

    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("budgeted", [True, False])
def test_two_large_calls_never_run_at_once_and_small_ones_run_beside_them(budgeted):
    """Two calls predicted at 10x the command's own memory each (``large``) and two small ones on
    2 workers: with the budget the large ones run one after the other, each beside a small one;
    without it (the negative control) the two large ones are the first two calls and run together."""
    big = 10 * pool.resident_bytes()
    memory = [big, big, 1.0, 1.0] if budgeted else None
    done = dict(LocalPool(2).map([(interval, (0.5,))] * 4, memory))
    assert overlap(done[0], done[1]) is not budgeted
    if budgeted:
        assert overlap(done[0], done[2]) and overlap(done[1], done[3])


def test_the_budget_admits_a_large_call_beside_small_ones_and_waits_for_two_large():
    """The rule's arithmetic (:class:`gradnoise.pool.MemoryBudget`): with b = 100, F = 300 a call
    is large above 200 and 2 workers may hold 300 + 200; 3 workers 300 + 2 x 200."""
    budget = pool.MemoryBudget([300, 250, 150, 200], workers=2, base=100)
    assert budget.large == 200 and budget.limit == 500
    assert [budget.is_large(k) for k in range(4)] == [True, True, False, False]

    class Held:
        def __init__(self, held, index=None):
            self.held, self.index = held, index

    running_large, idle = Held(300, 0), Held(0)
    pending = [1, 2, 3]
    assert budget.choose(pending, idle, [running_large, idle], [running_large]) == 2   # 250 waits, 150 fits
    assert budget.choose([1], idle, [running_large, idle], [running_large]) is None
    assert budget.choose([1], idle, [running_large, idle], []) == 1                   # nothing else busy: runs
    small = Held(200, 3)
    assert budget.choose([0], idle, [small, idle], [small]) == 0                       # small calls never block
    assert pool.MemoryBudget([300], workers=3, base=100).limit == 700
    with pytest.raises(ValueError, match="one number of bytes per call: 1 for 2 calls"):
        list(LocalPool(2).map([(square, (1,)), (square, (2,))], [1.0]))


def allocate(mib):
    """Touch ``mib`` MiB on glibc's heap (as the engine's blocks do: freed memory kept), free it,
    and return this worker's resident bytes."""
    cluster.keep_freed_memory()
    block = torch.ones(mib * 2**18)
    del block
    return pool.resident_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_worker_gives_a_large_calls_memory_back_when_it_ends():
    """One worker runs a call that touches 400 MiB, then one that reports its memory: with the
    call predicted large the worker trims its heap in between; without a prediction it keeps it."""
    big = 10 * pool.resident_bytes()
    kept = dict(LocalPool(1).map([(allocate, (400,)), (pool.resident_bytes, ())]))
    trimmed = dict(LocalPool(1).map([(allocate, (400,)), (pool.resident_bytes, ())], [big, 1.0]))
    assert kept[1] > kept[0] - 50 * 2**20                     # the heap kept: still about as large
    assert trimmed[1] < trimmed[0] - 300 * 2**20               # given back


def test_the_engine_counts_an_estimators_declared_bytes_per_sample_element():
    """RELAX's and Gumbel-Rao's blocks are wider than their samples: the memory check and the
    workers' budget count them at their ``sample_bytes``, the others at the default."""
    problem = gn.make_problem("bernoulli-toy-nd")
    per = {}
    for name in ("reinforce", "relax", "relax:hidden=20", "gumbel-rao:k=20", "rebar"):
        estimator = gn.get_estimator(name)
        estimates, block = gn.engine.cell_bytes(problem, 10_000, estimator, 100)
        rows = min(10_000, gn.engine.block_size(problem, estimator, 100))
        per[name] = estimator.sample_bytes(problem, 100)
        assert block == rows * 100 * (problem.event_numel() + problem.param_numel()) * per[name]
        assert estimates == 10_000 * problem.param_numel() * gn.engine.BYTES_PER_ESTIMATE
    assert per["reinforce"] == gn.engine.BYTES_PER_SAMPLE_ELEMENT
    assert per["relax:hidden=20"] > per["relax"] > per["rebar"] > per["reinforce"]
    assert per["gumbel-rao:k=20"] == 2 * gn.get_estimator("gumbel-rao").sample_bytes(problem, 100)
