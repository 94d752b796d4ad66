r"""The measurement engine: R independent estimates per cell, vectorised, seeded, summarised.

A *cell* is (problem, estimator, budget N). For each cell the engine

1. checks the estimator can run (clear errors: unknown names, N < 1, R < 2, pathwise without
   ``rsample``, IWAE on a plain expectation);
2. seeds torch's generator with :func:`cell_seed` (seed, problem spec, estimator name, N), inside
   ``torch.random.fork_rng`` so the caller's stream is untouched, and so that adding an
   estimator or a budget changes no other cell's numbers;
3. computes the R estimates in chunks of replicated parameter leaves (see
   :mod:`estimators.base`): one forward and one backward pass per chunk, never a Python loop
   over replicates. A chunk holds at most ``max_elements`` (default 2**22) sample-sized elements,
   which bounds memory (R=10^4, N=10^3 on a scalar problem stays far below 2 GB);
4. summarises each parameter with :func:`estimators.statistics.summarise` against the truth of
   the estimator's objective, into one tidy row per problem x estimator x param x budget.

Same seed, same numbers, bitwise, on the CPU (for the same ``max_elements``).
"""
from __future__ import annotations

import hashlib
import time
from typing import Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor

from . import statistics
from .base import all_finite, EstimatorNotApplicable, GradientEstimator, NonFiniteCostError, Problem, replicate
from .registry import get_estimator, make_problem

COLUMNS = [
    "problem", "estimator", "param", "budget", "replicates", "seed", "truth", "truth_kind",
    "truth_se", "mean", "bias", "bias_z", "variance", "variance_ci_low", "variance_ci_high",
    "snr", "mse", "seconds_per_estimate", "cost_evals", "bias_p", "coords",
]
MAX_ELEMENTS = 2**22


def cell_seed(seed: int, problem: str, estimator: str, budget: int) -> int:
    """A 63-bit seed derived from the cell, stable across runs, platforms and Python versions."""
    key = f"{seed}|{problem}|{estimator}|{budget}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _check_counts(budget, replicates) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget N must be an integer >= 1, got {budget!r}")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 2:
        raise ValueError(
            f"replicates R must be an integer >= 2 (a variance needs two estimates), got {replicates!r}"
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
    device = next(iter(problem.params.values())).device
    devices = [device.index or 0] if device.type == "cuda" else []
    step = chunk_size(problem, budget, replicates, max_elements)
    chunks: list[dict[str, Tensor]] = []
    where = f"problem {problem.spec!r}, estimator {estimator.name!r}, budget {budget}"
    start = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cell_seed(seed, problem.spec, estimator.name, budget))
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
                if not all_finite(g):
                    raise NonFiniteCostError(f"{where}: the gradient estimate of {name!r} is NaN or inf")
            chunks.append({k: g.detach() for k, g in grads.items()})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}, seconds


def summarise_estimates(
    problem: Problem, estimator: GradientEstimator, budget: int, seed: int,
    estimates: dict[str, Tensor], seconds: float, groups: dict[str, list[str]] | None = None,
) -> list[dict]:
    """Tidy rows (:data:`COLUMNS`) for given estimates: one per parameter, then one per group.

    ``groups`` maps a label (e.g. ``"encoder"``) to parameter names whose tensors are summarised
    together, as one concatenated vector (same reductions as a tensor parameter).
    """
    truth = problem.true_gradient(estimator.objective(budget))
    replicates = next(iter(estimates.values())).shape[0]

    def flat(tensors, names, lead):
        return torch.cat([tensors[n].reshape(*lead, -1) for n in names], -1).double().cpu().numpy()

    parts = [(name, [name]) for name in estimates] + [(g, list(n)) for g, n in (groups or {}).items()]
    rows = []
    for label, names in parts:
        row = {
            "problem": problem.spec, "estimator": estimator.name, "param": label, "budget": budget,
            "replicates": replicates, "seed": seed, "truth_kind": truth.kind,
            "seconds_per_estimate": seconds / replicates, "cost_evals": estimator.cost_evals_for(problem, budget),
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
    estimates, seconds = replicate_estimates(
        problem, estimator, budget, replicates, seed, max_elements=max_elements
    )
    return summarise_estimates(problem, estimator, budget, seed, estimates, seconds)


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
    probs = [make_problem(p).to(device) for p in problems]
    ests = [get_estimator(e) for e in estimators]
    budgets = list(budgets)
    for n in budgets:
        _check_counts(n, 2)
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
) -> pd.DataFrame:
    """Measure every problem x estimator x budget; a tidy DataFrame with :data:`COLUMNS`.

    >>> df = measure("gaussian-cos:k=5", ["reinforce", "reparam"], [1, 10, 100], replicates=1000)

    Problems and estimators are names (with options) or objects; ``device`` is ``"cpu"`` by
    default (``"cuda"`` where present). Invalid combinations raise unless ``on_invalid="skip"``.
    """
    one = lambda v, cls: [v] if isinstance(v, (str, cls)) else list(v)  # noqa: E731
    _check_counts(1, replicates)
    grid = cells(one(problems, Problem), one(estimators, GradientEstimator),
                 [budgets] if isinstance(budgets, int) else budgets, device=device, on_invalid=on_invalid)
    rows: list[dict] = []
    iterator = iter_measure(grid, replicates, seed, max_elements=max_elements)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(grid), unit="cell", desc="measuring")
    for cell_rows in iterator:
        rows.extend(cell_rows)
    return pd.DataFrame(rows, columns=COLUMNS)
