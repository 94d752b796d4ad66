"""Grids, cells and seeds shared by the benchmark classes (no benchmarks live here).

A *cell* is (problem, estimator, budget N), as in :mod:`estimators.engine`. :func:`cell` builds
one from names and turns every reason it cannot run in the installed commit (a pathwise
estimator on a discrete problem, N below the estimator's minimum, a model-only estimator on a
plain expectation, a name this commit does not register) into ``NotImplementedError``, which asv
records as "skipped" rather than "failed".
"""
from __future__ import annotations

import functools
import math

import torch
from scipy import stats

import estimators
from estimators.engine import cell_seed

#: Fast problems only, listed explicitly: a continuous scalar, a vector, a discrete one and a
#: model (the only kind IWAE-type estimators run on). Slow problems (e.g. ones that train a
#: network first) stay out of the suite.
PROBLEMS = ("gaussian-cos", "gaussian-quadratic-nd", "bernoulli-toy", "linear-gaussian-vae")

#: Every estimator the installed package registers; new estimators join the grids by themselves.
ESTIMATORS = tuple(estimators.estimator_names())

#: Sample budgets N of one gradient estimate.
BUDGETS = (1, 10, 100)

#: Seed of the suite; each cell's random stream is derived from it and the cell itself.
SEED = 0

# One intra-op thread: the benchmarks measure the estimators, not torch's thread pool, whose
# spinning threads make timings on a small shared machine (ours have 2 cores) noisy and slow.
torch.set_num_threads(1)


@functools.lru_cache(maxsize=None)
def problem(spec: str) -> estimators.Problem:
    """The problem ``spec``, built once per process (so oracle truths are computed once)."""
    if spec.partition(":")[0] not in estimators.problem_names():
        raise NotImplementedError(f"problem {spec!r} is not registered in this commit")
    return estimators.make_problem(spec)


def cell(spec: str, name: str, n: int) -> tuple[estimators.Problem, estimators.GradientEstimator]:
    """``(problem, estimator)`` of a cell that can run, else ``NotImplementedError`` (asv: skipped)."""
    if name.partition(":")[0] not in estimators.estimator_names():
        raise NotImplementedError(f"estimator {name!r} is not registered in this commit")
    prob, estimator = problem(spec), estimators.get_estimator(name)
    try:
        estimator.check(prob, n)
    except ValueError as err:     # EstimatorNotApplicable is a ValueError, as is N < min_budget
        raise NotImplementedError(str(err)) from None
    return prob, estimator


def seed_torch(prob: estimators.Problem, estimator: estimators.GradientEstimator, n: int) -> None:
    """Seed torch's global generator from the cell (the engine's :func:`cell_seed`)."""
    torch.manual_seed(cell_seed(SEED, prob.spec, estimator.name, n))


def summary(rows: list[dict]) -> dict[str, float]:
    """One cell's quality over *all* its parameters, from the engine's per-parameter rows.

    * ``variance``: trace of the covariance of the whole gradient (sum over parameters);
    * ``mse``: :math:`E\\|g - t\\|^2` over the whole gradient (sum over parameters);
    * ``abs_bias_z``: z-equivalent of the Bonferroni p-value over parameters (each row's
      ``bias_p`` is already Bonferroni over its coordinates), i.e. :math:`|z|` for a scalar;
    * ``inverse_snr``: :math:`1/\\mathrm{SNR}` with SNR the mean over all coordinates of
      :math:`|\\bar g_d|/\\hat\\sigma_d`, the README's ``snr`` extended over parameters.
    """
    coords = sum(r["coords"] for r in rows)
    snr = sum(r["snr"] * r["coords"] for r in rows) / coords
    p = min(1.0, len(rows) * min(r["bias_p"] for r in rows))
    return {
        "variance": math.fsum(r["variance"] for r in rows),
        "mse": math.fsum(r["mse"] for r in rows),
        "abs_bias_z": abs(rows[0]["bias_z"]) if len(rows) == 1 else float(stats.norm.isf(max(p, 1e-300) / 2)),
        "inverse_snr": 1.0 / snr if snr > 0 else math.inf,
    }
