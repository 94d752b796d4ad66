"""Grids on a real Dask LocalCluster (2 worker processes) and on local workers forked from this
process (:class:`gradnoise.pool.LocalPool`, what ``--workers`` runs on): the same numbers, bitwise,
as the sequential engine; resume after an interruption; a killed worker's cell, or chunk, retried;
caches written once under a race; clear errors for what cannot be sent or reached."""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from torch.distributions import Gamma, Normal

import gradnoise as gn
from gradnoise.analysis import sweep
from gradnoise.analysis.cli import main
from gradnoise import cluster, io
from gradnoise.pool import LocalPool
from gradnoise.problems import oracle_truth

import cloudpickle  # noqa: E402  (dask[distributed] is a dependency: no skip)
import distributed  # noqa: E402

# the workers cannot import this test module: send its functions by value, as a user's script's
cloudpickle.register_pickle_by_value(sys.modules[__name__])

STAT_COLUMNS = [c for c in gn.COLUMNS if c != "seconds_per_estimate"]
ESTIMATORS = ["reinforce", "reinforce-loo", "reparam"]
BUDGETS = [2, 8, 32]
R = 64


#: this test process: a cost evaluated in another process is on a worker (Dask's or a forked one)
TEST_PID = os.getpid()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    cache = tmp_path_factory.mktemp("worker-cache")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"GRADNOISE_CACHE": str(cache)}) as lc, distributed.Client(lc) as c:
        c.wait_for_workers(2)
        yield c


def forked_workers() -> list:
    """The local workers (:class:`LocalPool`) of this process still alive."""
    return [p for p in multiprocessing.active_children() if p.name == "gradnoise-local"]


@pytest.fixture(params=["dask", "fork"])
def runner(request):
    """Where cells run besides this process: the module's Dask cluster, or 2 forked local workers."""
    if request.param == "dask":
        return request.getfixturevalue("client")
    return LocalPool(2)


def gamma_problem() -> gn.ExpectationProblem:
    """Bring-your-own: a lambda cost and an oracle truth (no closed form), sent by cloudpickle."""
    return gn.ExpectationProblem(Gamma, {"concentration": torch.tensor(2.0), "rate": torch.tensor(1.5)},
                                 cost=lambda x: torch.log1p(x), name="gamma-log1p", oracle_samples=2**14)


def killing_problem(marker: str) -> gn.ExpectationProblem:
    """(x - 1)^2 under N(loc, scale); on a worker (Dask's or forked), the first evaluation ever (no ``marker``
    file yet) creates the marker and SIGKILLs its own process, mid-cell."""
    def cost(x):
        if os.getpid() == TEST_PID:
            return (x - 1) ** 2          # not on a worker: the sequential reference
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return (x - 1) ** 2

    return normal_problem(cost, "normal-killer")


def normal_problem(cost, name: str) -> gn.ExpectationProblem:
    """E[cost(x)] under N(0.5, 2^2), with the closed form of E[(x - 1)^2] as its truth (the
    killing problems' cost is (x - 1)^2, with a side effect on a worker)."""
    return gn.ExpectationProblem(Normal, {"loc": torch.tensor(0.5), "scale": torch.tensor(2.0)}, cost=cost,
                                 name=name, expected_cost=lambda p: (p["loc"] - 1) ** 2 + p["scale"] ** 2)


def test_measure_on_the_cluster_is_bitwise_the_sequential_run(runner):
    client = runner
    problems = ["gaussian-cos:k=5", "bernoulli-toy", gamma_problem()]
    kw = dict(replicates=R, seed=7, on_invalid="skip")
    sequential = gn.measure(problems, ESTIMATORS, BUDGETS, **kw)
    on_cluster = gn.measure(problems, ESTIMATORS, BUDGETS, client=client, **kw)
    assert len(sequential) == 2 * 3 * 3 + 1 * 2 * 3 + 2 * 3 * 3    # reparam skipped on bernoulli-toy (1 param)
    pd.testing.assert_frame_equal(sequential[STAT_COLUMNS], on_cluster[STAT_COLUMNS], check_exact=True)
    assert (on_cluster["threads"] == 1).all()
    # the user's problem is keyed by its code, the same on the cluster as here
    assert sequential["code_version"].equals(on_cluster["code_version"])
    assert on_cluster["code_version"].str.contains(r"\+problem:[0-9a-f]{8}$").sum() == 2 * 3 * 3
    # both workers took part (cells are spread, not all run where the problem was rebuilt)
    assert len(client.nthreads()) == 2


def test_negative_control_another_seed_differs(runner):
    a = gn.measure("gaussian-cos:k=5", "reinforce", [8], replicates=R, seed=7, client=runner)
    b = gn.measure("gaussian-cos:k=5", "reinforce", [8], replicates=R, seed=8, client=runner)
    assert not (a["mean"].to_numpy() == b["mean"].to_numpy()).any()


MAP_CELLS = cluster.map_cells


class StopAfter:
    """Wraps cluster.map_cells: counts the cells received, raises KeyboardInterrupt after ``stop``."""

    def __init__(self, stop=None):
        self.cells, self.stop, self.original = 0, stop, MAP_CELLS

    def __call__(self, *args, **kw):
        for item in self.original(*args, **kw):
            if self.stop is not None and self.cells == self.stop:
                raise KeyboardInterrupt
            self.cells += 1
            yield item


def test_interrupted_cluster_sweep_resumes_with_the_same_numbers(runner, tmp_path, monkeypatch):
    client = runner
    grid = gn.engine.cells(["gaussian-quadratic", "gaussian-exp"], ESTIMATORS, BUDGETS)
    reference = sweep.sweep_to_csv(grid, R, 3, tmp_path / "ref.csv", progress=False).results
    out = tmp_path / "out.csv"
    first = StopAfter(stop=5)
    monkeypatch.setattr(cluster, "map_cells", first)
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep_to_csv(grid, R, 3, out, progress=False, client=client)
    assert not out.exists()
    if isinstance(client, LocalPool):
        assert not forked_workers()          # forked workers stopped with the map
    with open(sweep.partial_path(out)) as fh:
        assert len(fh.readlines()) == 5                       # the finished cells, as they arrived
    second = StopAfter()
    monkeypatch.setattr(cluster, "map_cells", second)
    outcome = sweep.sweep_to_csv(grid, R, 3, out, progress=False, client=client)
    assert (second.cells, outcome.reused, outcome.computed) == (len(grid) - 5, 5, len(grid) - 5)
    assert not os.path.exists(sweep.partial_path(out))
    pd.testing.assert_frame_equal(reference[STAT_COLUMNS], outcome.results[STAT_COLUMNS], check_exact=True)
    pd.testing.assert_frame_equal(reference[STAT_COLUMNS], pd.read_csv(out)[STAT_COLUMNS], check_exact=True)


def test_a_killed_workers_cell_is_retried_with_the_same_result(runner, tmp_path):
    marker = str(tmp_path / "killed-once")
    problem = killing_problem(marker)
    reference = gn.measure(problem, ["reinforce", "reparam"], [4], replicates=R, seed=1)
    result = gn.measure(problem, ["reinforce", "reparam"], [4], replicates=R, seed=1, client=runner)
    assert os.path.exists(marker)                             # a worker was killed mid-cell
    pd.testing.assert_frame_equal(reference[STAT_COLUMNS], result[STAT_COLUMNS], check_exact=True)
    if isinstance(runner, LocalPool):
        assert runner.replaced == 1 and not forked_workers()
    else:
        runner.wait_for_workers(2, timeout=60)                # the nanny restarted it


def _count_and_compute(counter: str, value: float):
    with open(counter, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(1.0)                      # long enough for the other worker to arrive meanwhile
    return {"value": torch.tensor(value)}


def _racer(path: str, counter: str, start: float):
    time.sleep(max(0.0, start - time.time()))
    return float(io.compute_once(path, lambda: _count_and_compute(counter, 3.25))["value"])


def test_a_cache_file_is_computed_once_when_two_workers_race_for_it(client, tmp_path):
    workers = list(client.nthreads())
    path, counter = str(tmp_path / "shared.pt"), str(tmp_path / "computed")
    start = time.time() + 1.0
    futures = [client.submit(_racer, path, counter, start, workers=[w], pure=False) for w in workers]
    assert client.gather(futures) == [3.25, 3.25]
    with open(counter) as fh:
        assert len(fh.readlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["computed", "shared.pt"]   # no temporary or lock left


def _oracle_values(cache: str, start: float):
    os.environ["GRADNOISE_CACHE"] = cache
    problem = gn.make_problem("gaussian-cos:k=5")
    time.sleep(max(0.0, start - time.time()))
    truth = oracle_truth(problem, "reparam", 10, samples=2**16)
    return {k: v.numpy().tobytes() for k, v in truth.values.items()}


def test_oracle_cache_written_once_and_whole_under_a_race(client, tmp_path):
    cache = str(tmp_path / "cache")
    start = time.time() + 1.0
    futures = [client.submit(_oracle_values, cache, start, workers=[w], pure=False) for w in client.nthreads()]
    a, b = client.gather(futures)
    assert a == b
    files = os.listdir(os.path.join(cache, "oracles"))
    assert len([f for f in files if f.endswith(".pt")]) == 1 and not [f for f in files if f.endswith(".tmp")]


def test_an_object_that_cannot_be_sent_is_named(client):
    lock = threading.Lock()
    problem = gn.ExpectationProblem(Normal, {"loc": torch.tensor(0.0), "scale": torch.tensor(1.0)},
                                    cost=lambda x: x ** 2 if lock else x, name="holds-a-lock")
    with pytest.raises(ValueError, match="problem 'holds-a-lock' cannot be sent to the Dask workers.*lock"):
        gn.measure(problem, "reparam", [4], replicates=R, client=client)


def test_sweep_command_with_workers_writes_the_sequential_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "MIN_CLUSTER_SECONDS", 0.0)     # a cluster even for this small grid
    args = ["sweep", "--problem", "gaussian-quadratic", "--estimator", "reinforce", "--estimator", "reparam",
            "--budget", "1", "--budget", "16", "--replicates", "50", "--seed", "3", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "seq.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "par.csv"), "--workers", "2"]) == 0
    seq, par = pd.read_csv(tmp_path / "seq.csv"), pd.read_csv(tmp_path / "par.csv")
    pd.testing.assert_frame_equal(seq[STAT_COLUMNS], par[STAT_COLUMNS], check_exact=True)


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be >= 1"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "either --workers N .* or --scheduler"),
    (["--threads", "0"], "--threads must be >= 1"),
], ids=["workers-0", "workers-and-scheduler", "threads-0"])
def test_bad_cluster_options_are_one_line(tmp_path, capsys, extra, message):
    assert main(["sweep", "--problem", "gaussian-quadratic", "--out", str(tmp_path / "x.csv")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0])


@pytest.mark.parametrize("command", [["report", "--problem", "gaussian-quadratic"], ["study", "no-single-winner", "--quick"]],
                         ids=["report", "study"])
def test_report_and_study_refuse_bad_cluster_options(tmp_path, capsys, command):
    assert main(command + ["--out-dir", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert main(command + ["--out-dir", str(tmp_path / "o"), "--workers", "1", "--scheduler", "tcp://x:1"]) == 2
    assert "not both" in capsys.readouterr().err


def test_an_unreachable_scheduler_is_one_error_within_seconds():
    """The connection gives up after the timeout asked for (1 s here) instead of Dask's default
    30 s; the bound below only separates the two on a machine busy with other work."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match="cannot reach a Dask scheduler at 'tcp://127.0.0.1:9' within 1 s"):
        with cluster.open_client(scheduler="tcp://127.0.0.1:9", timeout=1.0):
            pass
    assert time.perf_counter() - start < 20


def test_threads_are_recorded_and_restored():
    before = torch.get_num_threads()
    df = gn.measure("gaussian-quadratic", "reparam", [4], replicates=8, threads=2)
    assert (df["threads"] == 2).all() and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        gn.measure("gaussian-quadratic", "reparam", [4], replicates=8, threads=0)


def test_no_dask_import_without_a_client():
    code = ("import sys, estimators as gn, analysis.cli\n"
            "gn.measure('gaussian-quadratic', 'reparam', [4], replicates=8)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_study_on_the_cluster_is_bitwise_the_sequential_run(runner, tmp_path):
    from gradnoise.analysis.studies import Config, run_study

    run_study("iwae-snr", tmp_path / "seq", Config(quick=True))
    run_study("iwae-snr", tmp_path / "par", Config(quick=True, client=runner))
    for name in ("results.csv", "snr.csv", "snr_fits.csv"):
        seq, par = pd.read_csv(tmp_path / "seq" / name), pd.read_csv(tmp_path / "par" / name)
        columns = [c for c in seq.columns if c != "seconds_per_estimate"]
        pd.testing.assert_frame_equal(seq[columns], par[columns], check_exact=True)


def test_workers_running_other_code_are_refused(client):
    from gradnoise import provenance

    def pretend():
        provenance._real_code_version = provenance.code_version
        provenance.code_version = lambda: "0123456789ab"

    def restore():
        provenance.code_version = provenance.__dict__.pop("_real_code_version")

    client.run(pretend)
    try:
        with pytest.raises(ValueError, match="2 of 2 Dask workers run other gradnoise code .* 0123456789ab"):
            gn.measure("gaussian-quadratic", "reparam", [4], replicates=8, client=client)
    finally:
        client.run(restore)     # no client.restart(): its 120 s timeout failed on a loaded machine
    assert set(client.run(provenance.code_version).values()) == {provenance.code_version()}


# -- large cells cut into chunks of blocks ---------------------------------------------------------

LARGE = (["gaussian-quadratic-nd", "gaussian-cos:k=5"], ["reinforce", "reparam"], [4, 1000])
LARGE_R = 600


def large_cell_grid():
    """Two cells of 5 blocks (N = 1000 on gaussian-quadratic-nd: 139 replicates a block) among
    small cells: :func:`cluster.plan` cuts them into chunks for 1, 2 and 3 workers."""
    return gn.engine.cells(*LARGE)


@pytest.mark.parametrize("local", [False, True], ids=["dask", "fork"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_chunked_cells_are_bitwise_the_sequential_run(workers, local, request):
    grid = large_cell_grid()
    chunked = [t for t in cluster.plan(grid, LARGE_R, workers) if t[0] == "chunk"]
    big = len(gn.engine.blocks(*grid[1], LARGE_R))
    assert big == 5 and len({t[1] for t in chunked}) >= 1 and len(chunked) >= 2     # the cut is exercised
    with gn.engine.torch_threads(1):        # the workers' count, whatever this process's default
        sequential = pd.DataFrame([r for p, e, n in grid for r in gn.measure_cell(p, e, n, LARGE_R, 0)])
    if local:           # forked workers, as many as the plan is cut for
        with cluster.open_client(workers=workers) as pool:
            assert isinstance(pool, LocalPool) and len(pool.nthreads()) == workers
            done = dict(cluster.map_cells(pool, grid, LARGE_R, 0))
    elif workers == 3:
        with cluster.open_client(workers=3, local="dask") as dask_client:
            assert len(dask_client.nthreads()) == 3
            done = dict(cluster.map_cells(dask_client, grid, LARGE_R, 0))
    else:       # 1: the grid cut as for one worker (what the numbers depend on), run on the fixture's two
        done = dict(cluster.map_cells(request.getfixturevalue("client"), grid, LARGE_R, 0, workers=workers))
    on_cluster = pd.DataFrame([r for i in range(len(grid)) for r in done[i]])
    pd.testing.assert_frame_equal(sequential[STAT_COLUMNS], on_cluster[STAT_COLUMNS], check_exact=True)
    assert (on_cluster["threads"] == 1).all()


def test_chunks_gathered_in_any_order_are_the_cells_estimates():
    problem, estimator = gn.make_problem("gaussian-quadratic-nd"), gn.get_estimator("reinforce")
    whole, _ = gn.engine.replicate_estimates(problem, estimator, 1000, LARGE_R, 3)
    cut = gn.engine.chunks(problem, estimator, 1000, LARGE_R, 3)
    assert cut == [(0, 2), (2, 3), (3, 5)]
    pieces = [gn.engine.chunk_estimates(problem, estimator, 1000, LARGE_R, 3, a, b) for a, b in reversed(cut)]
    gathered, _ = gn.engine.gather_chunks(problem, estimator, 1000, LARGE_R, pieces)
    assert all(torch.equal(whole[k], gathered[k]) for k in whole)
    with pytest.raises(ValueError, match="chunks cover replicates 0..277 and then start at 417"):
        gn.engine.gather_chunks(problem, estimator, 1000, LARGE_R, pieces[::2])
    # negative control: another seed's chunk in place of one of this cell's is caught
    other = gn.engine.chunk_estimates(problem, estimator, 1000, LARGE_R, 4, 2, 3)
    mixed, _ = gn.engine.gather_chunks(problem, estimator, 1000, LARGE_R, [pieces[0], other, pieces[2]])
    assert not all(torch.equal(whole[k], mixed[k]) for k in whole)


def chunk_killing_problem(log: str, marker: str, seeds: dict[int, int]) -> gn.ExpectationProblem:
    """(x - 1)^2 under N(loc, scale) that logs ``pid block`` for every block it evaluates on a
    worker (the block known by its stream's seed, ``seeds``: seed -> index) and SIGKILLs its own
    process once (no ``marker`` yet) at the second block of a chunk that is the first thing this
    process computes, block index >= 3: the worker then holds no finished chunk of the cell."""
    def cost(x):
        if os.getpid() == TEST_PID:
            return (x - 1) ** 2
        block = seeds.get(torch.initial_seed())
        if block is not None:
            with open(log) as fh:
                mine = [int(b) for p, b in (line.split() for line in fh) if int(p) == os.getpid()]
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {block}\n")
            if mine == [block - 1] and block >= 3 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        return (x - 1) ** 2

    return normal_problem(cost, "normal-chunk-killer")


def test_a_killed_workers_chunk_not_its_cell_is_recomputed(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "TASKS_PER_WORKER", 4)   # the plan below: 4 chunks of 2 blocks each
    log, marker = str(tmp_path / "blocks.log"), str(tmp_path / "killed-once")
    open(log, "w").close()
    n, replicates, seed = 4096, 8 * 341, 5             # 341 replicates a block (2^22 / (4096 x 3)): 8 blocks
    estimator = gn.get_estimator("reparam")
    cell = gn.engine.cell_seed(seed, "normal-chunk-killer", "reparam", n)
    problem = chunk_killing_problem(log, marker, {gn.engine.block_seed(cell, i): i for i in range(8)})
    grid = [(problem, estimator, n)]
    tasks = cluster.plan(grid, replicates, 1)
    assert [t[2:] for t in tasks] == [(0, 2), (2, 4), (4, 6), (6, 8)]      # 4 chunks of 2 blocks
    with gn.engine.torch_threads(1):
        reference = gn.measure_cell(problem, estimator, n, replicates, seed)
    rows = dict(cluster.map_cells(runner, grid, replicates, seed, workers=1))[0]
    assert os.path.exists(marker)                              # a worker was killed mid-chunk
    with open(log) as fh:
        computed = [tuple(map(int, line.split())) for line in fh]
    twice = sorted({b for _, b in computed if [c for _, c in computed].count(b) == 2})
    killed_pid = next(p for p, b in computed if b in twice)
    assert len(twice) == 2 and twice[0] % 2 == 0 and twice[1] == twice[0] + 1    # one chunk, both its blocks
    assert sorted(b for _, b in computed) == sorted(list(range(8)) + twice)     # every other block once
    first = {}
    for pid, block in computed:
        first.setdefault(block, pid)
    assert first[twice[1]] == killed_pid and [p for p, b in computed if b in twice][2:] != [killed_pid] * 2
    pd.testing.assert_frame_equal(pd.DataFrame(reference)[STAT_COLUMNS], pd.DataFrame(rows)[STAT_COLUMNS],
                                  check_exact=True)
    if isinstance(runner, LocalPool):
        assert runner.replaced == 1
    else:
        runner.wait_for_workers(2, timeout=60)


def test_workers_on_a_grid_too_small_to_pay_off_run_in_this_process(tmp_path, capsys):
    args = ["sweep", "--problem", "gaussian-quadratic", "--estimator", "reparam", "--budget", "4",
            "--replicates", "50", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "seq.csv")]) == 0
    assert main(args + ["--out", str(tmp_path / "par.csv"), "--workers", "2"]) == 0
    assert "too little to pay off starting workers; running it in this process" in capsys.readouterr().err
    seq, par = pd.read_csv(tmp_path / "seq.csv"), pd.read_csv(tmp_path / "par.csv")
    pd.testing.assert_frame_equal(seq[STAT_COLUMNS], par[STAT_COLUMNS], check_exact=True)


def slow_reinforce(seconds: float, fail: bool = False):
    """REINFORCE whose every estimate first sleeps ``seconds`` (or raises): an estimator far
    slower per element of work than the low estimate assumes, as RELAX is."""
    import copy
    import time as _time

    base = gn.get_estimator("reinforce")

    class Slow(type(base)):
        def estimate(self, problem, params, n, state):
            if fail:
                raise gn.NonFiniteCostError("the cost returned NaN")
            _time.sleep(seconds)
            return super().estimate(problem, params, n, state)

    slow = copy.copy(base)
    slow.__class__ = Slow
    return slow


def test_a_grid_the_low_estimate_calls_small_is_timed_before_it_runs_alone():
    """The low estimate (20 ms a cell, 1 ns an element) would run this slow cell in one process;
    its pilot (32 of its 320 replicates) measures 0.1 s, so about 1 s for the cell: workers pay.
    A pilot that fails keeps the low estimate (the run itself reports the error)."""
    problem = gn.make_problem("gaussian-quadratic")
    grid = [(problem, slow_reinforce(0.1), 4)]
    low = cluster.estimated_seconds(grid, 320)
    assert low < 0.05
    assert cluster.piloted_seconds(grid, 320, enough=100.0) > 0.9              # 10 x 0.1 s
    assert cluster.piloted_seconds([(problem, slow_reinforce(0.1, fail=True), 4)], 320, enough=100.0) == low
    quick = [(problem, gn.get_estimator("reinforce"), 4)]
    assert cluster.piloted_seconds(quick, 320, enough=100.0) < 0.1             # a quick cell stays small
