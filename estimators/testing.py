r"""Statistical checks for tests of gradient estimators: the suite's own, public for plugins.

A plugin's author tests an estimator the way the suite tests its own (docs/plugins.md):

>>> from gradnoise import testing
>>> ok, p = testing.check_unbiased("reinforce-loo", "gaussian-cos", n=4, replicates=4000, seed=0)

* **unbiasedness** (:func:`is_unbiased`, :func:`check_unbiased`): a two-sided z-test of
  ``mean == truth`` for every coordinate of every parameter (:func:`bias_pvalues`: the standard
  error is the estimates' own, the oracle truth's when the truth is an oracle, and float32
  rounding), Holm-corrected across coordinates (:func:`holm_reject`) at family-wise level
  :data:`ALPHA`, the level of one 4-standard-error test. Calibrated: an unbiased estimator fails
  with probability at most :data:`ALPHA` (6.3e-5), whatever the number of coordinates, and a
  test with a fixed seed is not flaky. Pair it with a negative control that the same check
  rejects (a deliberately biased estimator);
* **an exact variance** (:func:`log_variance_z`, :func:`check_variance`): the z of the log sample
  variance of R scalar estimates against a variance derived by hand (closed form, enumeration),
  with the kurtosis-adjusted delta-method standard error;
* **replayed noise** (:func:`replay`): run an estimator after seeding and re-seed, so that a test
  draws the same noise and compares with a hand-derived formula, exactly.

Tolerances come from the estimates' own standard errors, never from a hand-tuned ``rtol``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

# float32 rounding of one estimate, relative (a few dozen roundings of eps = 2^-23, with a
# margin); the engine's bias z uses the same floor
from gradnoise.statistics import ROUNDING, holm

# family-wise level equal to a single two-sided 4-standard-error test
ALPHA = float(2 * stats.norm.sf(4.0))


def holm_reject(pvalues: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level ``alpha``
    (:func:`gradnoise.statistics.holm`'s adjusted p-values at most ``alpha``)."""
    return holm(pvalues) <= alpha


def bias_pvalues(estimates: dict[str, torch.Tensor], truth) -> np.ndarray:
    """Two-sided z-test p-values of ``mean == truth`` for every coordinate of every parameter.

    The standard error of coordinate d is sqrt(var_d / R + truth_se_d^2 + (ROUNDING rms_d)^2): the
    estimator's own standard error, the oracle's if the truth is an oracle, and the float32 rounding
    of the estimates' mean (deterministic, so it does not shrink with R). The last matters only
    where an estimate is exact up to rounding (the delta method's fitted coefficient on a quadratic
    cost: sd 4e-8 against rms 2 on gaussian-quadratic-nd); elsewhere sd/sqrt(R) is far above it.
    """
    pvals = []
    for name, g in estimates.items():
        g = g.double().reshape(g.shape[0], -1)
        r = g.shape[0]
        bias = g.mean(0) - truth.values[name].double().reshape(-1)
        rounding = ROUNDING * g.square().mean(0).sqrt()
        se = torch.sqrt(g.var(0) / r + truth.se[name].double().reshape(-1) ** 2 + rounding**2)
        z = torch.where(se > 0, bias / se, torch.where(bias == 0, 0.0, math.inf))
        pvals.append(2 * stats.norm.sf(np.abs(z.numpy())))
    return np.concatenate(pvals)


def is_unbiased(estimates, truth) -> tuple[bool, float]:
    """(no coordinate rejected by Holm at ALPHA, smallest p-value)."""
    p = bias_pvalues(estimates, truth)
    return not holm_reject(p).any(), float(p.min())


def replay(estimator: str, problem: str, n: int, r: int = 3, seed: int = 7):
    """Run an estimator on replicated leaves after seeding, then re-seed so the test can replay.

    Returns ``(problem, detached leaves, detached estimates)``; the caller draws the same noise
    the estimator drew (same calls, same order) and compares with a hand-derived formula.
    """
    import gradnoise as gn
    est, prob = gn.get_estimator(estimator), gn.make_problem(problem)
    params = gn.replicate(prob.params, (r,))
    torch.manual_seed(seed)
    grads = est(prob, params, n)
    torch.manual_seed(seed)
    return prob, {k: v.detach() for k, v in params.items()}, {k: v.detach() for k, v in grads.items()}


def estimates_and_truth(estimator, problem, n: int, replicates: int, seed: int = 0):
    """``(estimates, truth)``: R = ``replicates`` independent ``n``-sample estimates of ``estimator``
    on ``problem`` (names or objects; :func:`gradnoise.replicate_estimates`, the engine's streams,
    ``{param: (R, *shape)}``) and the problem's true gradient for the estimator's objective."""
    import gradnoise as gn

    est, prob = gn.get_estimator(estimator), gn.make_problem(problem)
    estimates, _ = gn.replicate_estimates(prob, est, n, replicates, seed)
    return estimates, prob.true_gradient(est.objective(n))


def check_unbiased(estimator, problem, n: int, replicates: int = 4000, seed: int = 0) -> tuple[bool, float]:
    """:func:`is_unbiased` of :func:`estimates_and_truth`: (no coordinate rejected by Holm at
    :data:`ALPHA`, smallest p-value)."""
    return is_unbiased(*estimates_and_truth(estimator, problem, n, replicates, seed))


def check_variance(g: torch.Tensor, exact: float, alpha: float = ALPHA) -> tuple[bool, float]:
    """(the sample variance of the scalar estimates ``g`` (R,) agrees with ``exact`` at level
    ``alpha``, two-sided, :func:`log_variance_z`; that z)."""
    z = log_variance_z(g, exact)
    return bool(abs(z) <= stats.norm.isf(alpha / 2)), z


def log_variance_z(g: torch.Tensor, exact: float) -> float:
    """z of ``log(sample variance) - log(exact)`` for R i.i.d. scalar estimates ``g``.

    The standard error of the log sample variance is the delta method's, kurtosis-adjusted:
    ``sd(y) / (mean(y) sqrt(R))`` with ``y = (g - mean g)^2`` (``gradnoise.statistics``'s interval).
    """
    y = (g.double().reshape(-1) - g.double().mean()) ** 2
    se = (y.std() / (y.mean() * math.sqrt(len(y)))).item()
    return (math.log(y.sum().item() / (len(y) - 1)) - math.log(exact)) / se
