"""Tests of the example plugin, written with gradnoise's public test helpers (gradnoise.testing).

Run with the plugin installed (`pip install ./examples/plugin`, its entry points register the
names) or, without installing it, with GRADNOISE_PLUGINS naming its files (tests/test_plugins.py
of the suite does both).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.polynomial import polynomial as P

import gradnoise as gn
from gradnoise import testing
from gradnoise.baselines import Baseline, ControlVariate


@pytest.mark.parametrize("rate,k", [(1.0, 3.0), (0.5, 1.0), (2.0, 4.0)])
def test_exponential_quadratic_truth_is_the_hand_derived_gradient(rate, k):
    # d/d rate of 2/rate^2 - 2k/rate + k^2, derived by hand (problems.py's docstring)
    truth = gn.make_problem(f"exponential-quadratic:rate={rate},k={k}").true_gradient(gn.Objective("expectation"))
    assert truth.kind == "closed-form"
    assert truth.values["rate"].item() == pytest.approx(-4 / rate**3 + 2 * k / rate**2, rel=1e-6)


@pytest.mark.parametrize("problem", ["exponential-quadratic", "gaussian-cos", "gaussian-quadratic-nd:d=3"])
@pytest.mark.parametrize("n", [2, 3, 8])
def test_reinforce_split_is_unbiased(problem, n):
    ok, p = testing.check_unbiased("reinforce-split", problem, n, replicates=4000, seed=1)
    assert ok, f"smallest Holm-corrected p-value {p:.2g}"


class _IncludingItself(Baseline):
    """Negative control: the batch's mean cost, the sample's own cost included: biased by
    -E[f s]/N = -(true gradient)/N."""

    def value(self, state, f):
        return ControlVariate(per_sample=f.mean(0, keepdim=True))


def test_the_check_rejects_a_biased_baseline():
    biased = gn.ScoreFunction(_IncludingItself(), name="reinforce-biased")
    ok, p = testing.check_unbiased(biased, "exponential-quadratic", 2, replicates=20000, seed=1)
    assert not ok, f"the biased control passed (p = {p:.2g})"


def _gaussian_moment(k: int) -> float:
    """E[z^k] for z ~ Normal(0, 1): 0 for odd k, (k-1)!! for even k."""
    return 0.0 if k % 2 else float(math.prod(range(k - 1, 0, -2)))


def _expectation(poly2d: np.ndarray) -> float:
    """E[p(z1, z2)] for z1, z2 i.i.d. Normal(0, 1), ``poly2d[i, j]`` the coefficient of z1^i z2^j."""
    return float(sum(c * _gaussian_moment(i) * _gaussian_moment(j) for (i, j), c in np.ndenumerate(poly2d)))


def exact_variance_n2(loc: float, k: float) -> float:
    r"""Var of reinforce-split's ``loc`` coordinate at N = 2 on gaussian-quadratic (scale 1), by hand.

    At N = 2 the estimate is :math:`\hat g = \frac12 (f_1 - f_2)(s_1 - s_2)` with :math:`x = loc + z`,
    :math:`f = (x-k)^2 = (z + loc - k)^2` and the score :math:`s = \partial_{loc}\log q = z`; its
    second moment is a polynomial in :math:`z_1, z_2` whose expectation the Gaussian moments give
    exactly; the mean is the true gradient :math:`2(loc - k)`.
    """
    f = P.polypow([loc - k, 1.0], 2)                         # coefficients in z
    s = np.array([0.0, 1.0])
    df = np.zeros((3, 3))                                    # f1 - f2: coefficient [i, j] of z1^i z2^j
    df[:, 0] += f
    df[0, :] -= f
    ds = np.zeros((2, 2))                                    # s1 - s2
    ds[:, 0] += s
    ds[0, :] -= s
    g = 0.5 * _mul2d(df, ds)
    return _expectation(_mul2d(g, g)) - (2 * (loc - k)) ** 2


def _mul2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + b.shape[0] - 1, a.shape[1] + b.shape[1] - 1))
    for (i, j), c in np.ndenumerate(a):
        out[i:i + b.shape[0], j:j + b.shape[1]] += c * b
    return out


def test_reinforce_split_variance_is_the_exact_one():
    estimates, _ = testing.estimates_and_truth("reinforce-split", "gaussian-quadratic:loc=1,k=2", 2, 20000, seed=2)
    exact = exact_variance_n2(1.0, 2.0)
    ok, z = testing.check_variance(estimates["loc"], exact)
    assert ok, f"z = {z:.2f} against the exact variance {exact:.6g}"
    wrong, z_wrong = testing.check_variance(estimates["loc"], 1.25 * exact)     # negative control
    assert not wrong, f"a variance 1.5x the exact one passed (z = {z_wrong:.2f})"


def test_the_study_holds_in_quick_mode(tmp_path):
    from gradnoise.analysis.studies import Config, run_study

    outcome = run_study("split-baseline", tmp_path, Config(quick=True))
    assert outcome.held is True, outcome.headline
    assert (tmp_path / "study.md").exists() and (tmp_path / "results.csv").exists()
