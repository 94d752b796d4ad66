"""Gradient quality per cell: variance, MSE, bias beyond chance and inverse SNR (lower is better).

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

from scipy import stats

import estimators

from .common import BUDGETS, ESTIMATORS, PROBLEMS, cell, summary

#: Independent batches per cell (>= 6 lets asv's Mann-Whitney test reach p < 0.002).
BATCHES = 10
#: Estimates per batch.
REPLICATES = 200
#: Family-wise error rate of the bias track over one run of the whole suite.
BIAS_ALPHA = 0.01
#: Bonferroni threshold on |z| over every batch of every cell of the grid (m = cells x batches):
#: an unbiased estimator exceeds it in some batch of some cell with probability <= BIAS_ALPHA.
BIAS_Z_THRESHOLD = float(stats.norm.isf(BIAS_ALPHA / (2 * len(PROBLEMS) * len(ESTIMATORS) * len(BUDGETS) * BATCHES)))


def bias_excess(abs_z: float) -> float:
    r"""How far a batch's bias :math:`|z|` lies beyond chance: :math:`\max(0, |z| - z^*)`.

    :math:`z^*` is :data:`BIAS_Z_THRESHOLD`. For an unbiased estimator :math:`|z|` is the
    absolute value of a standard normal (or its Bonferroni z-equivalent), so the excess is 0 in
    every batch of the suite with probability at least :math:`1 - \alpha`; a bias :math:`b` of
    an estimator with standard deviation :math:`\sigma` makes :math:`|z| \approx \sqrt{R}\,|b|/\sigma`,
    positive excess once :math:`|b|/\sigma > z^*/\sqrt{R}` (0.31 at R=200, 108 cells).
    Unlike the raw :math:`|z|` (median 0.67 whatever the code), it moves only when an estimator
    is biased: 0 -> positive is a step that ``asv publish`` and ``asv compare`` report.
    """
    return max(0.0, abs_z - BIAS_Z_THRESHOLD)


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
    out = {key: [row[key] for row in rows] for key in rows[0]}
    out["bias_excess"] = [bias_excess(z) for z in out["abs_bias_z"]]
    return out


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


class TrackBiasExcess(_Quality):
    """Excess of the bias |z| of the mean of R=200 estimates over the suite's Bonferroni threshold.

    :func:`bias_excess` of each batch's |z| (z-equivalent Bonferroni over parameters): 0 for an
    unbiased estimator, whatever its random stream; grows like sqrt(R) times the bias over the
    estimator's standard deviation once that exceeds the threshold.
    """

    unit = "|z| - z*"

    def track_bias_excess(self, cache, problem, estimator, n):
        return self.samples("bias_excess")


class TrackInverseSNR(_Quality):
    """Inverse signal-to-noise ratio 1/SNR, SNR the mean over coordinates of |mean|/std."""

    unit = "1/SNR"

    def track_inverse_snr(self, cache, problem, estimator, n):
        return self.samples("inverse_snr")
