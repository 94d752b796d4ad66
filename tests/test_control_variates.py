"""reinforce-delta and reparam-delta: unbiased (fixed and pilot-estimated coefficient), exact on
replayed noise, variance equal to the quadrature value, the fitted (centred) coefficient and
beta = 1 exact on a quadratic cost, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Cauchy, Dirichlet, Normal

import gradnoise as gn
import gradnoise.control_variates as cv
from gradnoise.analysis.studies.measure_valued import cost_function, optimal_beta, per_sample_moments
from gradnoise.engine import replicate_estimates
from stat_checks import ROUNDING, holm_reject, is_unbiased, log_variance_z, replay

SEED = 20261127
SETTINGS = [
    "gaussian-exp:k=1,loc=0.3,scale=0.7",
    "gaussian-cos:k=2,loc=1,scale=0.5",
    "gaussian-quadratic-nd:d=3,k=1,loc=0,scale=2",
    "linear-gaussian-vae:d=4",
    "bernoulli-toy:theta=0.3,t=0.2",
]


def _cases():
    for problem in SETTINGS:
        for base in ("reinforce-delta", "reparam-delta"):
            for options in ("", ":beta=0.5", ":pilot=2"):
                if base == "reparam-delta" and problem.startswith("bernoulli"):
                    continue
                yield pytest.param(base + options, problem, id=f"{base}{options}-{problem.split(':')[0]}")


@pytest.mark.parametrize("estimator, problem", list(_cases()))
def test_unbiased(estimator, problem):
    """|mean - truth| within 4 SE per coordinate, Holm-corrected (N = 2, R = 4000), the SE floored at
    float32 rounding (exact estimates: quadratic costs). ``pilot=2`` (the smallest): the coefficient from two
    pilot samples is noisy, and still independent of the measured ones."""
    prob, est = gn.make_problem(problem), gn.get_estimator(estimator)
    estimates, _ = replicate_estimates(prob, est, 2, 4000, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok, f"{estimator} on {problem}: smallest p-value {pmin:.2e}"


def test_negative_control_expectation_without_the_variance_term_is_caught(monkeypatch):
    """E[h] without 1/2 tr(Gamma Sigma) (a plausible bug) biases d/dscale; the check sees it."""
    original = cv.moments
    monkeypatch.setattr(cv, "moments", lambda dist, where: (lambda m, s, full: (m, 0 * s, full))(*original(dist, where)))
    prob = gn.make_problem("gaussian-cos:k=2,loc=1,scale=0.5")
    estimates, _ = replicate_estimates(prob, gn.get_estimator("reinforce-delta:beta=0.5"), 2, 4000, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert not ok, f"bias not detected (smallest p {pmin:.2e})"


def test_exact_reinforce_delta_replayed():
    """(f(x) - beta h(x)) score + beta grad E[h], h the Taylor expansion of cos(k x) at mu."""
    prob, p, g = replay("reinforce-delta:beta=0.5", "gaussian-cos:k=3,loc=0.7,scale=0.6", n=5)
    mu, s, k, beta = p["loc"], p["scale"], 3.0, 0.5
    seed = int(torch.randint(0, 2**62, ()).item())
    torch.manual_seed(seed)
    x = Normal(mu, s).sample((5,))
    f = torch.cos(k * x)
    f0, f1, f2 = torch.cos(k * mu), -k * torch.sin(k * mu), -(k**2) * torch.cos(k * mu)
    h = f0 + f1 * (x - mu) + 0.5 * f2 * (x - mu) ** 2
    r = f - beta * h
    torch.testing.assert_close(g["loc"], (r * (x - mu) / s**2).mean(0) + beta * f1)
    torch.testing.assert_close(g["scale"], (r * ((x - mu) ** 2 / s**3 - 1 / s)).mean(0) + beta * f2 * s)


def test_exact_reparam_delta_replayed():
    """f'(x) dx/dphi - beta (h'(x) dx/dphi - grad E[h]), x = mu + s eps."""
    prob, p, g = replay("reparam-delta:beta=0.5", "gaussian-cos:k=3,loc=0.7,scale=0.6", n=5)
    mu, s, k, beta = p["loc"], p["scale"], 3.0, 0.5
    seed = int(torch.randint(0, 2**62, ()).item())
    torch.manual_seed(seed)
    x = Normal(mu, s).sample((5,))
    eps = (x - mu) / s
    f1, f2 = -k * torch.sin(k * mu), -(k**2) * torch.cos(k * mu)
    df, dh = -k * torch.sin(k * x), f1 + f2 * (x - mu)
    torch.testing.assert_close(g["loc"], (df - beta * (dh - f1)).mean(0))
    torch.testing.assert_close(g["scale"], (df * eps - beta * (dh * eps - f2 * s)).mean(0))


# ---------------------------------------------------------------------------------------------
# variance
# ---------------------------------------------------------------------------------------------
R_VARIANCE = 20000


def test_variance_equals_quadrature():
    """Fixed beta (0.5, and the variance-minimising beta* of d/dloc by quadrature) on exp and cos
    costs, N = 1: log sample variance vs log exact, kurtosis-adjusted SE, Holm across the cells."""
    z, keys = [], []
    for cost, k in (("gaussian-exp", 1.0), ("gaussian-cos", 2.0)):
        fn = cost_function(cost, k)
        prob = gn.make_problem(f"{cost}:k={k:g}")
        for name in ("reinforce-delta", "reparam-delta"):
            for beta in (0.5, optimal_beta(fn, "loc", pathwise=name == "reparam-delta")):
                g, _ = replicate_estimates(prob, gn.get_estimator(f"{name}:beta={beta!r}"), 1, R_VARIANCE, SEED)
                for param in ("loc", "scale"):
                    z.append(log_variance_z(g[param], per_sample_moments(fn, name, param, beta=beta).variance))
                    keys.append((cost, name, round(beta, 3), param))
    p = 2 * stats.norm.sf(np.abs(z))
    assert not holm_reject(p).any(), dict(zip(keys, np.round(z, 2)))


def test_optimal_beta_lowers_the_variance_as_quadrature_says():
    """At beta* the exact variance is below beta = 0.5's; the measured ratio agrees (4 SE)."""
    fn, prob = cost_function("gaussian-exp", 1.0), gn.make_problem("gaussian-exp:k=1")
    best = optimal_beta(fn, "loc", pathwise=False)
    v = {b: per_sample_moments(fn, "reinforce-delta", "loc", beta=b).variance for b in (0.5, best)}
    assert v[best] < v[0.5]
    g = {b: replicate_estimates(prob, gn.get_estimator(f"reinforce-delta:beta={b!r}"), 1, R_VARIANCE, SEED)[0]["loc"]
         for b in (0.5, best)}
    assert log_variance_z(g[best], v[0.5]) < -4        # measured at beta* is below the exact value at 0.5


QUADRATICS = ["gaussian-quadratic:k=-3,loc=1,scale=1", "gaussian-quadratic:k=3,loc=0.5,scale=2",
              "gaussian-quadratic-nd:d=3,k=1,loc=0,scale=2"]
def _rounding_bound(base: torch.Tensor) -> torch.Tensor:
    """(2^8 eps)^2 times the base estimator's mean square, per coordinate.

    With h = f, each per-sample term of g[f] - beta (g[h] - grad E[h]) is a difference of two
    float32 numbers of the base estimator's size that agree in exact arithmetic, each the result
    of a few dozen roundings (cost, Taylor polynomial, score or pathwise backward, mean over N) of
    relative size eps = 2^-23; 2^8 eps per term is that count with a margin. A fitted coefficient
    1 + delta adds delta^2 Var(g[h]) with |delta| <= |r|/|c| by Cauchy-Schwarz on the centred
    pilot (r the same rounding), the same order. So Var <= (2^8 eps)^2 E[g_base^2]."""
    return ROUNDING**2 * base.double().square().mean(0)


@pytest.mark.parametrize("problem", QUADRATICS, ids=lambda s: s.replace(":", "-"))
@pytest.mark.parametrize("name, base", [("reinforce-delta", "reinforce"), ("reparam-delta", "reparam")])
@pytest.mark.parametrize("n", [1, 2, 10])
def test_fitted_coefficient_on_a_quadratic_cost_has_zero_variance(problem, name, base, n):
    """h = f for a quadratic cost. The centred pilot coefficient (default pilot max(N, 2)) is
    Cov(g[f], g[h]) / Var(g[h]) = 1 up to rounding, so the estimate is grad E[h], the exact
    gradient: variance within float32 rounding of zero (see ``_rounding_bound``) for d/dloc and
    d/dscale at every N, and the mean equal to the closed-form truth to the same rounding. The
    bound can fail: beta = 0.9 (a tenth of the base's fluctuation left) is far above it, and so is
    the uncentred coefficient sum E[g[f] c] / sum E[c^2] this replaced (variance 2.7 at
    k=-3, N = 10, d/dloc)."""
    prob = gn.make_problem(problem)
    base_g, _ = replicate_estimates(prob, gn.get_estimator(base), n, 2000, SEED)
    truth = prob.true_gradient()
    for spec in (name, f"{name}:beta=1"):
        g, _ = replicate_estimates(prob, gn.get_estimator(spec), n, 2000, SEED)
        for param in prob.params:
            bound = _rounding_bound(base_g[param])
            assert (g[param].double().var(0) <= bound).all(), (spec, param, g[param].double().var(0), bound)
            off = (g[param].double().mean(0) - truth.values[param].double()).abs()
            assert (off <= ROUNDING * base_g[param].double().square().mean(0).sqrt()).all(), (spec, param, off)
    near, _ = replicate_estimates(prob, gn.get_estimator(f"{name}:beta=0.9"), n, 2000, SEED)
    for param in prob.params:
        assert (near[param].double().var(0) > _rounding_bound(base_g[param])).all(), param


@pytest.mark.parametrize("name", ["reinforce-delta", "reparam-delta"])
def test_fitted_coefficient_is_the_centred_ratio(name):
    """The coefficient ``prepare`` fits equals sum_d Cov(g_d[f], g_d[h]) / sum_d Var(g_d[h]) over the
    pilot's single-sample estimates (P = 7), recomputed here in float64 from the same pilot draws
    (replayed from the seed); float32 sums of 7 terms: relative error below 7 x 2^8 eps."""
    prob = gn.make_problem("gaussian-cos:k=2,loc=1,scale=0.5")
    est = gn.get_estimator(f"{name}:pilot=7")
    params = gn.replicate(prob.params, (3,))
    torch.manual_seed(SEED)
    taylor, beta = est.init(prob, params, 5)
    torch.manual_seed(SEED)                     # replay the pilot: the same draws, read back
    per_sample = gn.replicate(params, (7,))
    g_f, g_h = est._same_noise([prob, taylor], per_sample, 1)
    for k in params:
        a = g_f[k].double().reshape(7, 3, -1).numpy()
        c = g_h[k].double().reshape(7, 3, -1).numpy()
        cov = ((a - a.mean(0)) * (c - c.mean(0))).sum((0, 2))
        var = ((c - c.mean(0)) ** 2).sum((0, 2))
        np.testing.assert_allclose(beta[k].double().numpy(), cov / var, rtol=7 * ROUNDING)


# ---------------------------------------------------------------------------------------------
# cost, options, errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, n, evals", [("reinforce-delta", 7, 7 + 1 + 7), ("reparam-delta:beta=1", 7, 7 + 1),
                                            ("reinforce-delta:pilot=3", 7, 7 + 1 + 3),
                                            ("reinforce-delta", 1, 1 + 1 + 2), ("reparam-delta:beta=1", 1, 1 + 1)])
def test_cost_evals(spec, n, evals):
    """n samples, one expansion at the mean, and the pilot: max(N, 2) by default."""
    assert gn.get_estimator(spec).cost_evals(n) == evals
    assert set(gn.measure("gaussian-cos", spec, n, replicates=4)["cost_evals"]) == {evals}


@pytest.mark.parametrize("spec, match", [("reinforce-delta:beta=big", "number or 'optimal'"),
                                         ("reparam-delta:pilot=-1", "pilot"),
                                         ("reinforce-delta:pilot=1", r"pilot=1 of estimator 'reinforce-delta'.*at least 2 samples")])
def test_bad_options(spec, match):
    with pytest.raises(ValueError, match=match):
        gn.get_estimator(spec)


@pytest.mark.parametrize("name", ["reinforce-delta", "reparam-delta"])
def test_non_differentiable_cost_is_refused(name):
    prob = gn.ExpectationProblem(Normal, {"loc": 0.0, "scale": 1.0}, lambda x: (x > 0.5).float(),
                                 name="step", expected_cost=lambda p: p["loc"])
    with pytest.raises(gn.EstimatorNotApplicable, match=r"problem 'step'.*(is not differentiable|no autograd path to the sample)"):
        gn.measure(prob, name, 2, replicates=4)


class NoMoments(Normal):
    @property
    def mean(self):
        raise NotImplementedError

    @property
    def variance(self):
        raise NotImplementedError


@pytest.mark.parametrize("family, params, match", [
    (NoMoments, {"loc": 0.0, "scale": 1.0}, "NoMoments has no mean and variance"),
    (Cauchy, {"loc": 0.0, "scale": 1.0}, "Cauchy has no finite mean and variance"),
    (Dirichlet, {"concentration": [1.0, 2.0, 3.0]}, "Dirichlet has dependent event coordinates"),
])
def test_distribution_without_usable_moments_is_refused(family, params, match):
    prob = gn.ExpectationProblem(family, {k: torch.tensor(v) for k, v in params.items()},
                                 lambda x: (x**2).sum(-1) if x.dim() and family is Dirichlet else x**2,
                                 name="no-moments", expected_cost=lambda p: sum(v.sum() for v in p.values()))
    with pytest.raises(gn.EstimatorNotApplicable, match=match):
        gn.measure(prob, "reinforce-delta", 2, replicates=4)
