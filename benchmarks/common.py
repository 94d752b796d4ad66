"""Grids, cells and seeds shared by the benchmark classes (no benchmarks live here).

A *cell* is (problem, estimator, budget N), as in :mod:`gradnoise.engine`. :func:`cell` builds
one from names and turns every declared reason it cannot run in the installed commit (a pathwise
estimator on a discrete problem, N below the estimator's minimum, a model-only estimator on a
plain expectation: :class:`gradnoise.EstimatorNotApplicable`; a name this commit does not
register) into ``NotImplementedError``. Any other error (a problem that became invalid) is no
such reason: the cell stays listed and its benchmarks fail with that error.

The grid benchmarks take one asv parameter, ``cell``, whose values are the labels of
:data:`CELLS`: ``"problem, estimator, N"`` for each cell of ``PROBLEMS x ESTIMATORS x BUDGETS``
that can run, decided at import by :func:`cell` in the installed commit. asv runs every value of
a parameter in its own process, skipped or not; listing only the cells that run, instead of the
product with the impossible combinations skipped in ``setup``, saves those processes. A label
reads like the ``'problem', 'estimator', N`` of the product it replaced, so ``gradnoise compare``
and ``gradnoise history`` match a cell across the change (``gradnoise.analysis.compare.cell_label``).

Importing this module builds and validates the problems (:func:`problem`, cached): asv's
forkserver imports the suite once and forks a process per benchmark and cell, each inheriting
them instead of building them again. No truth is computed at import.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from scipy import stats

import gradnoise
from gradnoise.engine import cell_seed

def _origin(entry) -> str:
    """``"built in"`` or the plugin an entry comes from (:mod:`gradnoise.plugins`); every entry of a
    commit before plugins existed is built in."""
    return str(getattr(entry, "origin", "built in"))


def plugin_problems() -> tuple[str, ...]:
    """The problems plugins register (entry points, ``$GRADNOISE_PLUGINS``) for default grids."""
    entries = getattr(gradnoise.registry, "problem_entries", lambda: [])()
    return tuple(e.name for e in entries if _origin(e) != "built in" and getattr(e, "in_default_sweep", True))


def is_builtin(spec: str, name: str) -> bool:
    """Whether a cell's problem and estimator are both the package's own (not a plugin's)."""
    origins = {}
    for entry in [*getattr(gradnoise.registry, "problem_entries", lambda: [])(),
                  *getattr(gradnoise.registry, "estimator_entries", lambda: [])()]:
        origins.setdefault(entry.name, _origin(entry))
    return all(origins.get(part.partition(":")[0].partition("@")[0], "built in") == "built in" for part in (spec, name))


#: Fast problems only, listed explicitly: a continuous scalar, a vector, a discrete one and a
#: model (the only kind IWAE-type estimators run on). Slow problems (e.g. ones that train a
#: network first) stay out of the suite. A plugin's problems (docs/plugins.md) join after them.
BUILTIN_PROBLEMS = ("gaussian-cos", "gaussian-quadratic-nd", "bernoulli-toy", "linear-gaussian-vae")
PROBLEMS = BUILTIN_PROBLEMS + plugin_problems()

#: Every estimator the installed package and its plugins register; new estimators join the grids by themselves.
ESTIMATORS = tuple(gradnoise.estimator_names())

#: Sample budgets N of one gradient estimate.
BUDGETS = (1, 10, 100)

#: Seed of the suite; each cell's random stream is derived from it and the cell itself.
SEED = 0

#: Independent batches per cell (>= 6 lets asv's Mann-Whitney test reach p < 0.002).
BATCHES = 10
#: Estimates per batch.
REPLICATES = 200


def bias_excess(abs_z: float, threshold: float | None = None) -> float:
    r"""How far a batch's bias :math:`|z|` lies beyond chance: :math:`\max(0, |z| - z^*)`.

    :math:`z^*` is :data:`BIAS_Z_THRESHOLD`. For an unbiased estimator :math:`|z|` is the
    absolute value of a standard normal (or its Bonferroni z-equivalent), so the excess is 0 in
    every batch of the suite with probability at least :math:`1 - \alpha`; a bias :math:`b` of
    an estimator with standard deviation :math:`\sigma` makes :math:`|z| \approx \sqrt{R}\,|b|/\sigma`,
    positive excess once :math:`|b|/\sigma > z^*/\sqrt{R}` (0.31 at R=200 and 106 cells).
    Unlike the raw :math:`|z|` (median 0.67 whatever the code), it moves only when an estimator
    is biased: 0 -> positive is a step that ``asv publish`` and ``asv compare`` report.
    """
    return max(0.0, abs_z - (BIAS_Z_THRESHOLD if threshold is None else threshold))


def one_thread() -> None:
    """Set one torch intra-op thread for this benchmark process; the first line of every
    benchmark's ``setup`` (and of ``setup_cache``), so that asv times and measures at one thread.

    The benchmarks measure the estimators, not torch's thread pool, whose spinning threads make
    timings on a small shared machine (ours have 2 cores) noisy and slow. Set here, not when the
    suite is imported: importing a module changes no process-wide setting (``tests/test_benchmarks.py``).
    """
    torch.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def problem(spec: str) -> gradnoise.Problem:
    """The problem ``spec``, built once per process (so oracle truths are computed once).

    :data:`CELLS` builds (and validates) every problem of the grid at import, so the benchmark
    processes asv forks from its forkserver inherit them; their truths are computed where first
    asked for (``setup``, ``setup_cache``), never at import. Built at one torch thread, as the
    benchmarks run (a reduction in a problem's data could round otherwise), with the process's
    thread count restored afterwards.
    """
    if spec.partition(":")[0] not in gradnoise.problem_names():
        raise NotImplementedError(f"problem {spec!r} is not registered in this commit")
    before = torch.get_num_threads()      # not gradnoise.engine.torch_threads: older commits lack it
    torch.set_num_threads(1)
    try:
        return gradnoise.make_problem(spec)
    finally:
        torch.set_num_threads(before)


def cell(spec: str, name: str, n: int) -> tuple[gradnoise.Problem, gradnoise.GradientEstimator]:
    """``(problem, estimator)`` of a cell that can run, else ``NotImplementedError`` (not in :data:`CELLS`;
    asv records it as skipped where a benchmark's ``setup`` raises it)."""
    if name.partition(":")[0] not in gradnoise.estimator_names():
        raise NotImplementedError(f"estimator {name!r} is not registered in this commit")
    prob, estimator = problem(spec), gradnoise.get_estimator(name)
    if n < estimator.min_budget:      # declared; stated here too for commits whose check says it in a ValueError
        raise NotImplementedError(f"estimator {estimator.name!r} needs an integer budget N >= {estimator.min_budget}, got {n!r}")
    try:
        estimator.check(prob, n)
    except gradnoise.EstimatorNotApplicable as err:   # only this: an invalid problem fails the cell's benchmarks
        raise NotImplementedError(str(err)) from None
    return prob, estimator


def listed(spec: str, name: str, n: int) -> bool:
    """Whether a cell joins the grid: it can run, or building it fails with an error that is not
    ``NotImplementedError`` (listed, so that its benchmarks fail and show the error)."""
    try:
        cell(spec, name, n)
    except NotImplementedError:
        return False
    except Exception:     # noqa: BLE001 -- reported by the cell's benchmarks, not by the import of the suite
        return True
    return True


def label_of(*parts: object) -> str:
    """A cell's asv parameter: ``label_of("gaussian-cos", "reinforce", 10)`` is ``"gaussian-cos, reinforce, 10"``."""
    return ", ".join(map(str, parts))


#: ``{label: (problem, estimator, N)}`` for every cell of the grid that can run (:func:`listed`),
#: in the order of the product; its keys are the values of the ``cell`` parameter.
CELLS: dict[str, tuple[str, str, int]] = {
    label_of(*key): key for key in itertools.product(PROBLEMS, ESTIMATORS, BUDGETS) if listed(*key)}

#: Family-wise error rate of the bias track over one run of the whole suite.
BIAS_ALPHA = 0.01
#: the cells of the package's own problems and estimators: the bias track's family. A plugin's
#: cells are a family of their own, so that installing a plugin moves no built-in's tracked number
BUILTIN_CELLS = [label for label, key in CELLS.items() if is_builtin(key[0], key[1])]
#: Bonferroni threshold on |z| over every batch of every built-in cell of the suite (m = cells that
#: run x batches, not the product of the grid's axes): an unbiased estimator exceeds it in some
#: batch of some cell with probability <= BIAS_ALPHA.
BIAS_Z_THRESHOLD = float(stats.norm.isf(BIAS_ALPHA / (2 * len(BUILTIN_CELLS) * BATCHES)))
#: the same threshold over the plugins' cells (m = their cells x batches)
PLUGIN_BIAS_Z_THRESHOLD = float(stats.norm.isf(BIAS_ALPHA / (2 * max(1, len(CELLS) - len(BUILTIN_CELLS)) * BATCHES)))


def bias_threshold(rows: list[dict]) -> float:
    """The bias track's threshold for a cell's rows: the built-in cells' or the plugins'."""
    return BIAS_Z_THRESHOLD if is_builtin(rows[0]["problem"], rows[0]["estimator"]) else PLUGIN_BIAS_Z_THRESHOLD


def seed_torch(prob: gradnoise.Problem, estimator: gradnoise.GradientEstimator, n: int) -> None:
    """Seed torch's global generator from the cell (the engine's :func:`cell_seed`)."""
    torch.manual_seed(cell_seed(SEED, prob.spec, estimator.name, n))


def _abs_bias_z(rows: list[dict]) -> float:
    """|z| of the whole gradient: the z-equivalent of the Bonferroni p-value over parameters (each
    row's ``bias_p`` is already Bonferroni over its coordinates); |z| itself for one scalar."""
    if len(rows) == 1:
        return abs(rows[0]["bias_z"])
    p = min(1.0, len(rows) * min(r["bias_p"] for r in rows))
    return float(stats.norm.isf(max(p, 1e-300) / 2))


def _inverse_snr(rows: list[dict]) -> float:
    """1/SNR with SNR the mean over all coordinates of |mean_d|/std_d (the rows' ``snr`` extended)."""
    snr = sum(r["snr"] * r["coords"] for r in rows) / sum(r["coords"] for r in rows)
    return 1.0 / snr if snr > 0 else math.inf


@dataclass(frozen=True)
class Track:
    """A quality statistic asv tracks per cell (:mod:`benchmarks.quality` makes one class of each):
    how the engine's per-parameter rows (their :data:`gradnoise.statistics.SUMMARY_COLUMNS`,
    those named in ``columns``) combine into one number for the whole gradient, the asv class
    name, the unit and what it means (the class's docstring)."""

    combine: Callable[[list[dict]], float]
    columns: tuple[str, ...]
    asv_class: str
    unit: str
    doc: str


#: the tracked statistics; adding one is one entry here (its asv class follows)
TRACKS: dict[str, Track] = {
    "variance": Track(lambda rows: math.fsum(r["variance"] for r in rows), ("variance",), "TrackVariance",
                      "variance", "Variance of one N-sample estimate: trace of the covariance of the whole gradient."),
    "mse": Track(lambda rows: math.fsum(r["mse"] for r in rows), ("mse",), "TrackMSE", "MSE",
                 "Mean squared error of one N-sample estimate against the truth of its objective."),
    "bias_excess": Track(lambda rows: bias_excess(_abs_bias_z(rows), bias_threshold(rows)), ("bias_z", "bias_p"),
                         "TrackBiasExcess",
                         "|z| - z*", "Excess of the bias |z| of the mean of R=200 estimates over the suite's "
                         "Bonferroni threshold (:func:`bias_excess`): 0 for an unbiased estimator, whatever "
                         "its random stream; grows like sqrt(R) times the bias over the standard deviation."),
    "inverse_snr": Track(_inverse_snr, ("snr", "coords"), "TrackInverseSNR", "1/SNR",
                         "Inverse signal-to-noise ratio 1/SNR, SNR the mean over coordinates of |mean|/std."),
}


def summary(rows: list[dict]) -> dict[str, float]:
    """One cell's quality over *all* its parameters, one value per :data:`TRACKS` entry."""
    return {name: track.combine(rows) for name, track in TRACKS.items()}
