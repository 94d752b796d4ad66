"""measure-valued: unbiased at several settings, exact on replayed noise, variance equal to the
quadrature value (coupled and uncoupled, which differ as the exact values say), clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import Bernoulli, Chi2, Gamma, Independent, Normal, Weibull

import gradnoise as gn
import gradnoise.measure_valued as mv
from gradnoise.analysis.studies.measure_valued import cost_function, per_sample_moments
from gradnoise.engine import replicate_estimates
from stat_checks import holm_reject, is_unbiased, log_variance_z, replay

SEED = 20261126
SETTINGS = [
    "gaussian-quadratic:k=3,loc=0.5,scale=2",
    "gaussian-exp:k=1,loc=0.3,scale=0.7",
    "gaussian-cos:k=5,loc=1,scale=0.5",
    "gaussian-quadratic-nd:d=3,k=1,loc=0,scale=2",
    "linear-gaussian-vae:d=4",
]


@pytest.mark.parametrize("coupled", ["true", "false"])
@pytest.mark.parametrize("problem", SETTINGS)
def test_unbiased(problem, coupled):
    """|mean - truth| within 4 SE for every coordinate, Holm-corrected (N = 2, R = 4000)."""
    prob, est = gn.make_problem(problem), gn.get_estimator(f"measure-valued:coupled={coupled}")
    estimates, _ = replicate_estimates(prob, est, 2, 4000, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok, f"{problem}, coupled={coupled}: smallest p-value {pmin:.2e}"


def test_negative_control_one_sided_maxwell_is_caught(monkeypatch):
    """Dropping the Maxwell draw's random sign (a plausible bug) biases d/dscale; the check sees it."""
    monkeypatch.setattr(mv, "double_sided_maxwell",
                        lambda shape, like: Chi2(torch.tensor(3.0)).sample(shape).sqrt())
    prob = gn.make_problem("gaussian-cos:k=5,loc=1,scale=0.5")
    estimates, _ = replicate_estimates(prob, gn.get_estimator("measure-valued"), 2, 4000, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert not ok, f"bias not detected (smallest p {pmin:.2e})"


# ---------------------------------------------------------------------------------------------
# exact: replay the noise and compare with the formulas of Mohamed et al. (2020), sec. 6
# ---------------------------------------------------------------------------------------------
def _draws(shape, coupled):
    rayleigh = Weibull(torch.tensor(math.sqrt(2.0)), torch.tensor(2.0))
    w_pos = rayleigh.sample(shape)
    w_neg = w_pos if coupled else rayleigh.sample(shape)
    m = Chi2(torch.tensor(3.0)).sample(shape).sqrt()
    m = m * (torch.randint(0, 2, shape).float() * 2 - 1)
    eps = torch.rand(shape) * m if coupled else torch.randn(shape)
    return w_pos, w_neg, m, eps


@pytest.mark.parametrize("coupled", [True, False])
def test_exact_scalar_normal(coupled):
    prob, p, g = replay(f"measure-valued:coupled={coupled}", "gaussian-cos:k=5,loc=1,scale=0.5", n=3)
    mu, s = p["loc"], p["scale"]
    Normal(mu, s).sample((3,))
    w_pos, w_neg, m, eps = (d.squeeze(-1) for d in _draws((3, 3, 1), coupled))
    f = lambda x: torch.cos(5 * x)  # noqa: E731
    torch.testing.assert_close(g["loc"], ((f(mu + s * w_pos) - f(mu - s * w_neg)) / (s * math.sqrt(2 * math.pi))).mean(0))
    torch.testing.assert_close(g["scale"], ((f(mu + s * m) - f(mu + s * eps)) / s).mean(0))


def test_exact_vector_normal_perturbs_one_coordinate_at_a_time():
    """Independent(Normal) in D = 3 with a non-separable cost: coordinate j is replaced, the rest kept."""
    cost = lambda x: torch.cos(x[..., 0] * x[..., 1] + x[..., 2])  # noqa: E731
    prob = gn.ExpectationProblem(lambda loc, scale: Independent(Normal(loc, scale), 1),
                                 {"loc": torch.tensor([0.3, -0.5, 1.0]), "scale": torch.tensor([1.0, 0.5, 2.0])},
                                 cost, name="cos-of-product")
    est, params = gn.get_estimator("measure-valued"), gn.replicate(prob.params, (2,))
    torch.manual_seed(3)
    g = est(prob, params, 4)
    torch.manual_seed(3)
    mu, s = params["loc"].detach(), params["scale"].detach()
    x = Normal(mu, s).sample((4,))                                   # (4, 2, 3)
    w_pos, w_neg, m, eps = _draws((4, 2, 3), True)
    for name, plus, minus, c in (("loc", mu + s * w_pos, mu - s * w_neg, s * math.sqrt(2 * math.pi)),
                                 ("scale", mu + s * m, mu + s * eps, s)):
        expected = torch.zeros(2, 3)
        for j in range(3):
            xp, xm = x.clone(), x.clone()
            xp[..., j], xm[..., j] = plus[..., j], minus[..., j]
            expected[:, j] = ((cost(xp) - cost(xm)) / c[..., j]).mean(0)
        torch.testing.assert_close(g[name], expected)


@pytest.mark.parametrize("problem", ["gaussian-quadratic-nd:d=5", "linear-gaussian-vae:d=4"])
def test_coordinates_per_cost_call_do_not_change_the_numbers(problem, monkeypatch):
    """One, two or every coordinate's perturbed samples per call of the cost give bitwise the same
    estimates (MAX_BLOCK_ELEMENTS is a memory and speed setting, not a numerical one)."""
    prob, est, n, replicates = gn.make_problem(problem), gn.get_estimator("measure-valued"), 30, 20
    dist = prob.distribution(gn.replicate(prob.params, (replicates,)))
    flat = n * dist.batch_shape.numel() * dist.event_shape.numel()      # n x R x (lead) x E, one block
    assert dist.event_shape.numel() > 2
    runs = []
    for coordinates in (1, 2, dist.event_shape.numel()):
        monkeypatch.setattr(mv, "MAX_BLOCK_ELEMENTS", coordinates * flat)
        runs.append(replicate_estimates(prob, est, n, replicates, SEED)[0])
    for run in runs[1:]:
        for name in runs[0]:
            assert torch.equal(run[name], runs[0][name]), name


# ---------------------------------------------------------------------------------------------
# variance: equal to the quadrature value; coupled and uncoupled differ as the exact values say
# ---------------------------------------------------------------------------------------------
VARIANCE_SETTINGS = [("gaussian-quadratic", 2.0, 1.0, 1.0), ("gaussian-exp", 1.0, 1.0, 1.0),
                     ("gaussian-cos", 2.0, 1.0, 1.0), ("gaussian-cos", 5.0, 0.5, 1.5)]
R_VARIANCE = 20000


def _per_sample(cost, k, loc, scale, coupled):
    prob = gn.make_problem(f"{cost}:k={k:g},loc={loc:g},scale={scale:g}")
    est = gn.get_estimator(f"measure-valued:coupled={'true' if coupled else 'false'}")
    return replicate_estimates(prob, est, 1, R_VARIANCE, SEED)[0]


@pytest.fixture(scope="module")
def variances():
    """Measured single-sample estimates and exact variances, per setting x coupled x param."""
    out = {}
    for cost, k, loc, scale in VARIANCE_SETTINGS:
        for coupled in (True, False):
            g = _per_sample(cost, k, loc, scale, coupled)
            for param in ("loc", "scale"):
                exact = {c: per_sample_moments(cost_function(cost, k), "measure-valued" if c else "measure-valued-uncoupled",
                                               param, loc, scale).variance for c in (True, False)}
                out[(cost, k, loc, scale, coupled, param)] = (g[param], exact)
    return out


def test_variance_equals_quadrature(variances):
    """log sample variance vs log exact, kurtosis-adjusted SE; Holm across all 32 cells."""
    z = np.array([log_variance_z(g, exact[key[4]]) for key, (g, exact) in variances.items()])
    p = 2 * stats.norm.sf(np.abs(z))
    assert not holm_reject(p).any(), dict(zip(variances, np.round(z, 2)))


def test_coupled_and_uncoupled_differ_as_the_exact_values_say(variances):
    """Tested against the *other* coupling's exact value, every cell where the two differ by more
    than 30% is rejected (the variance test has power), and the measured ratio uncoupled/coupled
    is on the exact ratio's side of 1."""
    differing, rejected = 0, []
    for key, (g, exact) in variances.items():
        own, other = exact[key[4]], exact[not key[4]]
        if abs(math.log(own / other)) > math.log(1.3):
            differing += 1
            rejected.append(abs(log_variance_z(g, other)) > stats.norm.isf(0.5e-4))
    assert differing >= 8 and all(rejected), (differing, rejected)
    for cost, k, loc, scale in VARIANCE_SETTINGS:
        for param in ("loc", "scale"):
            gc, exact = variances[(cost, k, loc, scale, True, param)]
            gu, _ = variances[(cost, k, loc, scale, False, param)]
            measured = (gu.double().var() / gc.double().var()).item()
            if abs(math.log(exact[False] / exact[True])) > math.log(1.3):
                assert (measured > 1) == (exact[False] > exact[True]), (cost, k, param, measured, exact)


# ---------------------------------------------------------------------------------------------
# cost, applicability, errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("problem, evals", [
    ("gaussian-quadratic", 4 * 7), ("gaussian-quadratic-nd:d=5", 20 * 7),
    ("linear-gaussian-vae:d=4", 2 * 4 * 7 + 7),       # loc depends on A, b; the scale is a constant
])
def test_cost_evals_count_two_per_sample_per_coordinate(problem, evals):
    est = gn.get_estimator("measure-valued")
    assert est.cost_evals_for(gn.make_problem(problem), 7) == evals
    assert set(gn.measure(problem, est, 7, replicates=4)["cost_evals"]) == {evals}


def test_needs_no_rsample():
    class NonreparameterizedNormal(Normal):
        has_rsample = False

    prob = gn.ExpectationProblem(NonreparameterizedNormal, {"loc": 0.0, "scale": 1.0}, lambda x: x**2,
                                 expected_cost=lambda p: p["loc"] ** 2 + p["scale"] ** 2)
    assert len(gn.measure(prob, "measure-valued", 3, replicates=4)) == 2


@pytest.mark.parametrize("family, params, cost, name", [
    (lambda logits: Bernoulli(logits=logits), {"logits": 0.0}, lambda x: x, "Bernoulli"),
    (Gamma, {"concentration": 2.0, "rate": 1.0}, lambda x: x, "Gamma"),
    (lambda concentration, rate: Independent(Gamma(concentration, rate), 1),
     {"concentration": [2.0, 3.0], "rate": [1.0, 1.0]}, lambda x: x.sum(-1), r"Independent\(Gamma\)"),
])
def test_other_distributions_are_refused_by_name(family, params, cost, name):
    prob = gn.ExpectationProblem(family, {k: torch.tensor(v) for k, v in params.items()}, cost, name="other",
                                 expected_cost=lambda p: sum(v.sum() for v in p.values()))
    with pytest.raises(gn.EstimatorNotApplicable, match=name):
        gn.measure(prob, "measure-valued", 2, replicates=4)
    skipped = []
    gn.engine.cells([prob], ["measure-valued"], [2], on_invalid="skip", skipped=skipped)
    assert len(skipped) == 1 and "Normal" in skipped[0]


# ---------------------------------------------------------------------------------------------
# the quadrature the variance tests rely on, against closed forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["reinforce", "reparam", "measure-valued", "measure-valued-uncoupled",
                                       "reinforce-delta", "reparam-delta"])
@pytest.mark.parametrize("cost, k", [("gaussian-quadratic", 2.0), ("gaussian-exp", 1.0), ("gaussian-cos", 3.0)])
def test_quadrature_mean_is_the_closed_form_gradient(cost, k, estimator):
    truth = gn.make_problem(f"{cost}:k={k:g},loc=0.5,scale=1.5").true_gradient()
    for param in ("loc", "scale"):
        mean = per_sample_moments(cost_function(cost, k), estimator, param, 0.5, 1.5).mean
        assert mean == pytest.approx(truth.values[param].item(), rel=1e-5, abs=1e-6)


def test_quadrature_variance_closed_forms_on_the_quadratic_cost():
    """(x-k)^2, x ~ N(mu, s^2), a = mu - k. reparam: Var[2(x-k)] = 4 s^2, Var[2(x-k) eps] = 4(a^2 + 2 s^2).
    Coupled measure-valued d/dmu: f(mu+sW) - f(mu-sW) = 4 a s W, so Var = 16 a^2 Var[W] / (2 pi)
    with Var[W] = 2 - pi/2 (Rayleigh(1))."""
    mu, s, k = 0.5, 1.5, 2.0
    a, cost = mu - k, cost_function("gaussian-quadratic", k)
    var = lambda e, p: per_sample_moments(cost, e, p, mu, s).variance  # noqa: E731
    assert var("reparam", "loc") == pytest.approx(4 * s**2, rel=1e-8)
    assert var("reparam", "scale") == pytest.approx(4 * (a**2 + 2 * s**2), rel=1e-8)
    assert var("measure-valued", "loc") == pytest.approx(16 * a**2 * (2 - math.pi / 2) / (2 * math.pi), rel=1e-8)
