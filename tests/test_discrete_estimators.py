"""ARM, DisARM, Gumbel-softmax and straight-through against exact values derived here.

Unbiased ones (arm, disarm): means against enumeration truths, variances against quadrature over
the uniform u of the per-sample estimator (one Bernoulli). Biased ones (gumbel-softmax,
straight-through): means against quadrature over the logistic noise of their own per-sample
estimator, and their bias against the true gradient detected. Tolerances come from the
estimates' own standard errors (tests/stat_checks.py).
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from torch.distributions import Bernoulli, Categorical, Independent

import gradnoise as gn
from two_bit_model import TwoBitModel
from gradnoise.discrete import DisARM
from gradnoise.problems import BernoulliProblem
from gradnoise.engine import replicate_estimates
from stat_checks import ALPHA, holm_reject, is_unbiased, replay

SEED = 20261126
R = 4000


def _exact(values: dict[str, float | np.ndarray]):
    """A truth-like object for stat_checks from exact numbers (standard error zero)."""
    vals = {k: torch.as_tensor(np.asarray(v, dtype=float)) for k, v in values.items()}
    return SimpleNamespace(values=vals, se={k: torch.zeros_like(v) for k, v in vals.items()})


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# truths of the new problems, checked against closed forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, p, theta", [
    ("bernoulli-toy-nd", [0.6, 0.51, 0.48], [0.0] * 3),
    ("bernoulli-toy-nd:theta=1 -2 0.3", [0.6, 0.51, 0.48], [1.0, -2.0, 0.3]),
    ("bernoulli-toy-nd:p=0.1 0.9 0.5 0.3 0.7,theta=0.5", [0.1, 0.9, 0.5, 0.3, 0.7], [0.5] * 5),
])
def test_bernoulli_toy_nd_truth_is_the_closed_form(spec, p, theta):
    truth = gn.make_problem(spec).true_gradient()
    assert truth.kind == "enumeration"
    expected = [_sigmoid(t) * (1 - _sigmoid(t)) * (1 - 2 * q) for t, q in zip(theta, p)]
    np.testing.assert_allclose(truth.values["logits"].numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k, spread, t", [(2, 1.0, 0.45), (3, 1.0, 0.45), (5, -2.0, 0.3)])
def test_categorical_toy_truth_is_the_closed_form(k, spread, t):
    truth = gn.make_problem(f"categorical-toy:k={k},spread={spread},t={t}").true_gradient()
    grid = np.arange(k) / (k - 1)
    logits, costs = spread * (grid - 0.5), (grid - t) ** 2
    pi = np.exp(logits) / np.exp(logits).sum()
    assert truth.kind == "enumeration"
    np.testing.assert_allclose(truth.values["logits"].numpy(), pi * (costs - pi @ costs), rtol=1e-5, atol=1e-7)


def _weights_cost(w: torch.Tensor):
    """A cost on Bernoulli latents of shape (2, 3) that couples the coordinates: (sum w*b - 1)^2."""
    return lambda b: ((b * w).sum((-2, -1)) - 1.0) ** 2


W23 = torch.tensor([[0.8, -0.5, 0.3], [1.2, 0.4, -0.9]])
L23 = torch.tensor([[0.3, -1.0, 2.0], [-0.4, 0.0, 1.1]])


def test_two_dimensional_bernoulli_truth_matches_an_independent_enumeration():
    """d/dtheta_d E[f] = sum_b f(b) p(b) (b_d - sigma(theta_d)), summed in numpy over 2^6 states."""
    prob = BernoulliProblem(L23, _weights_cost(W23), name="two-by-three")
    s = 1 / (1 + np.exp(-L23.numpy().ravel()))
    grad = np.zeros(6)
    for bits in itertools.product((0.0, 1.0), repeat=6):
        b = np.array(bits)
        f = ((b * W23.numpy().ravel()).sum() - 1.0) ** 2
        grad += f * np.prod(np.where(b == 1, s, 1 - s)) * (b - s)
    np.testing.assert_allclose(prob.true_gradient().values["logits"].numpy().ravel(), grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# arm and disarm: unbiased at several settings, the negative control caught
# ---------------------------------------------------------------------------------------------
SETTINGS = [
    "bernoulli-toy:theta=0.5,t=0.2", "bernoulli-toy:theta=-2,t=0.3", "bernoulli-toy:theta=3,t=0.45",
    "bernoulli-toy-nd", "bernoulli-toy-nd:theta=1 -2 0.3",
    "bernoulli-toy-nd:p=0.1 0.9 0.5 0.3 0.7,theta=0.5",
]


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("problem", SETTINGS)
@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_antithetic_estimators_are_unbiased(estimator, problem, n):
    est, prob = gn.get_estimator(estimator), gn.make_problem(problem)
    estimates, _ = replicate_estimates(prob, est, n, R, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok, f"{estimator} on {problem}, N={n}: smallest p-value {pmin:.2e}"


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_antithetic_estimators_are_unbiased_on_a_two_dimensional_event(estimator):
    prob = BernoulliProblem(L23, _weights_cost(W23), name="two-by-three")
    estimates, _ = replicate_estimates(prob, gn.get_estimator(estimator), 2, R, SEED)
    assert estimates["logits"].shape == (R, 2, 3)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok, f"smallest p-value {pmin:.2e}"


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_antithetic_estimators_are_unbiased_for_the_elbo_of_a_model(estimator):
    """Encoder and generative gradients of the ELBO, including the cost's direct dependence on phi."""
    prob = TwoBitModel()
    estimates, _ = replicate_estimates(prob, gn.get_estimator(estimator), 2, R, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok, f"smallest p-value {pmin:.2e}"


@pytest.mark.parametrize("estimator", ["arm", "disarm", "reinforce-loo"])
def test_stopped_score_term_keeps_the_elbo_gradient(estimator):
    """Without the zero-mean -grad log q term the estimators stay unbiased for the same truth."""
    prob = gn.StoppedScoreTerm(TwoBitModel())
    assert prob.spec == "two-bit-model:score_term=stopped"
    estimates, _ = replicate_estimates(prob, gn.get_estimator(estimator), 2, R, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok, f"smallest p-value {pmin:.2e}"


def test_stopped_score_term_drops_exactly_the_score():
    """Same noise: the difference of the two forms' phi-gradients is -mean_i grad log q(z_i) = mean_i (b_i - sigma(phi))."""
    full, stopped = TwoBitModel(), gn.StoppedScoreTerm(TwoBitModel())
    params = gn.replicate(full.params, (3,))
    torch.manual_seed(5)
    g_full = gn.get_estimator("reinforce-loo")(full, params, 4)
    torch.manual_seed(5)
    g_stopped = gn.get_estimator("reinforce-loo")(stopped, params, 4)
    torch.manual_seed(5)
    b = Independent(Bernoulli(logits=params["phi"].detach()), 1).sample((4,))
    torch.testing.assert_close(g_stopped["phi"] - g_full["phi"], (b - torch.sigmoid(params["phi"].detach())).mean(0))
    torch.testing.assert_close(g_stopped["W"], g_full["W"])
    with pytest.raises(ValueError, match="only the ELBO"):
        gn.measure(stopped, "vimco", 2, replicates=10)
    with pytest.raises(ValueError, match="model problem"):
        gn.StoppedScoreTerm(gn.make_problem("bernoulli-toy"))


class DisARMWithoutFactor(DisARM):
    """Deliberately wrong: DisARM without its sigma(|theta|) factor (mean scaled by 1/sigma(|theta|))."""

    def signal(self, u, logits, b, b_anti, delta):
        return super().signal(u, logits, b, b_anti, delta) / torch.sigmoid(logits.abs())


@pytest.mark.parametrize("problem", ["bernoulli-toy-nd:theta=1 -2 0.3", "bernoulli-toy:theta=0.5,t=0.2"])
def test_negative_control_is_caught(problem):
    est, prob = DisARMWithoutFactor(), gn.make_problem(problem)
    est.name = "disarm-without-factor"
    estimates, _ = replicate_estimates(prob, est, 3, R, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert not ok, f"bias not detected (smallest p {pmin:.2e})"


# ---------------------------------------------------------------------------------------------
# one Bernoulli: the per-sample estimators as functions of the noise, integrated by quadrature
# ---------------------------------------------------------------------------------------------
def _arm_1d(u, theta, t):
    """ARM (Yin & Zhou 2019) for f(b) = (b - t)^2: (f(1[u > sigma(-theta)]) - f(1[u < sigma(theta)])) (u - 1/2)."""
    f = lambda b: (b - t) ** 2  # noqa: E731
    return (f(float(u > _sigmoid(-theta))) - f(float(u < _sigmoid(theta)))) * (u - 0.5)


def _disarm_1d(u, theta, t):
    """DisARM (Dong et al. 2020): 1/2 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigma(|theta|), b from u, b~ from 1 - u."""
    f = lambda b: (b - t) ** 2  # noqa: E731
    b, b_anti = float(u < _sigmoid(theta)), float(1 - u < _sigmoid(theta))
    return 0.5 * (f(b) - f(b_anti)) * (-1) ** b_anti * (b != b_anti) * _sigmoid(abs(theta))


def _gumbel_softmax_1d(u, theta, t, tau):
    """d/dtheta (y - t)^2 at y = sigmoid((theta + logit u) / tau): 2 (y - t) y (1 - y) / tau."""
    y = special.expit((theta + special.logit(u)) / tau)
    return 2 * (y - t) * y * (1 - y) / tau


def _straight_through_1d(u, theta, t, tau):
    """Cost at the hard sample b = 1[theta + logit u > 0], derivative of the relaxed one: 2 (b - t) y (1 - y) / tau."""
    y = special.expit((theta + special.logit(u)) / tau)
    b = float(theta + special.logit(u) > 0)
    return 2 * (b - t) * y * (1 - y) / tau


def _moments(fn, theta, *args):
    """(mean, variance) of fn(u, theta, *args) for u ~ U(0, 1), by adaptive quadrature split at
    the estimator's jumps (sigma(theta), sigma(-theta))."""
    points = sorted({_sigmoid(theta), _sigmoid(-theta)})
    m1 = integrate.quad(lambda u: fn(u, theta, *args), 0, 1, points=points, limit=200, epsabs=1e-13)[0]
    m2 = integrate.quad(lambda u: fn(u, theta, *args) ** 2, 0, 1, points=points, limit=200, epsabs=1e-13)[0]
    return m1, m2 - m1**2


ONE_D = [(0.5, 0.2), (-2.0, 0.3), (3.0, 0.45), (0.0, 0.499)]


@pytest.mark.parametrize("theta, t", ONE_D)
def test_quadrature_means_of_arm_and_disarm_are_the_true_gradient(theta, t):
    """The integrals of the hand-written per-sample estimators equal sigma'(theta) (1 - 2t)."""
    truth = _sigmoid(theta) * (1 - _sigmoid(theta)) * (1 - 2 * t)
    for fn in (_arm_1d, _disarm_1d):
        assert _moments(fn, theta, t)[0] == pytest.approx(truth, rel=1e-8, abs=1e-12)


def _log_variance(g: torch.Tensor):
    """log sample variance and its delta-method standard error sqrt((kurtosis - 1) / R)."""
    y = (g.double() - g.double().mean()) ** 2
    return math.log(y.sum().item() / (len(y) - 1)), (y.std() / (y.mean() * math.sqrt(len(y)))).item()


def _variance_pvalue(estimates: torch.Tensor, exact: float) -> float:
    log_var, se = _log_variance(estimates)
    return float(2 * stats.norm.sf(abs(log_var - math.log(exact)) / se))


VARIANCE_R = 40000


@pytest.mark.parametrize("n", [1, 4])
def test_arm_and_disarm_variances_match_quadrature(n):
    """Var of the N-sample mean = (per-sample variance by quadrature) / N, at every setting, Holm-corrected."""
    pvalues, rows = [], []
    for (theta, t), (name, fn) in itertools.product(ONE_D, [("arm", _arm_1d), ("disarm", _disarm_1d)]):
        if name == "disarm" and theta == 0.0:
            continue   # exactly zero: test_disarm_has_zero_variance_at_theta_zero
        exact = _moments(fn, theta, t)[1] / n
        prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
        g, _ = replicate_estimates(prob, gn.get_estimator(name), n, VARIANCE_R, SEED)
        pvalues.append(_variance_pvalue(g["logits"], exact))
        rows.append((name, theta, t, exact, g["logits"].double().var().item()))
    rejected = holm_reject(np.array(pvalues))
    assert not rejected.any(), [r for r, bad in zip(rows, rejected) if bad]


def test_disarm_has_zero_variance_at_theta_zero():
    """At theta = 0, b and b~ always differ and the estimate is the constant (1 - 2t)/4."""
    assert _moments(_disarm_1d, 0.0, 0.3)[1] == pytest.approx(0.0, abs=1e-15)
    g, _ = replicate_estimates(gn.make_problem("bernoulli-toy:theta=0,t=0.3"), gn.get_estimator("disarm"),
                               1, 1000, SEED)
    torch.testing.assert_close(g["logits"], torch.full((1000,), 0.1))


@pytest.mark.parametrize("theta, t", ONE_D)
def test_disarm_exact_variance_is_below_arm(theta, t):
    """DisARM is ARM conditioned on the antithetic pair: its exact variance is never larger."""
    assert _moments(_disarm_1d, theta, t)[1] <= _moments(_arm_1d, theta, t)[1] * (1 + 1e-9)


def test_variance_check_rejects_a_wrong_exact_value():
    """Power of the variance check: ARM's variance is not DisARM's (exact values 10% or more apart)."""
    theta, t = 0.5, 0.2
    arm_var, disarm_var = _moments(_arm_1d, theta, t)[1], _moments(_disarm_1d, theta, t)[1]
    assert disarm_var < 0.9 * arm_var
    g, _ = replicate_estimates(gn.make_problem(f"bernoulli-toy:theta={theta},t={t}"), gn.get_estimator("arm"),
                               1, VARIANCE_R, SEED)
    assert _variance_pvalue(g["logits"], disarm_var) < ALPHA


# ---------------------------------------------------------------------------------------------
# relaxations: their own mean by quadrature, and their bias detected
# ---------------------------------------------------------------------------------------------
RELAXED = [(0.5, 0.2, 1.0), (-2.0, 0.3, 0.5), (1.0, 0.45, 2.0), (0.5, 0.2, 0.3)]
# an exact bias of more than RESOLVED standard errors is detected with probability > 0.999 at ALPHA;
# at (0.5, 0.2, 0.3) the bias (+0.006) is 2.4 standard errors at R: only the mean is checked there
RESOLVED = 6.0


@pytest.mark.parametrize("theta, t, tau", RELAXED)
@pytest.mark.parametrize("estimator, fn", [("gumbel-softmax", _gumbel_softmax_1d),
                                           ("straight-through", _straight_through_1d)])
def test_relaxation_mean_matches_quadrature_and_its_bias_is_detected(estimator, fn, theta, t, tau):
    prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
    est = gn.get_estimator(f"{estimator}:temperature={tau}")
    assert not est.unbiased
    estimates, _ = replicate_estimates(prob, est, 2, R, SEED)
    own_mean, own_var = _moments(fn, theta, t, tau)
    ok, pmin = is_unbiased(estimates, _exact({"logits": own_mean}))
    assert ok, f"mean differs from its quadrature value {own_mean:.5g} (p {pmin:.2e})"
    bias = own_mean - prob.true_gradient().values["logits"].item()
    if abs(bias) > RESOLVED * math.sqrt(own_var / (2 * R)):
        ok, pmin = is_unbiased(estimates, prob.true_gradient())
        assert not ok, f"bias {bias:.3g} not detected (p {pmin:.2e})"
    else:
        assert (theta, t, tau) == (0.5, 0.2, 0.3), "a setting whose exact bias this R cannot resolve"


@pytest.mark.parametrize("theta, t, tau", RELAXED[:2])
@pytest.mark.parametrize("estimator, fn", [("gumbel-softmax", _gumbel_softmax_1d),
                                           ("straight-through", _straight_through_1d)])
def test_relaxation_variance_matches_quadrature(estimator, fn, theta, t, tau):
    prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
    g, _ = replicate_estimates(prob, gn.get_estimator(f"{estimator}:temperature={tau}"), 1, VARIANCE_R, SEED)
    assert _variance_pvalue(g["logits"], _moments(fn, theta, t, tau)[1]) > ALPHA


def _binary_categorical_mean(a0, a1, c0, c1, tau):
    """K = 2: y_1 = sigmoid((a1 - a0 + logistic)/tau); d/da1 of c0 y0 + c1 y1 is (c1 - c0) y1 (1 - y1) / tau."""
    def integrand(u):
        y = special.expit((a1 - a0 + special.logit(u)) / tau)
        return (c1 - c0) * y * (1 - y) / tau

    d1 = integrate.quad(integrand, 0, 1, limit=200, epsabs=1e-13)[0]
    return np.array([-d1, d1])


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("estimator", ["gumbel-softmax", "straight-through"])
def test_categorical_relaxations_match_quadrature_for_two_classes(estimator, tau):
    prob = gn.make_problem("categorical-toy:k=2,spread=1.5,t=0.2")
    estimates, _ = replicate_estimates(prob, gn.get_estimator(f"{estimator}:temperature={tau}"), 2, R, SEED)
    own = _binary_categorical_mean(-0.75, 0.75, 0.2**2, 0.8**2, tau)
    ok, pmin = is_unbiased(estimates, _exact({"logits": own}))
    assert ok, f"mean differs from its quadrature value {own} (p {pmin:.2e})"
    ok, _ = is_unbiased(estimates, prob.true_gradient())
    assert not ok


@pytest.mark.parametrize("k", [3, 5])
def test_categorical_toy_relaxations_are_biased_and_reinforce_loo_is_not(k):
    prob = gn.make_problem(f"categorical-toy:k={k}")
    for name in ("gumbel-softmax", "straight-through"):
        estimates, _ = replicate_estimates(prob, gn.get_estimator(name), 2, R, SEED)
        assert estimates["logits"].shape == (R, k)
        assert not is_unbiased(estimates, prob.true_gradient())[0], name
    estimates, _ = replicate_estimates(prob, gn.get_estimator("reinforce-loo"), 2, R, SEED)
    assert is_unbiased(estimates, prob.true_gradient())[0]


# ---------------------------------------------------------------------------------------------
# exact: replay the noise and compare with the papers' formulas
# ---------------------------------------------------------------------------------------------
P3 = torch.tensor([0.6, 0.51, 0.48])


def _cost3(b):
    return ((b - P3) ** 2).sum(-1)


def test_exact_arm_and_disarm_on_bernoulli_toy_nd():
    n = 5
    for name in ("arm", "disarm"):
        _, p, g = replay(name, "bernoulli-toy-nd:theta=1 -2 0.3", n=n)
        theta = p["logits"]                                        # (R, 3)
        u = torch.rand((n,) + tuple(theta.shape))
        b, b_anti = (u < torch.sigmoid(theta)).float(), (u > torch.sigmoid(-theta)).float()
        f, f_anti = _cost3(b).unsqueeze(-1), _cost3(b_anti).unsqueeze(-1)
        if name == "arm":
            per_sample = (f_anti - f) * (u - 0.5)
        else:
            per_sample = 0.5 * (f - f_anti) * (-1.0) ** b_anti * (b != b_anti).float() * torch.sigmoid(theta.abs())
        torch.testing.assert_close(g["logits"], per_sample.mean(0))


def test_exact_relaxations_on_bernoulli_toy_nd():
    n, tau = 4, 0.7
    for name in ("gumbel-softmax", "straight-through"):
        _, p, g = replay(f"{name}:temperature={tau}", "bernoulli-toy-nd:theta=1 -2 0.3", n=n)
        theta = p["logits"]
        u = torch.rand((n,) + tuple(theta.shape)).clamp(torch.finfo(theta.dtype).eps, 1 - torch.finfo(theta.dtype).eps)
        y = torch.sigmoid((theta + torch.log(u) - torch.log1p(-u)) / tau)
        b = y if name == "gumbel-softmax" else (y > 0.5).float()
        torch.testing.assert_close(g["logits"], (2 * (b - P3) * y * (1 - y) / tau).mean(0))


# ---------------------------------------------------------------------------------------------
# the digits model: all four run; arm and disarm unbiased; gumbel-softmax's relaxed objective
# ---------------------------------------------------------------------------------------------
BSPEC = "digits-bernoulli-vae:latent=2,hidden=8,steps=40"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADNOISE_CACHE", str(tmp_path_factory.mktemp("gradnoise-cache")))
        yield


@pytest.mark.parametrize("estimator", ["arm", "disarm", "gumbel-softmax", "straight-through"])
def test_digits_bernoulli_vae_runs_all_four(cache, estimator):
    prob = gn.make_problem(BSPEC + ",points=2")
    est = gn.get_estimator(estimator)
    estimates, _ = replicate_estimates(prob, est, 3, R, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert ok == est.unbiased, f"{estimator}: unbiased={est.unbiased} but smallest p-value {pmin:.2e}"


def test_relaxed_cost_uses_logistic_densities(cache):
    """digits' relaxed integrand = log p(x | sigmoid y) + logistic logpdf(y; 0, 1/tau) - logpdf(y; logits/tau, 1/tau)."""
    prob, tau = gn.make_problem("digits-bernoulli-vae:latent=3,hidden=8,steps=40"), 0.7
    y = torch.randn(5, 1, 3) * 3
    model = prob._model()
    logits = model.encoder_points(prob.params).base_dist.logits.detach().numpy()
    density = (stats.logistic.logpdf(y.numpy(), 0.0, 1 / tau)
               - stats.logistic.logpdf(y.numpy(), logits / tau, 1 / tau)).sum((-2, -1))
    expected = model.log_likelihood_points(torch.sigmoid(y), prob.params).sum(-1).numpy() + density
    np.testing.assert_allclose(prob.relaxed_cost(y, prob.params, tau).numpy(), expected, rtol=1e-5)


def _relaxed_elbo_gradient(prob, tau: float, nodes: int) -> dict[str, np.ndarray]:
    """latent = 1: grad of the relaxed ELBO = int_0^1 grad f~(y(u)) du, Gauss-Legendre with ``nodes`` nodes."""
    u, w = special.roots_legendre(nodes)
    u, w = torch.tensor((u + 1) / 2, dtype=torch.float64), torch.tensor(w / 2, dtype=torch.float64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in prob.params.items()}
    logits = prob._model().encoder_points(leaves).base_dist.logits                  # (1, 1)
    noise = (torch.log(u) - torch.log1p(-u)).to(logits.dtype).reshape(-1, 1, 1)   # (M, 1, 1)
    f = prob.relaxed_cost((logits + noise) / tau, leaves, tau)                     # (M,)
    grads = torch.autograd.grad((w * f.double()).sum(), list(leaves.values()))
    return {k: g.double().numpy() for k, g in zip(leaves, grads)}


def test_gumbel_softmax_on_digits_is_unbiased_for_the_relaxed_elbo(cache):
    """Its mean is the gradient of the relaxed ELBO (by quadrature), not of the ELBO."""
    prob, tau = gn.make_problem("digits-bernoulli-vae:latent=1,hidden=8,steps=40"), 0.8
    estimates, _ = replicate_estimates(prob, gn.get_estimator(f"gumbel-softmax:temperature={tau}"), 2, R, SEED)
    exact, coarse = _relaxed_elbo_gradient(prob, tau, 4000), _relaxed_elbo_gradient(prob, tau, 1000)
    for k, g in estimates.items():   # the quadrature has converged far below the estimates' standard error
        se = g.double().std(0).numpy() / math.sqrt(R)
        assert np.all(np.abs(exact[k] - coarse[k]) <= 0.05 * se + 1e-9), k
    ok, pmin = is_unbiased(estimates, _exact(exact))
    assert ok, f"smallest p-value {pmin:.2e}"
    assert not is_unbiased(estimates, prob.true_gradient())[0]


# ---------------------------------------------------------------------------------------------
# capabilities and bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["arm", "disarm", "gumbel-softmax", "straight-through"])
@pytest.mark.parametrize("problem", ["gaussian-cos", "gaussian-quadratic-nd:d=3", "linear-gaussian-vae"])
def test_gaussian_latents_are_refused_naming_the_distribution(estimator, problem):
    with pytest.raises(gn.EstimatorNotApplicable, match=rf"{estimator}.*Normal.*{problem.split(':')[0]}"):
        gn.measure(problem, estimator, 4, replicates=10)


@pytest.mark.parametrize("estimator", ["arm", "disarm"])
def test_antithetic_estimators_refuse_categoricals(estimator):
    with pytest.raises(gn.EstimatorNotApplicable, match="Bernoulli latents.*OneHotCategorical"):
        gn.measure("categorical-toy", estimator, 4, replicates=10)


@pytest.mark.parametrize("estimator", ["gumbel-softmax", "straight-through"])
def test_relaxations_refuse_index_categoricals(estimator):
    prob = gn.ExpectationProblem(lambda logits: Categorical(logits=logits), {"logits": torch.zeros(3)},
                                 lambda x: x.float(), name="categorical-index")
    with pytest.raises(gn.EstimatorNotApplicable, match="OneHotCategorical latents.*Categorical"):
        gn.measure(prob, estimator, 4, replicates=10)


def test_gumbel_softmax_refuses_a_model_without_a_relaxed_objective():
    with pytest.raises(gn.EstimatorNotApplicable, match="relaxed"):
        gn.measure(TwoBitModel(), "gumbel-softmax", 4, replicates=10)
    # straight-through needs no relaxed objective: the discrete ELBO integrand is differentiable in z
    assert len(gn.measure(TwoBitModel(), "straight-through", 4, replicates=10)) == 3


@pytest.mark.parametrize("spec", ["gumbel-softmax:temperature=0", "straight-through:temperature=-1"])
def test_temperature_must_be_positive(spec):
    with pytest.raises(ValueError, match="temperature"):
        gn.get_estimator(spec)


@pytest.mark.parametrize("spec, match", [
    ("bernoulli-toy-nd:theta=1 2", "1 or 3 values"), ("bernoulli-toy-nd:p=a b", "numbers"),
    ("categorical-toy:k=1", "k >= 2"),
])
def test_bad_problem_options(spec, match):
    with pytest.raises(ValueError, match=match):
        gn.make_problem(spec)


def test_cost_evaluations():
    assert gn.get_estimator("arm").cost_evals(7) == 14 and gn.get_estimator("disarm").cost_evals(7) == 14
    assert gn.get_estimator("gumbel-softmax").cost_evals(7) == 7
    assert gn.get_estimator("straight-through").cost_evals(7) == 7
