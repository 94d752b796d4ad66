"""The variance confidence interval covers the truth at its nominal rate where the variance is known.

Method under test (estimators/statistics.py): distribution-free, delta method on the log scale
with the sample kurtosis, i.e. log s^2 +- z sqrt((kappa - 1)/R). The chi-square interval assumes
normal estimates (kappa = 3) and badly under-covers REINFORCE's heavy-tailed estimates; the test
shows both.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

import gradnoise as gn
from gradnoise import statistics
from gradnoise.engine import replicate_estimates
from gradnoise.statistics import CONFIDENCE, summarise, variance_interval
from stat_checks import ALPHA

REPEATS = 400


def _coverages(problem, estimator, n, r, true_variance, param="loc"):
    """Coverage of our interval and of the chi-square interval over REPEATS independent measurements."""
    g, _ = replicate_estimates(gn.make_problem(problem), gn.get_estimator(estimator), n, r * REPEATS, 11)
    g = g[param].double().numpy().reshape(REPEATS, r)
    ours = chi2 = 0
    q = stats.chi2.ppf([0.5 + CONFIDENCE / 2, 0.5 - CONFIDENCE / 2], r - 1)
    for row in g:
        _, low, high = variance_interval(row)
        ours += low <= true_variance <= high
        s2 = row.var(ddof=1)
        chi2 += (r - 1) * s2 / q[0] <= true_variance <= (r - 1) * s2 / q[1]
    return ours, chi2


def _consistent_with_nominal(hits):
    return stats.binomtest(int(hits), REPEATS, CONFIDENCE).pvalue > ALPHA


def test_coverage_gaussian_estimates():
    """reparam on (x-k)^2 w.r.t. loc: g = mean of 2(x-k), exactly normal, Var = 4 scale^2 / N."""
    ours, chi2 = _coverages("gaussian-quadratic", "reparam", 4, 200, 4.0 / 4)
    assert _consistent_with_nominal(ours), ours / REPEATS
    assert _consistent_with_nominal(chi2), chi2 / REPEATS


def test_coverage_heavy_tailed_reinforce():
    """REINFORCE on (x-2)^2, x ~ N(1, 1), w.r.t. loc at N=1: g = (x-2)^2 (x-1); Var by quadrature."""
    pdf = stats.norm(1, 1).pdf
    g = lambda x: (x - 2) ** 2 * (x - 1)  # noqa: E731
    m1 = integrate.quad(lambda x: g(x) * pdf(x), -np.inf, np.inf)[0]
    m2 = integrate.quad(lambda x: g(x) ** 2 * pdf(x), -np.inf, np.inf)[0]
    ours, chi2 = _coverages("gaussian-quadratic", "reinforce", 1, 1000, m2 - m1**2)
    assert _consistent_with_nominal(ours), ours / REPEATS
    assert not _consistent_with_nominal(chi2), chi2 / REPEATS   # the normal-theory interval fails


def test_summarise_scalar_by_hand():
    g = np.array([[1.0], [2.0], [4.0], [5.0]])
    row = summarise(g, np.array([2.0]), np.array([0.0]))
    assert row["mean"] == 3.0 and row["bias"] == 1.0
    assert row["variance"] == pytest.approx(10.0 / 3)
    assert row["bias_z"] == pytest.approx(1.0 / np.sqrt(10.0 / 3 / 4))
    assert row["mse"] == pytest.approx(np.mean((g - 2.0) ** 2))
    assert row["snr"] == pytest.approx(3.0 / np.sqrt(10.0 / 3))
    assert row["variance_ci_low"] < row["variance"] < row["variance_ci_high"]


def test_summarise_tensor_reductions():
    rng = np.random.default_rng(0)
    g = rng.normal([1.0, -2.0, 0.5], [1.0, 2.0, 3.0], size=(5000, 3))
    row = summarise(g, np.array([1.0, -2.0, 0.5]), np.zeros(3))
    assert row["variance"] == pytest.approx(g.var(0, ddof=1).sum())      # trace of the covariance
    assert row["truth"] == pytest.approx(np.linalg.norm([1.0, -2.0, 0.5]))
    assert row["coords"] == 3 and 0 <= row["bias_p"] <= 1 and row["bias_z"] >= 0


def test_summary_columns_are_defined_once():
    """summarise() returns exactly SUMMARY_COLUMNS, in order, and the engine's COLUMNS contain them."""
    import gradnoise as gn
    from gradnoise.statistics import SUMMARY_COLUMNS, summarise

    g = np.random.default_rng(0).normal(size=(50, 3))
    assert list(summarise(g, np.zeros(3), np.zeros(3))) == list(SUMMARY_COLUMNS)
    i = gn.COLUMNS.index("truth")
    assert gn.COLUMNS[i:i + len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)


def test_an_estimate_exact_up_to_rounding_is_not_called_biased():
    """The delta method's fitted coefficient on a quadratic cost is exact up to float32 rounding
    (sd 4e-8 against a gradient of 2): its bias z was infinite, a false "biased". The rounding
    floor of the standard error makes it small, while a real bias of 1e-3 relative, far above
    rounding, is still caught (negative control)."""
    rng = np.random.default_rng(0)
    truth = np.array([2.0, -1.0])
    exact = truth + 4e-8 * rng.standard_normal((300, 2)) + 1e-7     # rounding-level offset
    row = statistics.summarise(exact, truth, np.zeros(2))
    assert abs(row["bias_z"]) < 3 and row["bias_p"] > 0.01
    biased = exact * (1 + 1e-3)
    assert statistics.summarise(biased, truth, np.zeros(2))["bias_z"] > 10


def test_the_engine_does_not_call_the_exact_delta_method_biased():
    df = gn.measure("bernoulli-toy", "reinforce-delta", [10, 100], replicates=200)
    assert np.isfinite(df["bias_z"]).all() and (df["bias_z"].abs() < 4).all(), df[["budget", "bias", "bias_z"]]


@pytest.mark.slow
def test_calibration_at_small_r_on_the_issue_22_rows():
    """Issue 22's rows at R = 200 over 2,000 seeds (benchmarks/scripts/calibration.py, one engine
    call per row, reshaped): the variance interval covers the exact variance at >= 0.94 and an
    unbiased estimator's |bias z| exceeds 3 at <= 0.5%. Thresholds: those targets less three of
    the rates' own standard errors (binomial, 2,000 seeds: 0.5% and 0.16%), so a method at the
    target passes and one at the old rates fails; the old method (delta interval, plain z) is
    the negative control and must fail on some row."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scripts" / "calibration.py"
    spec = importlib.util.spec_from_file_location("calibration", path)
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    seeds = 2000
    cov_min = 0.94 - 3 * np.sqrt(0.94 * 0.06 / seeds)
    z3_max = 0.005 + 3 * np.sqrt(0.005 * 0.995 / seeds)
    old_fails = 0
    for case in (c for c in cal.CASES if c[0] == "issue"):
        row = cal.run_case(case, 200, seeds)
        assert row["coverage_new"] >= cov_min and row["z3_new"] <= z3_max, row
        old_fails += row["coverage_old"] < cov_min or row["z3_old"] > z3_max
    assert old_fails > 0


def test_the_interval_of_estimates_exact_up_to_rounding_is_finite():
    """The centred delta method on a quadratic cost: estimates equal up to float32 rounding, a
    handful of distinct values. The bootstrap pivot degenerates (its exp overflowed to an infinite
    upper end); the interval falls back to the delta method's, finite and holding the estimate."""
    g = np.float32(8.0) + np.float32(4e-7) * np.random.default_rng(1).integers(-2, 3, (300, 1)).astype(np.float32)
    g[:295] = np.float32(8.0)
    with np.errstate(over="raise"):
        variance, low, high = statistics.variance_interval(g.astype(np.float64))
    assert np.isfinite(low) and np.isfinite(high) and low <= variance <= high
