"""REBAR, RELAX, the unordered-set estimator and Gumbel-Rao against exact values derived here (issue 20).

* rebar (adapt=false): mean and single-sample variance by two-dimensional quadrature over (u, v)
  of the per-sample estimator written out by hand (the u-integral split at 1 - p).
* relax with a fixed surrogate: unbiased on bernoulli-toy, bernoulli-toy-nd and
  digits-bernoulli-vae; rebar and relax adapt in a minimise() run and stay unbiased.
* unordered-set: mean and variance by enumerating the ordered samples without replacement.
* gumbel-rao: straight-through's exact mean, and the exact variance of the k-draw average
  (one-dimensional quadrature on each side of the jump), tending to Var E[ST | b].

Tolerances come from the estimates' own standard errors (tests/stat_checks.py), Holm-corrected.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import gradnoise as gn
import gradnoise.rebar as rebar_module
import gradnoise.unordered_set as set_module
from gradnoise.engine import replicate_estimates
from gradnoise.training import minimise
from stat_checks import ALPHA, holm_reject, is_unbiased, log_variance_z

SEED = 20261205
R = 4000
VARIANCE_R = 20000


def _exact(values):
    vals = {k: torch.as_tensor(np.asarray(v, dtype=float)) for k, v in values.items()}
    return SimpleNamespace(values=vals, se={k: torch.zeros_like(v) for k, v in vals.items()})


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _variance_p(g: torch.Tensor, exact: float) -> float:
    return float(2 * stats.norm.sf(abs(log_variance_z(g, exact))))


# ---------------------------------------------------------------------------------------------
# rebar: exact mean and single-sample variance by 2-D quadrature over (u, v)
# ---------------------------------------------------------------------------------------------
def _rebar_1d(u, v, theta, t, eta, lam):
    r"""REBAR's single-sample estimate for f(b) = (b - t)^2, b ~ Bernoulli(sigma(theta)), as a
    function of (u, v), written from the definitions (numpy arrays u, v).

    z = theta + logit u, b = 1[u > 1 - p]; u~ = b (1 - p + v p) + (1 - b) v (1 - p) is uniform on
    the side of 1 - p that b picks (the conditional of u given b), z~ = theta + logit u~; with
    c(x) = eta (sigmoid(x / lam) - t)^2 and p' = p(1 - p), du~/dtheta = -p' (1 - v) (b = 1) or
    -p' v (b = 0), so dz~/dtheta = 1 + (du~/dtheta) / (u~ (1 - u~)). Then
    g = (f(b) - c(z~)) (b - p) + dc(z)/dtheta - dc(z~)/dtheta.
    """
    p = _sigmoid(theta)
    dp = p * (1 - p)
    b = (u > 1 - p).astype(float)
    z = theta + np.log(u) - np.log1p(-u)
    ut = b * (1 - p + v * p) + (1 - b) * v * (1 - p)
    zt = theta + np.log(ut) - np.log1p(-ut)
    dzt = 1 + (b * (-dp * (1 - v)) + (1 - b) * (-dp * v)) / (ut * (1 - ut))
    s, st = special.expit(z / lam), special.expit(zt / lam)
    dc = eta * 2 * (s - t) * s * (1 - s) / lam
    dct = eta * 2 * (st - t) * st * (1 - st) / lam * dzt
    return ((b - t) ** 2 - eta * (st - t) ** 2) * (b - p) + dc - dct


def _gauss_legendre(a, b, nodes):
    x, w = special.roots_legendre(nodes)
    return (b - a) / 2 * x + (a + b) / 2, (b - a) / 2 * w


def _rebar_moments(theta, t, eta, lam, nodes=400):
    """(mean, variance) of _rebar_1d over (u, v) ~ U(0,1)^2: Gauss-Legendre on u in (0, 1-p) and
    (1-p, 1) (the jump of b), times v in (0, 1)."""
    p = _sigmoid(theta)
    v, wv = _gauss_legendre(0.0, 1.0, nodes)
    m1 = m2 = 0.0
    for a, b in ((0.0, 1 - p), (1 - p, 1.0)):
        u, wu = _gauss_legendre(a, b, nodes)
        g = _rebar_1d(u[:, None], v[None, :], theta, t, eta, lam)
        w = wu[:, None] * wv[None, :]
        m1 += (w * g).sum()
        m2 += (w * g**2).sum()
    return m1, m2 - m1**2


REBAR_SETTINGS = [(0.5, 0.2, 1.0, 0.5), (-2.0, 0.3, 0.7, 1.0), (1.0, 0.45, 1.5, 0.3), (0.0, 0.499, 1.0, 0.5)]


def _rebar_spec(eta, lam, **more):
    options = ",".join(f"{k}={v}" for k, v in {"eta": eta, "temperature": lam, "adapt": "false", **more}.items())
    return f"rebar:{options}"


@pytest.mark.parametrize("theta, t, eta, lam", REBAR_SETTINGS)
def test_rebar_quadrature_mean_is_the_true_gradient_and_has_converged(theta, t, eta, lam):
    mean, var = _rebar_moments(theta, t, eta, lam)
    assert mean == pytest.approx(_sigmoid(theta) * (1 - _sigmoid(theta)) * (1 - 2 * t), rel=1e-6, abs=1e-9)
    # the quadrature has converged far below what VARIANCE_R can resolve (a relative 1e-2)
    assert _rebar_moments(theta, t, eta, lam, nodes=200)[1] == pytest.approx(var, rel=1e-4)


def test_rebar_without_adaptation_matches_its_exact_mean_and_variance():
    """Mean against the enumeration truth; the single-sample variance (N = 1) against quadrature."""
    means, variances, rows = [], [], []
    for theta, t, eta, lam in REBAR_SETTINGS:
        prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
        g, _ = replicate_estimates(prob, gn.get_estimator(_rebar_spec(eta, lam)), 1, VARIANCE_R, SEED)
        exact_mean, exact_var = _rebar_moments(theta, t, eta, lam)
        means.append(is_unbiased(g, prob.true_gradient())[1])
        variances.append(_variance_p(g["logits"], exact_var))
        rows.append((theta, t, eta, lam, exact_mean, float(g["logits"].double().mean()), exact_var,
                     float(g["logits"].double().var())))
    rejected = holm_reject(np.array(means + variances))
    assert not rejected.any(), rows


def test_rebar_variance_check_rejects_a_wrong_exact_value():
    """Power: the variance at eta = 1 is not the one at eta = 0.7 (other settings the same)."""
    theta, t, lam = 0.5, 0.2, 0.5
    prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
    g, _ = replicate_estimates(prob, gn.get_estimator(_rebar_spec(1.0, lam)), 1, VARIANCE_R, SEED)
    assert _variance_p(g["logits"], _rebar_moments(theta, t, 0.7, lam)[1]) < ALPHA


def test_rebar_without_the_conditional_reparameterisation_is_caught(monkeypatch):
    """Negative control: z~ not differentiated through theta drops -grad c(z~): biased."""
    real = rebar_module.conditional_logistic
    monkeypatch.setattr(rebar_module, "conditional_logistic", lambda logits, b, v: real(logits.detach(), b, v))
    prob = gn.make_problem("bernoulli-toy:theta=0.5,t=0.2")
    g, _ = replicate_estimates(prob, gn.get_estimator(_rebar_spec(1.0, 0.5)), 1, R, SEED)
    assert not is_unbiased(g, prob.true_gradient())[0]


# ---------------------------------------------------------------------------------------------
# relax (and rebar) unbiased with fixed and with adapted control variates
# ---------------------------------------------------------------------------------------------
TOYS = ["bernoulli-toy:theta=0.5,t=0.2", "bernoulli-toy:theta=-2,t=0.3", "bernoulli-toy-nd",
        "bernoulli-toy-nd:theta=1 -2 0.3"]


@pytest.mark.parametrize("estimator", ["relax:adapt=false", "relax:warmup=30", "rebar:warmup=30"])
def test_relax_and_rebar_are_unbiased_on_the_toys(estimator):
    pvalues = []
    for spec in TOYS:
        prob = gn.make_problem(spec)
        g, _ = replicate_estimates(prob, gn.get_estimator(estimator), 2, R, SEED)
        pvalues.append(is_unbiased(g, prob.true_gradient())[1])
    assert not holm_reject(np.array(pvalues)).any(), pvalues


BSPEC = "digits-bernoulli-vae:latent=2,hidden=8,steps=40,points=2"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADNOISE_CACHE", str(tmp_path_factory.mktemp("gradnoise-cache")))
        yield


@pytest.mark.parametrize("estimator", ["relax:adapt=false", "rebar:adapt=false"])
def test_relax_and_rebar_are_unbiased_on_digits_bernoulli_vae(cache, estimator):
    prob = gn.make_problem(BSPEC)
    g, _ = replicate_estimates(prob, gn.get_estimator(estimator), 2, R, SEED)
    ok, pmin = is_unbiased(g, prob.true_gradient())
    assert ok, f"smallest p-value {pmin:.2e}"


class _Terms:
    """bernoulli-toy at the trained logits, with ``terms`` independent replicates of one objective."""

    def __init__(self, spec, terms, params):
        self.base, self.terms, self.params = gn.make_problem(spec), terms, params

    def __call__(self, t):
        point = self.base.at({k: v.detach() for k, v in self.params.items()})
        point.terms = self.terms
        return point


@pytest.mark.parametrize("estimator, moved", [("rebar", ["eta", "log_temperature"]),
                                              ("relax", ["eta", "log_temperature", "w1", "w2"])])
def test_control_parameters_move_in_training_and_the_estimate_stays_unbiased(estimator, moved):
    """minimise() steps the estimator (estimate + adapt) each iteration: its control parameters move
    and the estimates with the adapted state, at the trained point, are unbiased."""
    spec, terms, n = "bernoulli-toy:theta=0.5,t=0.2", 2000, 2
    params = {"logits": torch.tensor(0.5, requires_grad=True)}
    est = gn.get_estimator(estimator)
    at = _Terms(spec, terms, params)
    torch.manual_seed(SEED)
    initial = est.init(at(0), gn.replicate(at(0).params, (terms,)), n)
    state = minimise(at, est, n, params, torch.optim.SGD([params["logits"]], lr=0.5), 20)
    assert float(params["logits"].detach()) < 0.5                       # minimising E (b - 0.2)^2 lowers p
    for name in moved:
        assert not torch.allclose(state["controls"][name], initial["controls"][name]), name
    point = at(21)
    leaves = gn.replicate(point.params, (terms,))
    g = est.estimate(point, leaves, n, state).grads
    ok, pmin = is_unbiased(g, point.true_gradient())
    assert ok, f"smallest p-value {pmin:.2e}"


@pytest.mark.parametrize("estimator", ["rebar", "relax"])
def test_the_warm_up_is_reproducible_and_changes_the_estimate(estimator):
    prob = gn.make_problem("bernoulli-toy:theta=0.5,t=0.2")
    one, two = (gn.engine.block_estimates(prob, gn.get_estimator(estimator), 2, 300, 5)[0] for _ in range(2))
    cold = gn.engine.block_estimates(prob, gn.get_estimator(f"{estimator}:warmup=0"), 2, 300, 5)[0]
    assert torch.equal(one["logits"], two["logits"]) and not torch.equal(one["logits"], cold["logits"])


# ---------------------------------------------------------------------------------------------
# unordered-set: exact mean and variance by enumerating ordered samples without replacement
# ---------------------------------------------------------------------------------------------
def _set_prob(p, members, removed=0.0):
    """Sum over the orders of ``members`` of prod_i p_i / (1 - removed - sum_{j<i} p_j)."""
    total = 0.0
    for order in itertools.permutations(members):
        left, prob = 1.0 - removed, 1.0
        for s in order:
            prob *= p[s] / left
            left -= p[s]
        total += prob
    return total


def _unordered_set_value(theta, costs, chosen):
    """Kool et al. (2020)'s estimate with baseline for the set ``chosen``, by permutation sums:
    sum_s grad p(s) R(S, s) [f(s) - sum_s' p(s') R^{D-s}(S, s') f(s')], grad_theta p(s) = p(s)(e_s - p)."""
    p = special.softmax(theta)
    whole = _set_prob(p, chosen)
    g = np.zeros_like(theta)
    for s in chosen:
        rest = [x for x in chosen if x != s]
        loo = _set_prob(p, rest, p[s])
        baseline = p[s] * costs[s] + sum(
            p[o] * _set_prob(p, [x for x in rest if x != o], p[s] + p[o]) / loo * costs[o] for o in rest)
        g += p[s] * (np.eye(len(theta))[s] - p) * (loo / whole) * (costs[s] - baseline)
    return g


def _unordered_set_moments(k, n, spread=1.0, t=0.45):
    """Exact (mean, per-coordinate variance) over all ordered n-samples without replacement."""
    grid = np.arange(k) / (k - 1)
    theta, costs = spread * (grid - 0.5), (grid - t) ** 2
    p = special.softmax(theta)
    m1, m2, total = np.zeros(k), np.zeros(k), 0.0
    for order in itertools.permutations(range(k), n):
        prob, left = 1.0, 1.0
        for s in order:
            prob *= p[s] / left
            left -= p[s]
        g = _unordered_set_value(theta, costs, sorted(order))
        m1, m2, total = m1 + prob * g, m2 + prob * g**2, total + prob
    assert total == pytest.approx(1.0, abs=1e-12)
    return m1, m2 - m1**2


SETS = [(3, 2), (4, 2), (4, 3), (5, 3), (6, 4)]


@pytest.mark.parametrize("k, n", SETS)
def test_unordered_set_enumerated_mean_is_the_true_gradient(k, n):
    mean, _ = _unordered_set_moments(k, n)
    truth = gn.make_problem(f"categorical-toy:k={k}").true_gradient().values["logits"].double().numpy()
    np.testing.assert_allclose(mean, truth, rtol=1e-5, atol=1e-8)


def test_unordered_set_matches_its_enumerated_mean_and_variance():
    pvalues, rows = [], []
    for k, n in SETS:
        prob = gn.make_problem(f"categorical-toy:k={k}")
        g, _ = replicate_estimates(prob, gn.get_estimator("unordered-set"), n, R, SEED)
        mean, var = _unordered_set_moments(k, n)
        from stat_checks import bias_pvalues
        pvalues.extend(bias_pvalues(g, _exact({"logits": mean})))
        for d in range(k):
            pvalues.append(_variance_p(g["logits"][:, d], var[d]))
            rows.append((k, n, d, var[d], float(g["logits"][:, d].double().var())))
    rejected = holm_reject(np.array(pvalues))
    assert not rejected.any(), rows


def test_unordered_set_on_index_categoricals_is_the_one_hot_estimate():
    """A Categorical (class indices) with the cost c[x] gives the same numbers as categorical-toy
    (one-hot, cost c.x) on the same stream: the same sets, costs and weights."""
    one_hot = gn.make_problem("categorical-toy:k=5")
    costs = one_hot.costs
    index = gn.ExpectationProblem(lambda logits: torch.distributions.Categorical(logits=logits),
                                  {"logits": one_hot.params["logits"]}, lambda x: costs[x], name="categorical-index")
    est = gn.get_estimator("unordered-set")
    a = gn.engine.block_estimates(index, est, 3, 500, 11)[0]["logits"]
    b = gn.engine.block_estimates(one_hot, est, 3, 500, 11)[0]["logits"]
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, gn.engine.block_estimates(one_hot, est, 3, 500, 12)[0]["logits"])


def test_unordered_set_over_the_whole_support_is_exact():
    prob = gn.make_problem("categorical-toy:k=3")
    g, _ = replicate_estimates(prob, gn.get_estimator("unordered-set"), 3, 100, SEED)
    torch.testing.assert_close(g["logits"], prob.true_gradient().values["logits"].expand(100, 3))


def test_unordered_set_without_the_conditional_baseline_weights_is_caught(monkeypatch):
    """Negative control: R^{D-s}(S, s') replaced by 1 (the baseline sum_s' p(s') f(s')) is biased."""
    real = set_module.set_weights

    def wrong(p):
        ratio, two = real(p)
        return ratio, torch.ones_like(two)

    monkeypatch.setattr(set_module, "set_weights", wrong)
    prob = gn.make_problem("categorical-toy:k=5")
    g, _ = replicate_estimates(prob, gn.get_estimator("unordered-set"), 3, R, SEED)
    assert not is_unbiased(g, prob.true_gradient())[0]


# ---------------------------------------------------------------------------------------------
# gumbel-rao: straight-through's mean, a variance between Var E[ST | b] and straight-through's
# ---------------------------------------------------------------------------------------------
def _jacobian(u, theta, tau):
    y = special.expit((theta + special.logit(u)) / tau)
    return y * (1 - y) / tau


def _gumbel_rao_moments(theta, t, tau, k):
    """(mean, variance) of GR_k = 2 (b - t) mean_j J(u_j), u_j ~ U given b, J the relaxed
    Jacobian: Var = E[(2(b - t))^2 (m_b^2 + v_b / k)] - (E[2 (b - t) m_b])^2, with m_b, v_b the
    conditional mean and variance of J (quadrature on (0, 1-p) for b = 0 and (1-p, 1) for b = 1)."""
    p = _sigmoid(theta)
    first = second = 0.0
    for b, (lo, hi), prob in ((0.0, (0.0, 1 - p), 1 - p), (1.0, (1 - p, 1.0), p)):
        m = integrate.quad(lambda u: _jacobian(u, theta, tau), lo, hi, epsabs=1e-14, limit=200)[0] / prob
        m2 = integrate.quad(lambda u: _jacobian(u, theta, tau) ** 2, lo, hi, epsabs=1e-14, limit=200)[0] / prob
        first += prob * 2 * (b - t) * m
        second += prob * (2 * (b - t)) ** 2 * (m**2 + (m2 - m**2) / k)
    return first, second - first**2


def _straight_through_moments(theta, t, tau):
    def st(u):
        return 2 * (float(u > 1 - _sigmoid(theta)) - t) * _jacobian(u, theta, tau)
    m1 = integrate.quad(st, 0, 1, points=[1 - _sigmoid(theta)], epsabs=1e-14, limit=200)[0]
    m2 = integrate.quad(lambda u: st(u) ** 2, 0, 1, points=[1 - _sigmoid(theta)], epsabs=1e-14, limit=200)[0]
    return m1, m2 - m1**2


RAO = [(0.5, 0.2, 1.0), (-2.0, 0.3, 0.5)]


@pytest.mark.parametrize("theta, t, tau", RAO)
def test_gumbel_rao_exact_moments(theta, t, tau):
    """Same mean as straight-through at every k; k = 1 is straight-through; the variance falls with k
    to Var E[ST | b]."""
    st_mean, st_var = _straight_through_moments(theta, t, tau)
    gr = [_gumbel_rao_moments(theta, t, tau, k) for k in (1, 10, 100, 10**6)]
    assert all(m == pytest.approx(st_mean, rel=1e-8) for m, _ in gr)
    assert gr[0][1] == pytest.approx(st_var, rel=1e-6)
    assert st_var > gr[1][1] > gr[2][1] > gr[3][1] > 0


def test_gumbel_rao_matches_its_exact_mean_and_variance():
    pvalues, rows = [], []
    for (theta, t, tau), k in itertools.product(RAO, [1, 10, 100]):
        prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
        g, _ = replicate_estimates(prob, gn.get_estimator(f"gumbel-rao:k={k},temperature={tau}"), 1,
                                   VARIANCE_R, SEED)
        mean, var = _gumbel_rao_moments(theta, t, tau, k)
        pvalues.append(is_unbiased(g, _exact({"logits": mean}))[1])
        pvalues.append(_variance_p(g["logits"], var))
        rows.append((theta, t, tau, k, mean, float(g["logits"].double().mean()), var,
                     float(g["logits"].double().var())))
    rejected = holm_reject(np.array(pvalues))
    assert not rejected.any(), rows
    # biased as straight-through: the exact bias is far beyond the standard error here
    prob = gn.make_problem("bernoulli-toy:theta=0.5,t=0.2")
    g, _ = replicate_estimates(prob, gn.get_estimator("gumbel-rao"), 1, VARIANCE_R, SEED)
    assert not is_unbiased(g, prob.true_gradient())[0]


def test_gumbel_rao_on_two_classes_has_straight_throughs_mean():
    """K = 2, linear cost: straight-through's mean is (c1 - c0) E[y (1 - y)] / tau (+-), by quadrature."""
    prob, tau = gn.make_problem("categorical-toy:k=2,spread=1.5,t=0.2"), 1.0
    g, _ = replicate_estimates(prob, gn.get_estimator(f"gumbel-rao:temperature={tau}"), 2, R, SEED)
    d1 = integrate.quad(lambda u: (0.8**2 - 0.2**2) * _jacobian(u, 1.5, tau), 0, 1, epsabs=1e-13)[0]
    ok, pmin = is_unbiased(g, _exact({"logits": [-d1, d1]}))
    assert ok, f"smallest p-value {pmin:.2e}"


def test_gumbel_rao_with_the_derivative_through_the_noise_is_caught():
    """Negative control: the conditional noise differentiated through theta (the paper's wording)
    moves the mean off straight-through's."""
    real = rebar_module.conditional_logistic
    theta, t, tau = 0.5, 0.2, 1.0
    prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
    est = gn.get_estimator(f"gumbel-rao:temperature={tau}")
    leaves = gn.replicate(prob.params, (R,))
    torch.manual_seed(SEED)
    # the same estimator with the noise left in the graph
    base = gn.base.base_distribution(prob.distribution(leaves))
    hard = (torch.rand((1, R)) < torch.sigmoid(base.logits)).float()
    v = torch.rand((10, 1, R)).clamp(1e-6, 1 - 1e-6)
    z = real(base.logits, hard, v)
    soft = torch.sigmoid(z / tau).mean(0)
    b = hard + (soft - soft.detach())
    g = gn.grad_of(prob.cost(b, leaves).mean(0), leaves)
    mean, _ = _gumbel_rao_moments(theta, t, tau, 10)
    assert not is_unbiased(g, _exact({"logits": mean}))[0]
    assert est.unbiased is False


# ---------------------------------------------------------------------------------------------
# capabilities, options, costs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["rebar", "relax", "unordered-set", "gumbel-rao"])
@pytest.mark.parametrize("problem", ["gaussian-cos", "linear-gaussian-vae"])
def test_gaussian_latents_are_refused(estimator, problem):
    with pytest.raises(gn.EstimatorNotApplicable, match=rf"{estimator}.*Normal"):
        gn.measure(problem, estimator, 4, replicates=10)


@pytest.mark.parametrize("estimator", ["rebar", "relax"])
def test_relaxed_control_variates_refuse_categoricals_and_step_costs(estimator):
    with pytest.raises(gn.EstimatorNotApplicable, match="Bernoulli latents.*OneHotCategorical"):
        gn.measure("categorical-toy", estimator, 4, replicates=10)
    step = gn.BernoulliProblem(torch.zeros(2), lambda b: torch.round(b).sum(-1), name="step-cost")
    with pytest.raises(gn.EstimatorNotApplicable, match="relaxed sample.*zero"):
        gn.measure(step, estimator, 4, replicates=10)


def test_unordered_set_refusals():
    with pytest.raises(gn.EstimatorNotApplicable, match="only 3 classes"):
        gn.measure("categorical-toy:k=3", "unordered-set", 4, replicates=10)
    with pytest.raises(gn.EstimatorNotApplicable, match="N <= 8"):
        gn.measure("categorical-toy:k=10", "unordered-set", 9, replicates=10)
    with pytest.raises(gn.EstimatorNotApplicable, match="N >= 2"):
        gn.measure("categorical-toy:k=3", "unordered-set", 1, replicates=10)
    with pytest.raises(gn.EstimatorNotApplicable, match="Categorical latents.*Bernoulli"):
        gn.measure("bernoulli-toy", "unordered-set", 2, replicates=10)
    rows = gn.measure("categorical-toy:k=3", "unordered-set", [1, 2, 10], replicates=10, on_invalid="skip")
    assert rows["budget"].tolist() == [2]             # a grid skips the cells it does not apply to


@pytest.mark.parametrize("spec, match", [("rebar:temperature=0", "temperature"), ("relax:hidden=0", "hidden"),
                                         ("rebar:warmup=-1", "warmup"), ("relax:lr=0", "lr"),
                                         ("gumbel-rao:k=0", "k must"), ("gumbel-rao:temperature=-1", "temperature")])
def test_bad_options(spec, match):
    with pytest.raises(ValueError, match=match):
        gn.get_estimator(spec)


def test_cost_evaluations_and_warm_up():
    rebar, relax = gn.get_estimator("rebar"), gn.get_estimator("relax:adapt=false")
    assert rebar.cost_evals(7) == 21 and relax.cost_evals(7) == 21
    assert rebar.warmup_steps(7) == 20 and rebar.amortised_evals(7) == 420 and rebar.amortised_prepare
    assert relax.warmup_steps(7) == 0 and relax.amortised_evals(7) == 0 and not relax.amortised_prepare
    assert gn.get_estimator("unordered-set").cost_evals(3) == 3
    assert gn.get_estimator("gumbel-rao:k=50").cost_evals(3) == 3
    assert [gn.get_estimator(e).unbiased for e in ("rebar", "relax", "unordered-set", "gumbel-rao")] == \
        [True, True, True, False]


def _log_var(g):
    """log sample variance and its delta-method standard error (as stat_checks.log_variance_z)."""
    y = (g.double() - g.double().mean()) ** 2
    return math.log(y.sum().item() / (len(y) - 1)), (y.std() / (y.mean() * math.sqrt(len(y)))).item()


@pytest.mark.parametrize("theta, t", [(0.0, 0.499), (0.5, 0.2)])
def test_relax_after_its_warm_up_has_lower_variance_than_rebar(theta, t):
    """The measured claim (Grathwohl et al. 2018, the toy): after the default warm-up at the same
    (theta, t), RELAX's variance is below REBAR's, by more than 4 standard errors of the log ratio."""
    prob = gn.make_problem(f"bernoulli-toy:theta={theta},t={t}")
    (a, se_a), (b, se_b) = (_log_var(replicate_estimates(prob, gn.get_estimator(e), 1, R, SEED)[0]["logits"])
                            for e in ("relax", "rebar"))
    assert a - b < -4 * math.hypot(se_a, se_b), (math.exp(a), math.exp(b))
