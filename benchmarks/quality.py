"""Gradient quality per cell: variance, MSE, |bias z| and inverse SNR (lower is better).

Each ``track_*`` returns ``{"samples": [...], "number": 1}``: the statistic of each of
:data:`BATCHES` independent batches of :data:`REPLICATES` estimates. asv stores their median with
a 99% confidence interval and, with ``--record-samples`` (the default of ``asv continuous``), the
samples themselves, so ``asv compare``/``asv continuous`` test the change with a Mann-Whitney U
test instead of comparing two numbers. Batch ``b`` of a cell uses the engine's seed
``cell_seed(b, problem, estimator, N)``: the same commit gives the same numbers, adding a cell
changes no other cell, and a change that only draws random numbers differently moves a statistic
by its sampling noise, which the test allows for.

All cells are measured once per run, in ``setup_cache`` (shared by the four classes); ``setup``
picks the cell, skipping (``NotImplementedError``) combinations that cannot run.
"""
from __future__ import annotations

import itertools

import estimators

from .common import BUDGETS, ESTIMATORS, PROBLEMS, cell, summary

#: Independent batches per cell (>= 6 lets asv's Mann-Whitney test reach p < 0.002).
BATCHES = 10
#: Estimates per batch.
REPLICATES = 200


def batch_statistics(spec: str, name: str, n: int) -> dict:
    """``{statistic: [one value per batch]}`` for a cell, ``{"skip": why}`` or ``{"error": what}``."""
    try:
        problem, estimator = cell(spec, name, n)
    except NotImplementedError as why:
        return {"skip": str(why)}
    try:
        rows = [summary(estimators.measure_cell(problem, estimator, n, REPLICATES, seed=b))
                for b in range(BATCHES)]
    except Exception as err:   # reported by this cell's benchmarks, not by every cell's
        return {"error": f"{type(err).__name__}: {err}"}
    return {key: [row[key] for row in rows] for key in rows[0]}


class _Quality:
    params = (PROBLEMS, ESTIMATORS, BUDGETS)
    param_names = ["problem", "estimator", "N"]

    def setup_cache(self):
        return {key: batch_statistics(*key) for key in itertools.product(*self.params)}

    setup_cache.timeout = 1200

    def setup(self, cache, problem, estimator, n):
        self.cell = cache[(problem, estimator, n)]
        if "skip" in self.cell:
            raise NotImplementedError(self.cell["skip"])
        if "error" in self.cell:
            raise RuntimeError(f"{problem} x {estimator} x N={n}: {self.cell['error']}")

    def samples(self, statistic: str) -> dict:
        return {"samples": self.cell[statistic], "number": 1}


class TrackVariance(_Quality):
    """Variance of one N-sample estimate: trace of the covariance of the whole gradient."""

    unit = "variance"

    def track_variance(self, cache, problem, estimator, n):
        return self.samples("variance")


class TrackMSE(_Quality):
    """Mean squared error of one N-sample estimate against the truth of its objective."""

    unit = "MSE"

    def track_mse(self, cache, problem, estimator, n):
        return self.samples("mse")


class TrackBiasZ(_Quality):
    """|z| of the bias of the mean of R=200 estimates (z-equivalent Bonferroni over parameters).

    About 0.67 (the median of |N(0,1)|) for an unbiased estimator; grows like sqrt(R) with bias.
    """

    unit = "|z|"

    def track_bias_z(self, cache, problem, estimator, n):
        return self.samples("abs_bias_z")


class TrackInverseSNR(_Quality):
    """Inverse signal-to-noise ratio 1/SNR, SNR the mean over coordinates of |mean|/std."""

    unit = "1/SNR"

    def track_inverse_snr(self, cache, problem, estimator, n):
        return self.samples("inverse_snr")
