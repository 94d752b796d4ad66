r"""The measurement engine: R independent estimates per cell, vectorised, seeded, summarised.

A *cell* is (problem, estimator, budget N). For each cell the engine

1. checks the problem and that the estimator can run (clear errors: unknown names, N < 1, R < 2,
   a non-finite parameter, a cost of the wrong shape, pathwise without ``rsample`` or on a cost
   without a usable gradient in the sample, IWAE on a plain expectation);
2. seeds torch's generator with :func:`cell_seed` (seed, problem spec, estimator name, N), inside
   ``torch.random.fork_rng`` so the caller's stream is untouched, and so that adding an
   estimator or a budget changes no other cell's numbers;
3. computes the R estimates in chunks of replicated parameter leaves (see
   :mod:`gradnoise.base`): one forward and one backward pass per chunk, never a Python loop
   over replicates. A chunk holds at most ``max_elements`` (default 2**22) sample-sized elements,
   and each chunk's estimates are written into one preallocated ``(R, *shape)`` buffer per
   parameter, so the peak memory does not grow with R beyond the estimates themselves (process
   peak RSS with imports, gaussian-cos, reinforce, N=10^3: 489 MiB at R=10^4, 531 MiB at
   R=10^6, where keeping and concatenating per-chunk tensors fragmented the heap to 6.7 GB); a
   cell whose estimates alone would not fit in the available memory is refused up front
   (:func:`check_memory`);
4. summarises each parameter with :func:`gradnoise.statistics.summarise` against the truth of
   the estimator's objective, into one tidy row per problem x estimator x param x budget.

Same seed, same numbers, bitwise, on the CPU (for the same ``max_elements`` and thread count),
in this process or on any Dask worker (:mod:`gradnoise.cluster`). Cells run at one torch
intra-op thread by default (:func:`torch_threads`, recorded in the column ``threads``): another
thread count can change the last bits of cells whose kernels torch parallelises by splitting a
reduction (measured over the default sweep grid, 1 against 2 threads: 6 of 269 rows, all
``linear-gaussian-vae`` x ``iwae-dreg``, at most 3e-8 relative; see docs/scaling.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import numbers
import time
from typing import Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor
from torch.distributions import Distribution

from . import statistics
from .base import all_finite, EstimatorNotApplicable, GradientEstimator, NonFiniteCostError, Problem, replicate
from . import provenance
from .registry import get_estimator, make_problem

#: what identifies a row, then the statistics (:data:`gradnoise.statistics.SUMMARY_COLUMNS`),
#: then the cost, the code that computed it and torch's intra-op threads
CELL_COLUMNS = ["problem", "estimator", "param", "budget", "replicates", "seed", "truth_kind"]
COST_COLUMNS = ["seconds_per_estimate", "cost_evals", "code_version", "threads"]
COLUMNS = CELL_COLUMNS + list(statistics.SUMMARY_COLUMNS) + COST_COLUMNS
#: the columns that hold text; every other column of a row is a number
TEXT_COLUMNS = ["problem", "estimator", "param", "truth_kind", "code_version"]
MAX_ELEMENTS = 2**22


def cell_seed(seed: int, problem: str, estimator: str, budget: int) -> int:
    """A 63-bit seed derived from the cell, stable across runs, platforms and Python versions."""
    key = f"{seed}|{problem}|{estimator}|{budget}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


@contextlib.contextmanager
def distribution_validation(enabled: bool):
    """Run the block with ``torch.distributions``' argument validation on or off, then restore it.

    The vectorised pass runs with it off: :meth:`Problem.validate` (called by the estimator's
    ``check`` before any estimate) has already built the distribution at these parameters with
    validation on, the replicated leaves are copies of them, and the samples come from the
    distribution itself, so the per-pass checks (``scale > 0``, samples in the support: an
    ``==``, a ``min`` and an ``all`` over every sample) could not fail. Validation never changes
    a number; it was 5-10% of a Gaussian cell's time.
    """
    before = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is None or an integer >= 1, else one ``ValueError``."""
    if threads is not None and (not _is_count(threads) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 (or None: torch's setting), got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block at ``threads`` torch intra-op threads (``None``: leave torch's setting).

    The default of the engine is 1: on a machine busy with other work torch's OpenMP threads spin
    waiting for cores (measured on 2 busy cores: 6-9 us per estimate at 1 thread, 134-168 at 2),
    and parallelism across cells (``--workers``) uses the cores instead. The count is restored
    afterwards and recorded in each row (column ``threads``).
    """
    if check_threads(threads) is None:
        yield
        return
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_counts(budget, replicates) -> None:
    if not _is_count(budget) or budget < 1:
        raise ValueError(f"budget N must be an integer >= 1 (a Python or numpy int), got {budget!r} "
                         f"({type(budget).__name__})")
    if not _is_count(replicates) or replicates < 2:
        raise ValueError(
            f"replicates R must be an integer >= 2 (a variance needs two estimates), got {replicates!r}"
        )


#: bytes per estimated number a cell holds at once: the float32 estimates, then summarising makes
#: a float64 copy, its deviations from the mean and their squares
BYTES_PER_ESTIMATE = 4 + 3 * 8


#: cells whose estimates need less than this are not checked against ``MemAvailable``
SMALL_CELL_BYTES = 2**26


def available_memory() -> int | None:
    """Bytes the kernel says it can give without swapping (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(problem: Problem, replicates: int) -> None:
    """Refuse, with one line, a cell whose estimates alone would not fit in memory.

    The engine holds the ``R x P`` estimates (P the problem's parameter count) and, while
    summarising, float64 copies of one parameter at a time; the sample-sized work of a chunk is
    bounded by ``max_elements`` whatever R, so the estimates are what grows with R.
    """
    need = replicates * problem.param_numel() * BYTES_PER_ESTIMATE
    if need < SMALL_CELL_BYTES:      # not worth reading /proc/meminfo (15 us, a small cell's 5%)
        return
    have = available_memory()
    if have is not None and need > have:
        raise MemoryError(
            f"problem {problem.spec!r} with R = {replicates} replicates needs about {need / 2**30:.1f} GiB "
            f"for its {problem.param_numel()} x R estimates alone, more than the {have / 2**30:.1f} GiB "
            f"available; use fewer replicates"
        )


def chunk_size(problem: Problem, budget: int, replicates: int, max_elements: int = MAX_ELEMENTS) -> int:
    """Replicates per chunk so that ``budget * chunk * (event + param numel) <= max_elements``."""
    per_replicate = budget * (problem.event_numel() + problem.param_numel())
    return max(1, min(replicates, max_elements // per_replicate))


def replicate_estimates(
    problem: Problem,
    estimator: GradientEstimator,
    budget: int,
    replicates: int,
    seed: int,
    *,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[dict[str, Tensor], float]:
    """``replicates`` independent ``budget``-sample estimates, each ``(R, *param_shape)``.

    Returns the estimates (detached) and the wall-clock seconds spent (preparation included unless
    the estimator declares it amortised, as the EMA warm-up is).
    Raises :class:`NonFiniteCostError` naming the problem, estimator and budget on NaN or inf.
    """
    _check_counts(budget, replicates)
    estimator.check(problem, budget)
    check_memory(problem, replicates)
    device = next(iter(problem.params.values())).device
    devices = [device.index or 0] if device.type == "cuda" else []
    step = chunk_size(problem, budget, replicates, max_elements)
    out: dict[str, Tensor] = {}
    where = f"problem {problem.spec!r}, estimator {estimator.name!r}, budget {budget}"
    start = time.perf_counter()
    with torch.random.fork_rng(devices=devices), distribution_validation(False):
        if device.type == "cuda":
            torch.manual_seed(cell_seed(seed, problem.spec, estimator.name, int(budget)))
        else:
            # the CPU generator alone: torch.manual_seed also queues a lazy seeding of every CUDA
            # device, recording a traceback each time (0.45 ms a cell, half a small cell's time)
            torch.default_generator.manual_seed(cell_seed(seed, problem.spec, estimator.name, int(budget)))
        for first in range(0, replicates, step):
            params = replicate(problem.params, (min(step, replicates - first),))
            try:
                prepared = time.perf_counter()
                state = estimator.prepare(problem, params, budget)
                if estimator.amortised_prepare:
                    start += time.perf_counter() - prepared
                grads = estimator.estimate(problem, params, budget, state)
            except NonFiniteCostError as err:
                raise NonFiniteCostError(f"{where}: {err}") from None
            for name, g in grads.items():
                # one preallocated buffer per parameter: no per-chunk tensors left between the
                # chunks' large temporaries, which would fragment the heap (RSS grew with R)
                if name not in out:
                    out[name] = torch.empty((replicates, *g.shape[1:]), dtype=g.dtype, device=g.device)
                out[name][first:first + g.shape[0]] = g.detach()
            del grads, params, state
    for name, estimates in out.items():     # once per cell on the whole buffer, not once per chunk
        if not all_finite(estimates):
            raise NonFiniteCostError(f"{where}: the gradient estimate of {name!r} is NaN or inf")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return out, seconds


def summarise_estimates(
    problem: Problem, estimator: GradientEstimator, budget: int, seed: int,
    estimates: dict[str, Tensor], seconds: float, groups: dict[str, list[str]] | None = None,
    version: str | None = None,
) -> list[dict]:
    """Tidy rows (:data:`COLUMNS`) for given estimates: one per parameter, then one per group.

    ``groups`` maps a label (e.g. ``"encoder"``) to parameter names whose tensors are summarised
    together, as one concatenated vector (same reductions as a tensor parameter). ``version``
    is the ``code_version`` column (default: :func:`gradnoise.provenance.cell_version`, best
    taken before the estimates are computed, as :func:`measure_cell` does).
    """
    truth = problem.true_gradient(estimator.objective(budget))
    replicates = next(iter(estimates.values())).shape[0]
    if version is None:
        version = provenance.cell_version(problem, estimator).text

    def flat(tensors, names, lead):
        return torch.cat([tensors[n].reshape(*lead, -1) for n in names], -1).double().cpu().numpy()

    parts = [(name, [name]) for name in estimates] + [(g, list(n)) for g, n in (groups or {}).items()]
    rows = []
    for label, names in parts:
        row = {
            "problem": problem.spec, "estimator": estimator.name, "param": label, "budget": budget,
            "replicates": replicates, "seed": seed, "truth_kind": truth.kind,
            "seconds_per_estimate": seconds / replicates,
            "cost_evals": estimator.cost_evals_for(problem, budget), "code_version": version,
            "threads": torch.get_num_threads(),
        }
        row.update(statistics.summarise(
            flat(estimates, names, (replicates,)), flat(truth.values, names, ()), flat(truth.se, names, ())
        ))
        rows.append(row)
    return rows


def measure_cell(
    problem: Problem, estimator: GradientEstimator, budget: int, replicates: int, seed: int = 0,
    *, max_elements: int = MAX_ELEMENTS,
) -> list[dict]:
    """Tidy rows (one per parameter) for one cell; see :data:`COLUMNS`."""
    version = provenance.cell_version(problem, estimator).text     # before anything runs
    estimates, seconds = replicate_estimates(
        problem, estimator, budget, replicates, seed, max_elements=max_elements
    )
    return summarise_estimates(problem, estimator, budget, seed, estimates, seconds, version=version)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or one clear ``ValueError`` when it is unknown or absent."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested, but torch finds no CUDA device on this machine; use 'cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return device


def cells(
    problems: Iterable[str | Problem], estimators: Iterable[str | GradientEstimator],
    budgets: Iterable[int], *, device: str | torch.device = "cpu", on_invalid: str = "raise",
    skipped: list[str] | None = None,
) -> list[tuple[Problem, GradientEstimator, int]]:
    """The valid (problem, estimator, budget) cells of a grid, built and checked up front.

    ``on_invalid="raise"`` re-raises the first applicability error; ``"skip"`` drops such cells,
    appending each distinct one-line reason to ``skipped``.
    """
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid must be 'raise' or 'skip', got {on_invalid!r}")
    device = check_device(device)
    for what, items, cls in (("problems", problems, Problem), ("estimators", estimators, GradientEstimator)):
        for item in items:
            if not isinstance(item, (str, cls)):
                raise TypeError(f"{what} must be names (str, with options as 'name:key=value') or "
                                f"{cls.__name__} objects, got {item!r} ({type(item).__name__})")
    probs = [make_problem(p).to(device) for p in problems]
    ests = [get_estimator(e) for e in estimators]
    budgets = list(budgets)
    for n in budgets:
        _check_counts(n, 2)
    budgets = [int(n) for n in budgets]
    out = []
    for problem in probs:
        for estimator in ests:
            for n in budgets:
                try:
                    estimator.check(problem, n)
                except (EstimatorNotApplicable, ValueError) as err:
                    if on_invalid == "raise":
                        raise
                    reason = f"{problem.spec} x {estimator.name}: {err}"
                    if skipped is not None and reason not in skipped:
                        skipped.append(reason)
                    continue
                out.append((problem, estimator, n))
    return out


def iter_measure(
    grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int, seed: int = 0,
    *, max_elements: int = MAX_ELEMENTS,
) -> Iterator[list[dict]]:
    """Rows of each cell of ``grid`` in turn (lets callers show progress and save as they go)."""
    for problem, estimator, n in grid:
        yield measure_cell(problem, estimator, n, replicates, seed, max_elements=max_elements)


def measure(
    problems: Iterable[str | Problem] | str | Problem,
    estimators: Iterable[str | GradientEstimator] | str | GradientEstimator,
    budgets: Iterable[int] | int,
    replicates: int = 1000,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    on_invalid: str = "raise",
    progress: bool = False,
    max_elements: int = MAX_ELEMENTS,
    threads: int | None = 1,
    client=None,
) -> pd.DataFrame:
    """Measure every problem x estimator x budget; a tidy DataFrame with :data:`COLUMNS`.

    >>> df = measure("gaussian-cos:k=5", ["reinforce", "reparam"], [1, 10, 100], replicates=1000)

    Problems and estimators are names (with options) or objects; ``device`` is ``"cpu"`` by
    default (``"cuda"`` where present). Invalid combinations raise unless ``on_invalid="skip"``.
    Cells run at ``threads`` torch intra-op threads (default 1, see :func:`torch_threads`;
    ``None`` leaves torch's setting). With ``client`` (a ``distributed.Client``) the cells run
    on its Dask workers (:func:`gradnoise.cluster.map_cells`), with the same numbers, bitwise,
    in the same row order.
    """
    def one(value, cls, what):
        if isinstance(value, (str, cls)):
            return [value]
        try:
            return list(value)
        except TypeError:
            raise TypeError(f"{what} must be a name, a {cls.__name__} or a list of them, got {value!r} "
                            f"({type(value).__name__})") from None

    _check_counts(1, replicates)
    if _is_count(budgets):
        budgets = [budgets]
    elif isinstance(budgets, (str, bytes)) or not isinstance(budgets, Iterable):
        raise TypeError(f"budgets must be an integer or a list of integers, got {budgets!r} ({type(budgets).__name__})")
    grid = cells(one(problems, Problem, "problems"), one(estimators, GradientEstimator, "estimators"),
                 budgets, device=device, on_invalid=on_invalid)
    if client is not None:
        from .cluster import map_cells

        done = map_cells(client, grid, replicates, seed, threads=threads, max_elements=max_elements)
    else:
        done = enumerate(iter_measure(grid, replicates, seed, max_elements=max_elements))
    if progress:
        from tqdm.auto import tqdm

        done = tqdm(done, total=len(grid), unit="cell", desc="measuring")
    by_cell: dict[int, list[dict]] = {}
    with torch_threads(threads) if client is None else contextlib.nullcontext():
        for index, cell_rows in done:
            by_cell[index] = cell_rows
    return pd.DataFrame([row for index in range(len(grid)) for row in by_cell[index]], columns=COLUMNS)
