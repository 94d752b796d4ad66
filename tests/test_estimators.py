"""Estimators are right: statistically (unbiased, variance ~ 1/N) and exactly (replayed noise)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

import gradnoise as gn
from gradnoise.baselines import Baseline, ControlVariate
from gradnoise.engine import replicate_estimates
from stat_checks import is_unbiased, replay

# the built-in problems that are cheap enough for every estimator x problem pair
FAST_PROBLEMS = [
    "gaussian-quadratic", "gaussian-exp", "gaussian-cos", "gaussian-quadratic-nd:d=5",
    "bernoulli-toy", "linear-gaussian-vae",
]
BUDGET, REPLICATES, SEED = 4, 4000, 20261125
# biased pairs whose bias is exactly known to be below what 20000 replicates resolve: on
# bernoulli-toy's defaults (theta=0, t=0.499) both relaxations have mean (1-2t)/6 against the
# truth (1-2t)/4, a bias of -1.7e-4 beside a per-sample sd near 0.1 (gumbel-rao has
# straight-through's mean); their bias is detected in tests/test_discrete_estimators.py and
# tests/test_rebar_relax_set_rao.py at settings that resolve it
UNRESOLVED_BIAS = {("gumbel-softmax", "bernoulli-toy"), ("straight-through", "bernoulli-toy"),
                   ("gumbel-rao", "bernoulli-toy")}


def _pairs(unbiased: bool):
    for e in gn.estimator_names():
        for p in FAST_PROBLEMS:
            est, prob = gn.get_estimator(e), gn.make_problem(p)
            try:
                est.check(prob, BUDGET)
            except (gn.EstimatorNotApplicable, ValueError):
                continue
            if est.unbiased_at(BUDGET) == unbiased and (unbiased or (e, p) not in UNRESOLVED_BIAS):
                yield pytest.param(e, p, id=f"{e}-{p}")


@pytest.mark.parametrize("estimator, problem", list(_pairs(unbiased=True)))
def test_unbiased(estimator, problem):
    """|mean - truth| within 4 SE for every coordinate, Holm-corrected across parameters."""
    est, prob = gn.get_estimator(estimator), gn.make_problem(problem)
    estimates, _ = replicate_estimates(prob, est, BUDGET, REPLICATES, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient(est.objective(BUDGET)))
    assert ok, f"{estimator} on {problem}: smallest coordinate p-value {pmin:.2e}"


class InSampleMean(Baseline):
    """Deliberately wrong: the baseline includes the sample it multiplies (mean over all n)."""

    def value(self, state, f):
        return ControlVariate(per_sample=f.mean(0, keepdim=True))


@pytest.mark.parametrize("problem", ["gaussian-quadratic", "gaussian-cos", "linear-gaussian-vae"])
def test_negative_control_is_caught(problem):
    """The unbiasedness check rejects a biased estimator: E[(f_i - mean f) s_i] = (1 - 1/n) E[f s]."""
    est, prob = gn.ScoreFunction(InSampleMean(), name="biased-in-sample-mean"), gn.make_problem(problem)
    estimates, _ = replicate_estimates(prob, est, 2, REPLICATES, SEED)
    ok, pmin = is_unbiased(estimates, prob.true_gradient())
    assert not ok, f"bias not detected on {problem} (smallest p {pmin:.2e})"


@pytest.mark.parametrize("estimator, problem", list(_pairs(unbiased=False)))
def test_estimators_labelled_biased_are_detected(estimator, problem):
    est, prob = gn.get_estimator(estimator), gn.make_problem(problem)
    estimates, _ = replicate_estimates(prob, est, BUDGET, 20000, SEED)
    ok, _ = is_unbiased(estimates, prob.true_gradient(est.objective(BUDGET)))
    assert not ok


# ---------------------------------------------------------------------------------------------
# variance of an i.i.d. mean: Var[g_N] = Var[g_1] / N
# ---------------------------------------------------------------------------------------------
def _log_variance(g: torch.Tensor):
    """log sample variance and its delta-method standard error sqrt((kurtosis - 1) / R)."""
    y = (g.double() - g.double().mean()) ** 2
    return math.log(y.sum().item() / (len(y) - 1)), (y.std() / (y.mean() * math.sqrt(len(y)))).item()


@pytest.mark.parametrize("estimator", ["reinforce", "reparam"])
@pytest.mark.parametrize("problem", ["gaussian-cos", "gaussian-exp"])
def test_variance_scales_as_one_over_n(estimator, problem):
    prob, est, n = gn.make_problem(problem), gn.get_estimator(estimator), 16
    g1, _ = replicate_estimates(prob, est, 1, 40000, SEED)
    gn_, _ = replicate_estimates(prob, est, n, 40000, SEED + 1)
    for name in prob.params:
        (l1, s1), (ln, sn) = _log_variance(g1[name]), _log_variance(gn_[name])
        z = (l1 - math.log(n) - ln) / math.hypot(s1, sn)
        assert abs(z) < 4, f"{name}: Var1/N vs VarN differ by z={z:.2f}"


# ---------------------------------------------------------------------------------------------
# exact: replay the noise and compare with hand-derived formulas
# ---------------------------------------------------------------------------------------------
_run = replay


def test_exact_reparam_gaussian_quadratic():
    prob, p, g = _run("reparam", "gaussian-quadratic:k=3,loc=0.5,scale=2", n=5)
    x = Normal(p["loc"], p["scale"]).rsample((5,))
    eps = (x - p["loc"]) / p["scale"]
    torch.testing.assert_close(g["loc"], (2 * (x - 3)).mean(0))
    torch.testing.assert_close(g["scale"], (2 * (x - 3) * eps).mean(0))


def test_exact_reinforce_gaussian_cos():
    prob, p, g = _run("reinforce", "gaussian-cos:k=5,loc=1,scale=0.5", n=6)
    mu, s = p["loc"], p["scale"]
    x = Normal(mu, s).sample((6,))
    f = torch.cos(5 * x)
    torch.testing.assert_close(g["loc"], (f * (x - mu) / s**2).mean(0))
    torch.testing.assert_close(g["scale"], (f * ((x - mu) ** 2 / s**3 - 1 / s)).mean(0))


def test_exact_reinforce_loo_bernoulli():
    prob, p, g = _run("reinforce-loo", "bernoulli-toy:theta=0.3,t=0.2", n=4)
    b = Bernoulli(logits=p["logits"]).sample((4,))
    f = (b - 0.2) ** 2
    loo = (f.sum(0) - f) / 3
    score = b - torch.sigmoid(p["logits"])          # d/dtheta log Bernoulli(b; logits=theta)
    torch.testing.assert_close(g["logits"], ((f - loo) * score).mean(0))


def test_exact_reinforce_optimal_baseline_uses_pilot():
    prob, p, g = _run("reinforce-optimal:pilot=5", "gaussian-quadratic", n=4)
    mu, s = p["loc"], p["scale"]
    xp = Normal(mu.expand(5, 3), s.expand(5, 3)).sample()      # pilot first, per (pilot, replicate)
    fp, sp = (xp - 2) ** 2, (xp - mu) / s**2
    b = (fp * sp**2).sum(0) / (sp**2).sum(0)
    x = Normal(mu, s).sample((4,))
    f, score = (x - 2) ** 2, (x - mu) / s**2
    torch.testing.assert_close(g["loc"], ((f - b) * score).mean(0))


def test_exact_reinforce_ema_warmup():
    prob, p, g = _run("reinforce-ema:beta=0.5,warmup=2", "gaussian-exp", n=3)
    d = Normal(p["loc"], p["scale"])
    cost = lambda x: torch.exp(-2 * x**2)  # noqa: E731
    state = cost(d.sample((3,))).mean(0)
    for _ in range(2):
        state = 0.5 * state + 0.5 * cost(d.sample((3,))).mean(0)
    x = d.sample((3,))
    torch.testing.assert_close(g["loc"], ((cost(x) - state) * (x - p["loc"]) / p["scale"] ** 2).mean(0))


def test_exact_iwae_generative_gradient():
    """On the linear-Gaussian model, d/dmu of the IWAE bound is sum_k wtilde_k (z_k - mu)."""
    prob, p, g = _run("iwae", "linear-gaussian-vae:d=4", n=3)
    q = prob.distribution(p)
    z = q.rsample((3,))
    log_w = (Normal(p["mu"], 1).log_prob(z).sum(-1) + Normal(z, 1).log_prob(prob.x).sum(-1)
             - q.log_prob(z))
    wt = torch.softmax(log_w, 0)
    torch.testing.assert_close(g["mu"], (wt.unsqueeze(-1) * (z - p["mu"])).sum(0))


def test_iwae_with_k1_equals_reparam_exactly():
    _, _, iwae = _run("iwae", "linear-gaussian-vae", n=1, r=5)
    _, _, reparam = _run("reparam", "linear-gaussian-vae", n=1, r=5)
    for name in iwae:
        assert torch.equal(iwae[name], reparam[name]), name


# ---------------------------------------------------------------------------------------------
# capabilities and bad input
# ---------------------------------------------------------------------------------------------
def test_pathwise_refuses_distribution_without_rsample():
    with pytest.raises(gn.EstimatorNotApplicable, match="Bernoulli"):
        gn.measure("bernoulli-toy", "reparam", 10, replicates=10)


def test_pathwise_refuses_nonreparameterised_normal():
    class NonreparameterizedNormal(Normal):
        has_rsample = False

    prob = gn.ExpectationProblem(NonreparameterizedNormal, {"loc": 0.0, "scale": 1.0}, lambda x: x**2,
                                 expected_cost=lambda p: p["loc"] ** 2 + p["scale"] ** 2)
    with pytest.raises(gn.EstimatorNotApplicable, match="NonreparameterizedNormal"):
        gn.measure(prob, "reparam", 10, replicates=10)
    # the same problem still runs through the score-function path
    assert len(gn.measure(prob, "reinforce", 10, replicates=10)) == 2


def test_iwae_refuses_plain_expectation():
    with pytest.raises(gn.EstimatorNotApplicable, match="model problem"):
        gn.measure("gaussian-cos", "iwae", 10, replicates=10)


def test_loo_at_n1_is_a_clear_error():
    with pytest.raises(ValueError, match="N >= 2"):
        gn.measure("gaussian-cos", "reinforce-loo", 1, replicates=10)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="reinforce-loo"):
        gn.get_estimator("reinforse")
    with pytest.raises(KeyError, match="gaussian-cos"):
        gn.make_problem("gausian-cos")


@pytest.mark.parametrize("budget, replicates, match", [(0, 10, "budget"), (-3, 10, "budget"),
                                                       (10, 1, "replicates"), (10, 0, "replicates")])
def test_bad_counts(budget, replicates, match):
    with pytest.raises(ValueError, match=match):
        gn.measure("gaussian-cos", "reinforce", budget, replicates=replicates)


@pytest.mark.parametrize("spec, match", [
    ("gaussian-cos:k", "malformed"), ("gaussian-cos:k=1,,loc=2", "malformed"),
    ("gaussian-cos:", "malformed"), ("gaussian-cos:k=abc", "must be a float"),
    ("gaussian-cos:kk=1", "unknown option"), ("gaussian-cos:k=1,k=2", "twice"),
    ("gaussian-cos:scale=-1", "scale"),
])
def test_bad_option_strings(spec, match):
    with pytest.raises(ValueError, match=match):
        gn.make_problem(spec)


def test_unknown_estimator_option():
    with pytest.raises(ValueError, match="beta"):
        gn.get_estimator("reinforce-ema:gamma=0.5")


def test_nonfinite_cost_is_refused_when_the_problem_is_built():
    with pytest.raises(gn.NonFiniteCostError, match=r"log-of-normal"):
        gn.ExpectationProblem(Normal, {"loc": 0.0, "scale": 1.0}, lambda x: torch.log(x),
                              name="log-of-normal", expected_cost=lambda p: p["loc"])


def test_rare_nonfinite_cost_names_problem_estimator_and_budget():
    """NaN beyond |x| > 3.5 (probability 5e-4): the construction probe passes, the sweep does not."""
    prob = gn.ExpectationProblem(Normal, {"loc": 0.0, "scale": 1.0},
                                 lambda x: torch.where(x.abs() > 3.5, torch.nan, x),
                                 name="rarely-nan", expected_cost=lambda p: p["loc"])
    with pytest.raises(gn.NonFiniteCostError, match=r"rarely-nan.*reinforce.*budget 7"):
        gn.measure(prob, "reinforce", 7, replicates=1000)
