r"""The measurement engine: R independent estimates per cell, vectorised, seeded, summarised.

A *cell* is (problem, estimator, budget N). For each cell the engine

1. checks the problem and that the estimator can run (clear errors: unknown names, N < 1, R < 2,
   a non-finite parameter, a cost of the wrong shape, pathwise without ``rsample`` or on a cost
   without a usable gradient in the sample, IWAE on a plain expectation);
2. computes the R estimates in blocks of a fixed size (:func:`blocks`, a function of the cell
   alone), block ``i`` from torch's generator seeded with :func:`block_seed` ``(cell_seed(seed,
   problem spec, estimator name, N), i)`` inside ``torch.random.fork_rng`` (the caller's stream
   untouched; adding an estimator or a budget changes no other cell's numbers), every draw of the
   block inside it: the estimator's ``init`` (a pilot), its warm-up steps and the estimate;
3. within a block, one forward and one backward pass over replicated parameter leaves (see
   :mod:`gradnoise.base`), never a Python loop over replicates; each block's estimates are
   written into one preallocated ``(R, *shape)`` buffer per parameter, so the peak memory does
   not grow with R beyond the estimates themselves (process peak RSS with imports,
   gaussian-cos, reinforce, N=10^3: 489 MiB at R=10^4, 531 MiB at R=10^6, where keeping and
   concatenating per-chunk tensors fragmented the heap to 6.7 GB); a cell whose estimates and
   one block's samples (N, or a larger pilot batch) would not fit in the available memory is
   refused up front (:func:`check_memory`), and so is a cell whose cost evaluations exceed a
   stated bound (:func:`check_cost_evals`, default :data:`MAX_COST_EVALS`);
4. summarises each parameter with :func:`gradnoise.statistics.summarise` against the truth of
   the estimator's objective, into one tidy row per problem x estimator x param x budget.

Same seed, same numbers, bitwise, on the CPU (at the same thread count, whatever
``max_elements``, the order of the blocks or where each runs), in this process or on any Dask worker (:mod:`gradnoise.cluster`). Cells run at one torch
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
from .base import BYTES_PER_SAMPLE_ELEMENT, all_finite, as_estimate, EstimatorNotApplicable, forked_stream, GradientEstimator, NonFiniteCostError, Problem, replicate
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


def derived_seed(*parts) -> int:
    """A 63-bit seed from ``parts`` (their ``str`` joined by ``|``): blake2b, stable across runs,
    platforms and Python versions; what every seed of a cell, block or training run is derived by."""
    key = "|".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def cell_seed(seed: int, problem: str, estimator: str, budget: int) -> int:
    """A 63-bit seed derived from the cell, stable across runs, platforms and Python versions."""
    return derived_seed(seed, problem, estimator, budget)


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


#: default bound on a cell's cost evaluations, R x (per estimate + amortised warm-up)
#: (:func:`cell_cost_evals`): the default sweep, report, studies and asv grids need at most 2.2e8
#: (asv's peak-memory cell of reinforce-ema on gaussian-cos, R = 10^4, N = 10^3, warm-up 20)
MAX_COST_EVALS = 10**10


def cell_bytes(
    problem: Problem, replicates: int, estimator: GradientEstimator | None = None, budget: int | None = None,
) -> tuple[int, int]:
    """What a cell of ``replicates`` holds at once, in bytes: ``(estimates, block)``, the ``R x P``
    estimates (with summarising's float64 copies, :data:`BYTES_PER_ESTIMATE` each) and one block's
    sample-sized work, ``min(R, block) x B x (E + P)`` elements of the estimator's
    :meth:`~gradnoise.base.GradientEstimator.sample_bytes` (0 without an estimator)."""
    estimates = replicates * problem.param_numel() * BYTES_PER_ESTIMATE
    if estimator is None:
        return estimates, 0
    rows = min(replicates, block_size(problem, estimator, budget))      # one block at a time
    per_row = estimator.largest_batch(budget) * (problem.event_numel() + problem.param_numel())
    return estimates, rows * per_row * estimator.sample_bytes(problem, budget)


def check_memory(
    problem: Problem, replicates: int, estimator: GradientEstimator | None = None, budget: int | None = None,
    *, max_elements: int = MAX_ELEMENTS,
) -> None:
    """Refuse, with one line (``MemoryError``), a cell that would not fit in memory.

    The engine holds the ``R x P`` estimates (P the problem's parameter count; summarising adds
    float64 copies of one parameter at a time: :data:`BYTES_PER_ESTIMATE` each) and one chunk's
    sample-sized work: one block (:func:`block_size`) of ``block x B x (E + P)`` elements of
    the estimator's :meth:`~gradnoise.base.GradientEstimator.sample_bytes` (:func:`cell_bytes`), B its
    :meth:`~gradnoise.base.GradientEstimator.largest_batch` (N, or a larger pilot) and E the event
    size. A block holds at least one replicate: with N (or the pilot) huge, one replicate's
    samples alone may not fit. ``max_elements`` is kept for callers; blocks, not it, set the size.
    Without an estimator only the estimates are counted.
    """
    estimates, samples = cell_bytes(problem, replicates, estimator, budget)
    need = estimates + samples
    if need < SMALL_CELL_BYTES:      # not worth reading /proc/meminfo (15 us, a small cell's 5%)
        return
    have = available_memory()
    if have is None or need <= have:
        return
    gib = 2**30
    if estimator is None or estimates >= samples:
        raise MemoryError(
            f"problem {problem.spec!r} with R = {replicates} replicates needs about {need / gib:.1f} GiB "
            f"for its {problem.param_numel()} x R estimates{'' if estimator else ' alone'}, more than the "
            f"{have / gib:.1f} GiB available; use fewer replicates"
        )
    batch, chunk = estimator.largest_batch(budget), min(replicates, block_size(problem, estimator, budget))
    pilot = " (its pilot batch)" if batch > budget else ""
    raise MemoryError(
        f"problem {problem.spec!r} x estimator {estimator.name!r} at N = {budget} needs about {need / gib:.1f} GiB "
        f"for {chunk} replicate(s) x {batch} samples{pilot} at once, more than the {have / gib:.1f} GiB "
        f"available; use a smaller N{' or pilot' if pilot else ''}"
    )


def cell_cost_evals(problem: Problem, estimator: GradientEstimator, budget: int, replicates: int) -> int:
    """Cost evaluations of one cell: ``R x (cost_evals_for(problem, N) + amortised_evals(N))``,
    the per-estimate evaluations (pilot included) and an amortised warm-up."""
    return replicates * (estimator.cost_evals_for(problem, budget) + estimator.amortised_evals(budget))


def check_max_cost_evals(max_cost_evals: float | None) -> float | None:
    """``max_cost_evals`` if it is None (no bound) or a number > 0 (``inf``: no bound), else one ``ValueError``."""
    if max_cost_evals is not None and (
            isinstance(max_cost_evals, bool) or not isinstance(max_cost_evals, numbers.Real) or not max_cost_evals > 0):
        raise ValueError(f"max_cost_evals must be a number > 0 (None or inf: no bound), got {max_cost_evals!r}")
    return max_cost_evals


def check_cost_evals(
    problem: Problem, estimator: GradientEstimator, budget: int, replicates: int,
    max_cost_evals: float | None = MAX_COST_EVALS,
) -> None:
    """Refuse, with one ``ValueError`` line giving the estimate, a cell whose cost evaluations
    (:func:`cell_cost_evals`) exceed ``max_cost_evals`` (None: no bound)."""
    if check_max_cost_evals(max_cost_evals) is None:
        return
    total = cell_cost_evals(problem, estimator, budget, replicates)
    if total <= max_cost_evals:
        return
    warm = estimator.amortised_evals(budget)
    raise ValueError(
        f"problem {problem.spec!r} x estimator {estimator.name!r} at N = {budget}, R = {replicates} would spend "
        f"about {total:.3g} cost evaluations (R x ({estimator.cost_evals_for(problem, budget)} per estimate"
        f"{f' + {warm} warm-up' if warm else ''})), more than the bound of {max_cost_evals:.3g}; use a smaller "
        f"N{', warm-up' if warm else ''} or R, or lift the bound (max_cost_evals= in Python, "
        f"--max-cost-evals on the command line)"
    )


def check_grid(
    grid: Sequence[tuple[Problem, GradientEstimator, int]], replicates: int, *,
    max_elements: int = MAX_ELEMENTS, max_cost_evals: float | None = MAX_COST_EVALS,
) -> None:
    """Before any cell of ``grid`` is computed: every cell within memory (:func:`check_memory`,
    which no option lifts) and within the cost bound (:func:`check_cost_evals`); one line otherwise."""
    check_max_cost_evals(max_cost_evals)
    for problem, estimator, n in grid:
        check_memory(problem, replicates, estimator, n, max_elements=max_elements)
        check_cost_evals(problem, estimator, n, replicates, max_cost_evals)


#: which random numbers a cell draws: bumped whenever a change makes every cell draw others (the
#: one change of numbers the block streams made); ``gradnoise compare`` and ``gradnoise history``
#: read it at each commit and name the commit where it changed
RANDOM_STREAMS = "blocks-1"

#: sample-sized elements of one block of replicates (``block x B x (E + P)``, B the largest batch):
#: a constant, so that a cell's blocks, and so its numbers, never depend on the memory available
BLOCK_ELEMENTS = 2**22


def block_size(problem: Problem, estimator: GradientEstimator, budget: int) -> int:
    """Replicates per block: ``BLOCK_ELEMENTS // (B x (E + P))``, at least one, B the estimator's
    :meth:`~gradnoise.base.GradientEstimator.largest_batch` (N, or a larger pilot). A function of
    the cell alone (not of ``max_elements`` or the machine)."""
    per_replicate = estimator.largest_batch(budget) * (problem.event_numel() + problem.param_numel())
    return max(1, BLOCK_ELEMENTS // per_replicate)


def blocks(problem: Problem, estimator: GradientEstimator, budget: int, replicates: int) -> list[tuple[int, int, int]]:
    """The cell's blocks ``(index, first replicate, size)``: replicates ``first .. first + size - 1``."""
    size = block_size(problem, estimator, budget)
    return [(i, first, min(size, replicates - first)) for i, first in enumerate(range(0, replicates, size))]


def block_seed(cell: int, index: int) -> int:
    """The seed of block ``index`` of a cell seeded ``cell`` (:func:`cell_seed`): the cell's seed for
    block 0 (so a cell of one block draws what it drew before blocks existed), else a 63-bit hash
    of (cell seed, index)."""
    if index == 0:
        return cell
    return derived_seed(cell, f"block {index}")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """A block's stream: :func:`gradnoise.base.forked_stream` ``(seed, device)`` with
    ``torch.distributions``' argument validation off (see :func:`distribution_validation`)."""
    with forked_stream(seed, device), distribution_validation(False):
        yield


def block_estimates(
    problem: Problem, estimator: GradientEstimator, budget: int, size: int, seed: int,
) -> tuple[dict[str, Tensor], float]:
    """One block: ``size`` independent estimates at a frozen point, every random draw (the
    estimator's :meth:`~gradnoise.base.GradientEstimator.init`, its warm-up steps and the estimate)
    from torch's generator seeded with ``seed``. Returns the estimates ``{name: (size, *shape)}``
    (detached) and the seconds spent outside an amortised ``init`` and warm-up."""
    device = next(iter(problem.params.values())).device
    leaves = replicate(problem.params, (size,))
    with seeded(seed, device):
        start = time.perf_counter()
        state = estimator.init(problem, leaves, budget)
        for _ in range(estimator.warmup_steps(budget)):
            state = estimator.step(problem, leaves, budget, state).state
        amortised = time.perf_counter() - start if estimator.amortised_prepare else 0.0
        grads = as_estimate(estimator.estimate(problem, leaves, budget, state), state).grads
        grads = {k: g.detach() for k, g in grads.items()}
    return grads, time.perf_counter() - start - amortised


def replicate_estimates(
    problem: Problem,
    estimator: GradientEstimator,
    budget: int,
    replicates: int,
    seed: int,
    *,
    max_elements: int = MAX_ELEMENTS,
    order: Sequence[int] | None = None,
) -> tuple[dict[str, Tensor], float]:
    """``replicates`` independent ``budget``-sample estimates, each ``(R, *param_shape)``.

    The replicates are computed in blocks of a fixed size (:func:`blocks`), block ``i`` from
    torch's generator seeded with :func:`block_seed` ``(cell_seed(...), i)`` (pilots, warm-ups
    and ``init`` included), into one preallocated buffer per parameter. The numbers depend on the
    cell alone: not on ``max_elements`` (which only bounds the memory check), the order the blocks
    run in (``order``: block indices, default in turn), nor on which worker runs which block.
    Returns the estimates (detached) and the wall-clock seconds spent (``init`` and warm-up left
    out where the estimator declares them amortised, as the EMA baseline's are).
    Raises :class:`NonFiniteCostError` naming the problem, estimator and budget on NaN or inf.
    """
    _check_counts(budget, replicates)
    parts = blocks(problem, estimator, budget, replicates)
    if order is not None:
        if sorted(order) != list(range(len(parts))):
            raise ValueError(f"order must list the block indices 0..{len(parts) - 1} once each, got {list(order)!r}")
        parts = [parts[i] for i in order]
    out, seconds = _fill_blocks(problem, estimator, budget, replicates, seed, parts, 0, replicates,
                                max_elements=max_elements)
    check_estimates(problem, estimator, budget, out)
    return out, seconds


def _fill_blocks(problem, estimator, budget, replicates, seed, parts, first_row, rows, *, max_elements=MAX_ELEMENTS):
    """The estimates of the blocks ``parts`` (``(index, first replicate, size)``) of a cell, written
    into one preallocated ``(rows, *shape)`` buffer per parameter at ``first - first_row``."""
    _check_counts(budget, replicates)
    estimator.check(problem, budget)
    check_memory(problem, replicates, estimator, budget, max_elements=max_elements)
    device = next(iter(problem.params.values())).device
    cell = cell_seed(seed, problem.spec, estimator.name, int(budget))
    out: dict[str, Tensor] = {}
    where = f"problem {problem.spec!r}, estimator {estimator.name!r}, budget {budget}"
    seconds = 0.0
    for index, first, size in parts:
        try:
            grads, spent = block_estimates(problem, estimator, budget, size, block_seed(cell, index))
        except NonFiniteCostError as err:
            raise NonFiniteCostError(f"{where}: {err}") from None
        seconds += spent
        for name, g in grads.items():
            # one preallocated buffer per parameter: no per-block tensors left between the
            # blocks' large temporaries, which would fragment the heap (RSS grew with R)
            if name not in out:
                out[name] = torch.empty((rows, *g.shape[1:]), dtype=g.dtype, device=g.device)
            out[name][first - first_row:first - first_row + size] = g
        del grads
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, seconds


def check_estimates(problem: Problem, estimator: GradientEstimator, budget: int, estimates: dict[str, Tensor]) -> None:
    """One :class:`NonFiniteCostError` naming the cell and the parameter where a cell's gathered
    estimates hold a NaN or an inf (checked once per cell, on the whole buffer)."""
    where = f"problem {problem.spec!r}, estimator {estimator.name!r}, budget {budget}"
    for name, values in estimates.items():
        if not all_finite(values):
            raise NonFiniteCostError(f"{where}: the gradient estimate of {name!r} is NaN or inf")


def chunks(problem: Problem, estimator: GradientEstimator, budget: int, replicates: int, parts: int) -> list[tuple[int, int]]:
    """A cell's blocks (:func:`blocks`) cut into at most ``parts`` runs of consecutive blocks, as
    ``(first block, stop block)`` ranges of as equal a number of blocks as can be, in order."""
    count = len(blocks(problem, estimator, budget, replicates))
    parts = max(1, min(int(parts), count))
    edges = [round(k * count / parts) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def chunk_estimates(
    problem: Problem, estimator: GradientEstimator, budget: int, replicates: int, seed: int,
    start: int, stop: int, *, max_elements: int = MAX_ELEMENTS,
) -> tuple[int, dict[str, Tensor], float]:
    """Blocks ``start .. stop - 1`` of a cell (:func:`blocks`), each from its own stream
    (:func:`block_seed`): ``(first replicate, {name: (rows, *shape)}, seconds)``, the rows being
    replicates ``first .. first + rows - 1`` of the cell, bitwise those :func:`replicate_estimates`
    puts there. A cell's chunks can run anywhere, in any order; :func:`gather_chunks` puts them
    back together. Not checked for NaN here: the whole cell is, once gathered."""
    _check_counts(budget, replicates)
    parts = blocks(problem, estimator, budget, replicates)[start:stop]
    if not parts:
        raise ValueError(f"no blocks {start}..{stop - 1} in a cell of {len(blocks(problem, estimator, budget, replicates))}")
    first = parts[0][1]
    rows = parts[-1][1] + parts[-1][2] - first
    out, seconds = _fill_blocks(problem, estimator, budget, replicates, seed, parts, first, rows,
                                max_elements=max_elements)
    return first, out, seconds


def gather_chunks(
    problem: Problem, estimator: GradientEstimator, budget: int, replicates: int,
    pieces: Iterable[tuple[int, dict[str, Tensor], float]],
) -> tuple[dict[str, Tensor], float]:
    """The cell's estimates ``{name: (R, *shape)}`` and seconds from its chunks
    (:func:`chunk_estimates`, in any order), in replicate order: bitwise what
    :func:`replicate_estimates` returns. Every replicate must be covered once (else ``ValueError``);
    a NaN or inf is one :class:`NonFiniteCostError`, as in a sequential run."""
    out: dict[str, Tensor] = {}
    seconds, covered = 0.0, 0
    for first, part, spent in sorted(pieces, key=lambda piece: piece[0]):
        seconds += spent
        rows = next(iter(part.values())).shape[0]
        if first != covered:
            raise ValueError(f"chunks cover replicates 0..{covered - 1} and then start at {first}")
        covered += rows
        for name, g in part.items():
            if name not in out:
                out[name] = torch.empty((replicates, *g.shape[1:]), dtype=g.dtype, device=g.device)
            out[name][first:first + rows] = g
    if covered != replicates:
        raise ValueError(f"chunks cover {covered} of {replicates} replicates")
    check_estimates(problem, estimator, budget, out)
    return out, seconds


def summarise_estimates(
    problem: Problem, estimator: GradientEstimator, budget: int, seed: int,
    estimates: dict[str, Tensor], seconds: float, groups: dict[str, list[str]] | None = None,
    version: str | None = None, intervals: bool = True,
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
            flat(estimates, names, (replicates,)), flat(truth.values, names, ()), flat(truth.se, names, ()),
            intervals=intervals,
        ))
        rows.append(row)
    return rows


def measure_cell(
    problem: Problem, estimator: GradientEstimator, budget: int, replicates: int, seed: int = 0,
    *, max_elements: int = MAX_ELEMENTS, intervals: bool = True,
) -> list[dict]:
    """Tidy rows (one per parameter) for one cell; see :data:`COLUMNS` (``intervals=False``: the
    variance interval left out, NaN; see :func:`gradnoise.statistics.summarise`)."""
    version = provenance.cell_version(problem, estimator).text     # before anything runs
    estimates, seconds = replicate_estimates(
        problem, estimator, budget, replicates, seed, max_elements=max_elements
    )
    return summarise_estimates(problem, estimator, budget, seed, estimates, seconds, version=version,
                               intervals=intervals)


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
    appending each distinct one-line reason to ``skipped``. Only the declared
    :class:`EstimatorNotApplicable` (which includes N below the estimator's ``min_budget``) is
    skipped: an invalid problem (a cost of the wrong shape, a non-finite parameter) raises.
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
                except EstimatorNotApplicable as err:
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
    max_cost_evals: float | None = MAX_COST_EVALS,
    params=None,
) -> pd.DataFrame:
    """Measure every problem x estimator x budget; a tidy DataFrame with :data:`COLUMNS`.

    >>> df = measure("gaussian-cos:k=5", ["reinforce", "reparam"], [1, 10, 100], replicates=1000)

    Problems and estimators are names (with options) or objects; ``device`` is ``"cpu"`` by
    default (``"cuda"`` where present). Invalid combinations raise unless ``on_invalid="skip"``.
    Cells run at ``threads`` torch intra-op threads (default 1, see :func:`torch_threads`;
    ``None`` leaves torch's setting). With ``client`` (a ``distributed.Client``) the cells run
    on its Dask workers (:func:`gradnoise.cluster.map_cells`), with the same numbers, bitwise,
    in the same row order.

    Before any cell is computed, every cell is checked against memory and against
    ``max_cost_evals`` (:func:`check_grid`; default :data:`MAX_COST_EVALS`, None: no bound).

    ``params`` (``{name: tensor}``) measures every problem at that parameter point instead of its
    own (:meth:`~gradnoise.base.Problem.at`: validated there, its own truths and random streams,
    its spec suffixed ``@`` and a hash of the values); None: each problem's own parameters.
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
    check_max_cost_evals(max_cost_evals)
    if _is_count(budgets):
        budgets = [budgets]
    elif isinstance(budgets, (str, bytes)) or not isinstance(budgets, Iterable):
        raise TypeError(f"budgets must be an integer or a list of integers, got {budgets!r} ({type(budgets).__name__})")
    if params is not None:
        problems = [(make_problem(p) if isinstance(p, str) else p).at(params) for p in one(problems, Problem, "problems")]
    grid = cells(one(problems, Problem, "problems"), one(estimators, GradientEstimator, "estimators"),
                 budgets, device=device, on_invalid=on_invalid)
    check_grid(grid, replicates, max_elements=max_elements, max_cost_evals=max_cost_evals)
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
